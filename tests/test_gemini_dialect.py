"""The Gemini dialect: every Gemini capture gives its expected usage in both stream framings (SSE and JSON array),
fed whole, byte by byte and in random chunks; routes, keys, credentials, errors and the model list; and the
google-genai SDK itself against our bytes (what it sends, and that it raises on our errors)."""

from __future__ import annotations

import json
import pathlib
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar
from urllib.parse import unquote, urlsplit

import msgspec
import pytest
from google import genai
from google.genai import errors as genai_errors
from google.genai.types import HttpOptions
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.config import ProviderConfig
from proxy.errors import (
    BadRequest,
    MethodNotAllowed,
    ModelNotFound,
    NotFound,
    PayloadTooLarge,
    ProxyError,
    Unauthorized,
    UpstreamConnectError,
    UpstreamProtocolError,
    UpstreamTimeout,
)
from proxy.parsers.jsonarray import JSONArrayParser
from proxy.parsers.sse import SSEParser
from proxy.providers.base import Dialect, Incoming, Outgoing, Route, Upstream
from proxy.providers.gemini import DIALECT, KIND_STREAM_ARRAY, KIND_STREAM_SSE, GeminiStreamMeter
from proxy.usage import Usage
from tests.conftest import load_expected

ROWS = [row for row in load_expected() if row["format"] == "gemini"]
IDS = [row["file"] for row in ROWS]
SSE_ROUTE = Route(kind=KIND_STREAM_SSE, upstream_path="/v1beta/models/m:streamGenerateContent?alt=sse", stream=True)
ARRAY_ROUTE = Route(kind=KIND_STREAM_ARRAY, upstream_path="/v1beta/models/m:streamGenerateContent", stream=True)
GENERATE_ROUTE = Route(kind="generateContent", upstream_path="/v1beta/models/m:generateContent", stream=False)


def test_the_dialect_satisfies_the_protocol() -> None:
    dialect: Dialect = DIALECT  # checked by mypy (strict)
    assert dialect.name == "gemini"


# --- the capture corpus, in both framings --------------------------------------------------------------------


def sse_data(body: bytes) -> list[bytes]:
    return [line[6:] for line in re.split(rb"\r\n|\r|\n", body) if line.startswith(b"data: ")]


def as_array(body: bytes) -> bytes:
    """The same stream as Gemini sends it without alt=sse: one JSON array, written element by element."""
    return b"[" + b",\r\n".join(sse_data(body)) + b"]"


def run(array: bool, body: bytes, sizes: list[int] | None = None) -> GeminiStreamMeter:
    meter = GeminiStreamMeter(array=array)
    pos = 0
    for size in sizes or []:
        meter.feed(body[pos : pos + size])
        pos += size
    meter.feed(body[pos:])
    meter.close()
    return meter


def want(row: dict[str, Any]) -> tuple[int, int, int, int]:
    """(input, output, cached, reasoning) normalized: Gemini's prompt excludes tool-use prompt tokens and its
    candidates exclude thoughts, so both are added."""
    exp = row["expected"]
    reasoning = exp.get("reasoning_tokens") or 0
    return (
        exp["input_tokens"] + (exp.get("tool_use_prompt_tokens") or 0),
        exp["output_tokens"] + reasoning,
        exp.get("cached_input_tokens") or 0,
        reasoning,
    )


def check(row: dict[str, Any], meter: GeminiStreamMeter) -> None:
    assert meter.status == "reported"
    assert meter.finished
    usage = meter.usage
    assert usage is not None
    assert (usage.input_tokens, usage.output_tokens, usage.cached_tokens, usage.reasoning_tokens) == want(row)
    assert usage.cache_write_tokens == 0
    raw = json.loads(usage.raw)  # the last usageMetadata, verbatim
    assert raw["promptTokenCount"] == row["expected"]["input_tokens"]


def body_of(shared: pathlib.Path, row: dict[str, Any], array: bool) -> bytes:
    body = (shared / row["file"]).read_bytes()
    return as_array(body) if array else body


@pytest.mark.parametrize("array", [False, True], ids=["sse", "array"])
@pytest.mark.parametrize("row", ROWS, ids=IDS)
def test_capture_whole_and_byte_by_byte(shared_fixtures: pathlib.Path, row: dict[str, Any], array: bool) -> None:
    body = body_of(shared_fixtures, row, array)
    check(row, run(array, body))
    check(row, run(array, body, [1] * len(body)))


def test_capture_sse_with_an_unfinished_trailing_event(shared_fixtures: pathlib.Path) -> None:
    for row in ROWS:
        body = (shared_fixtures / row["file"]).read_bytes()
        check(row, run(False, body + b'data: {"usageMetadata": {"promptTokenCount": 1'))


@settings(max_examples=80, deadline=None)
@given(data=st.data())
def test_capture_in_random_chunks(shared_fixtures: pathlib.Path, data: st.DataObject) -> None:
    row = data.draw(st.sampled_from(ROWS))
    array = data.draw(st.booleans())
    body = body_of(shared_fixtures, row, array)
    sizes = data.draw(st.lists(st.integers(min_value=1, max_value=2048), max_size=60))
    check(row, run(array, body, sizes))


def test_corpus_is_present() -> None:
    assert len(ROWS) >= 4 or not load_expected()


# --- usage rules on small streams of our own ------------------------------------------------------------------

CACHED = (
    b'{"candidates":[{"content":{"parts":[{"text":"ok"}],"role":"model"},"finishReason":"STOP"}],'
    b'"usageMetadata":{"promptTokenCount":2100,"candidatesTokenCount":12,"totalTokenCount":2112,'
    b'"cachedContentTokenCount":2048,"cacheTokensDetails":[{"modality":"TEXT","tokenCount":2048}]}}'
)


def sse(*chunks: bytes) -> bytes:
    return b"".join(b"data: " + chunk + b"\r\n\r\n" for chunk in chunks)


def array(*chunks: bytes) -> bytes:
    return b"[" + b",\r\n".join(chunks) + b"]"


@pytest.mark.parametrize("framing", [sse, array])
def test_cached_content_tokens(framing: Any) -> None:
    meter = run(framing is array, framing(CACHED))
    assert meter.usage is not None
    assert msgspec.structs.replace(meter.usage, raw="") == Usage(
        input_tokens=2100, cached_tokens=2048, output_tokens=12
    )
    assert meter.status == "reported" and meter.finished


def usage_chunk(prompt: Any, candidates: int = 1, finish: bool = False) -> bytes:
    finish_field = ',"finishReason":"STOP"' if finish else ""
    return (
        b'{"candidates":[{"content":{"parts":[{"text":"x"}]}%s}],"usageMetadata":{"promptTokenCount":%s,'
        b'"candidatesTokenCount":%d}}' % (finish_field.encode(), json.dumps(prompt).encode(), candidates)
    )


@pytest.mark.parametrize("framing", [sse, array])
def test_last_usage_wins_even_when_lower(framing: Any) -> None:
    meter = run(framing is array, framing(usage_chunk(15, 3), usage_chunk(13, 8, finish=True)))
    assert meter.usage is not None and (meter.usage.input_tokens, meter.usage.output_tokens) == (13, 8)


def test_undecodable_usage_is_unparsed_and_a_later_one_settles_it() -> None:
    bad, good = usage_chunk("many"), usage_chunk(5)
    meter = run(False, sse(good, bad))
    assert meter.status == "unparsed" and meter.usage is not None and meter.usage.input_tokens == 5
    meter = run(False, sse(bad, good))
    assert meter.status == "reported"


def test_lax_number_types_and_empty_usage() -> None:
    meter = run(False, sse(usage_chunk("12"), b'{"usageMetadata":{}}', b'{"usageMetadata":null}'))
    assert meter.status == "reported" and meter.usage is not None and meter.usage.input_tokens == 12


def test_finished_needs_a_finish_reason_on_a_candidate() -> None:
    text = b'{"candidates":[{"content":{"parts":[{"text":"say \\"finishReason\\": \\"STOP"}]}}]}'
    args = b'{"candidates":[{"content":{"parts":[{"functionCall":{"args":{"finishReason":"STOP"}}}]}}]}'
    assert not run(False, sse(text, args, usage_chunk(1))).finished
    assert run(False, sse(usage_chunk(1), b'{"candidates":[{"finishReason":"MAX_TOKENS"}]}')).finished


def test_array_framing_error_is_unparsed_and_a_cut_stream_keeps_its_usage() -> None:
    meter = run(True, b"[" + usage_chunk(4) + b",,")
    assert meter.status == "unparsed" and meter.usage is not None
    meter = run(True, b"[" + usage_chunk(4) + b',\r\n{"candidates":')
    assert meter.status == "reported" and meter.usage is not None and not meter.finished


def test_usage_before_a_fault_in_the_same_chunk_is_kept() -> None:
    meter = run(True, b"[" + usage_chunk(7) + b"}")
    assert meter.usage is not None and meter.usage.input_tokens == 7 and meter.status == "unparsed"


markers = [b"data: ", b'"usageMetadata"', b'"finishReason"', b'{"promptTokenCount":', b"{", b"}", b"[", b"]"]
markers += [b",", b"\r\n\r\n", b"\n", b'"', b"\\", b"12", b"null", b"STOP", usage_chunk(3), CACHED]


@settings(max_examples=300, deadline=None)
@given(pieces=st.lists(st.one_of(st.binary(max_size=40), st.sampled_from(markers)), max_size=30), framing=st.booleans())
def test_mutated_input_never_raises(pieces: list[bytes], framing: bool) -> None:
    meter = GeminiStreamMeter(array=framing)
    for piece in pieces:
        meter.feed(piece)
    meter.close()
    meter.feed(b"after close")
    assert meter.status in ("reported", "missing", "unparsed")


@settings(max_examples=100, deadline=None)
@given(data=st.data())
def test_corrupted_captures_never_raise(shared_fixtures: pathlib.Path, data: st.DataObject) -> None:
    row = data.draw(st.sampled_from(ROWS))
    body = bytearray(body_of(shared_fixtures, row, data.draw(st.booleans())))
    for _ in range(data.draw(st.integers(min_value=1, max_value=8))):
        body[data.draw(st.integers(min_value=0, max_value=len(body) - 1))] = data.draw(st.integers(0, 255))
    meter = run(b"[" == body[:1], bytes(body), data.draw(st.lists(st.integers(1, 500), max_size=20)))
    assert meter.status in ("reported", "missing", "unparsed")


# --- non-streaming bodies --------------------------------------------------------------------------------------


def test_body_usage() -> None:
    usage = DIALECT.body_usage(GENERATE_ROUTE, CACHED, [])
    assert usage is not None and (usage.input_tokens, usage.cached_tokens, usage.output_tokens) == (2100, 2048, 12)
    embed = Route(kind="embedContent", upstream_path="/v1/models/e:embedContent", stream=False)
    body = b'{"embedding":{"values":[0.1]},"usageMetadata":{"promptTokenCount":6,"totalTokenCount":6}}'
    assert DIALECT.body_usage(embed, body, []) == Usage(
        input_tokens=6, raw='{"promptTokenCount":6,"totalTokenCount":6}'
    )
    batch = Route(kind="batchEmbedContents", upstream_path="/v1/models/e:batchEmbedContents", stream=False)
    assert DIALECT.body_usage(batch, b'{"embeddings":[{"values":[0.1]}]}', []) is None
    count = Route(kind="countTokens", upstream_path="/v1/models/m:countTokens", stream=False, billable=False)
    assert DIALECT.body_usage(count, b'{"totalTokens":9,"usageMetadata":{"promptTokenCount":9}}', []) is None
    assert DIALECT.body_usage(GENERATE_ROUTE, b'{"error":{"code":400,"message":"x","status":"INVALID"}}', []) is None
    with pytest.raises(ValueError):
        DIALECT.body_usage(GENERATE_ROUTE, b'{"usageMetadata": {', [])
    # A stream route read whole: the array itself, or the plain error object Google answers a failed one with.
    whole = DIALECT.body_usage(ARRAY_ROUTE, array(usage_chunk(3), usage_chunk(2, finish=True)), [])
    assert whole is not None and whole.input_tokens == 2
    assert DIALECT.body_usage(SSE_ROUTE, b'{"error":{"code":429,"message":"slow down"}}', []) is None
    with pytest.raises(ValueError):
        DIALECT.body_usage(ARRAY_ROUTE, b"[" + usage_chunk(3) + b"}", [])


# --- routes ------------------------------------------------------------------------------------------------------


def incoming(method: str, path: str, query: bytes = b"", headers: list[tuple[bytes, bytes]] | None = None) -> Incoming:
    return Incoming(method, path, path.encode("utf-8"), query, headers or [])


@pytest.mark.parametrize(
    ("path", "query", "kind", "upstream_path", "stream", "billable"),
    [
        ("/v1beta/models/gemini-2.0-flash:generateContent", b"", "generateContent", None, False, True),
        ("/v1/models/gemini-2.5-pro:generateContent", b"", "generateContent", None, False, True),
        ("/v1beta/models/gemini-2.5-flash:streamGenerateContent", b"alt=sse", KIND_STREAM_SSE, None, True, True),
        ("/v1beta/models/gemini-2.5-flash:streamGenerateContent", b"", KIND_STREAM_ARRAY, None, True, True),
        ("/v1beta/models/gemini-2.5-flash:streamGenerateContent", b"alt=json", KIND_STREAM_ARRAY, None, True, True),
        ("/v1beta/models/g:streamGenerateContent", b"alt=json&alt=sse", KIND_STREAM_SSE, None, True, True),
        ("/v1/models/gemini-1.5-flash-001:countTokens", b"", "countTokens", None, False, False),
        ("/v1beta/models/text-embedding-004:embedContent", b"", "embedContent", None, False, True),
        ("/v1/models/gemini-embedding-001:batchEmbedContents", b"", "batchEmbedContents", None, False, True),
        # The client's key never goes upstream; everything else in the query is kept as sent.
        ("/v1beta/models/g:streamGenerateContent", b"key=SECRET&alt=sse", KIND_STREAM_SSE, "?alt=sse", True, True),
        (
            "/v1beta/models/g:generateContent",
            b"alt=json&key=A&k%65y=B&key&x=%2F%20+",
            None,
            "?alt=json&x=%2F%20+",
            0,
            1,
        ),
        ("/v1beta/models/g:generateContent", b"keyx=1&&a=\xff#", None, "?keyx=1&a=%FF%23", False, True),
    ],
)
def test_routes(
    path: str, query: bytes, kind: str | None, upstream_path: str | None, stream: bool, billable: bool
) -> None:
    route = DIALECT.match(incoming("POST", path, query))
    assert route is not None
    model = path.rpartition("/")[2].partition(":")[0]
    expected_path = path + (upstream_path if upstream_path is not None else ("?" + query.decode() if query else ""))
    assert route == Route(
        kind=kind or "generateContent",
        upstream_path=expected_path,
        model=model,
        stream=bool(stream),
        billable=bool(billable),
    )
    assert "SECRET" not in route.upstream_path and "=A" not in route.upstream_path


@pytest.mark.parametrize(
    ("method", "path", "query", "headers", "expected"),
    [
        ("GET", "/v1beta/models", b"", [], "models"),
        ("GET", "/v1beta/models", b"pageSize=50", [], "models"),
        ("GET", "/v1/models", b"", [(b"x-goog-api-key", b"k")], "models"),
        ("GET", "/v1/models", b"key=k", [], "models"),
        ("GET", "/v1/models", b"", [(b"authorization", b"Bearer k")], None),  # OpenAI's
        ("GET", "/v1/models", b"", [], None),
        ("GET", "/v1/models/gpt-4o", b"", [], None),
        ("POST", "/v1/chat/completions", b"", [], None),
        ("POST", "/v1beta/models/g:predict", b"", [], None),
        ("POST", "/v1beta/models/g:generateContent/x", b"", [], None),
        ("POST", "/v1beta/tunedModels/t:generateContent", b"", [], None),
        ("POST", "/v1beta2/models/g:generateContent", b"", [], None),
        ("POST", "/v1/models/ft:gpt-4o:org:id", b"", [], None),
    ],
)
def test_model_list_and_foreign_paths(
    method: str, path: str, query: bytes, headers: list[tuple[bytes, bytes]], expected: str | None
) -> None:
    route = DIALECT.match(incoming(method, path, query, headers))
    if expected is None:
        assert route is None
    else:
        assert route == Route(kind="models", upstream_path="", local=True)


@pytest.mark.parametrize("model", ["", "a/b", "..", ".", "a b", "a\r\nb", "gemini\n", "é", "a%2Fb", "a:b", "a?b"])
def test_malformed_models_are_bad_requests(model: str) -> None:
    with pytest.raises(BadRequest):
        DIALECT.match(incoming("POST", f"/v1beta/models/{model}:generateContent"))


@pytest.mark.parametrize(
    ("method", "path", "headers"),
    [
        ("GET", "/v1beta/models/gemini-2.0-flash:generateContent", []),
        ("PUT", "/v1/models/gemini-2.0-flash:streamGenerateContent", []),
        ("POST", "/v1beta/models", []),
        ("DELETE", "/v1/models", [(b"x-goog-api-key", b"k")]),
    ],
)
def test_wrong_method_on_a_known_path(method: str, path: str, headers: list[tuple[bytes, bytes]]) -> None:
    with pytest.raises(MethodNotAllowed):
        DIALECT.match(incoming(method, path, headers=headers))


# --- keys and credentials ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "headers", "expected"),
    [
        (b"", [(b"x-goog-api-key", b"  tp-header \t")], b"tp-header"),
        (b"alt=sse&key=tp-query", [], b"tp-query"),
        (b"key=tp%2Bq+x", [], b"tp+q+x"),  # percent-decoded; a literal + stays +
        (b"key=&key=tp-second", [], b"tp-second"),
        (b"", [(b"authorization", b"Bearer tp-bearer ")], b"tp-bearer"),
        (b"key=tp-query", [(b"x-goog-api-key", b"tp-header"), (b"authorization", b"Bearer b")], b"tp-header"),
        (b"key=tp-query", [(b"x-goog-api-key", b" "), (b"authorization", b"Bearer b")], b"tp-query"),
        (b"", [(b"authorization", b"Basic dXNlcg==")], None),
        (b"keyx=1", [], None),
    ],
)
def test_client_key(query: bytes, headers: list[tuple[bytes, bytes]], expected: bytes | None) -> None:
    assert DIALECT.client_key(incoming("POST", "/v1beta/models/g:generateContent", query, headers)) == expected


def upstream(key: str | None) -> Upstream:
    provider = ProviderConfig(name="google", base_url="https://generativelanguage.googleapis.com", dialect="gemini")
    return Upstream(provider, provider.base_url, key)


def test_attach_credentials_puts_the_key_in_a_header_only() -> None:
    url = "https://generativelanguage.googleapis.com/v1beta/models/g:streamGenerateContent?alt=sse"
    headers = [(b"content-type", b"application/json"), (b"x-goog-api-key", b"tp-client-key")]
    outgoing = Outgoing("POST", url, headers, b"{}")
    DIALECT.attach_credentials(outgoing, upstream("AIza-upstream"))
    assert outgoing.url == url
    assert outgoing.headers == [(b"content-type", b"application/json"), (b"x-goog-api-key", b"AIza-upstream")]
    keyless = Outgoing("POST", url, [(b"x-goog-api-key", b"tp-client-key")], b"{}")
    DIALECT.attach_credentials(keyless, upstream(None))
    assert keyless.headers == []


def test_no_request_rewrite_and_streams_by_route() -> None:
    request: dict[str, Any] = {"contents": []}
    assert DIALECT.request_fields(SSE_ROUTE, request, upstream(None).provider) is None
    assert request == {"contents": []}
    assert DIALECT.is_stream(SSE_ROUTE, "text/event-stream")
    assert DIALECT.is_stream(ARRAY_ROUTE, "application/json; charset=UTF-8")
    assert not DIALECT.is_stream(GENERATE_ROUTE, "text/event-stream")


# --- errors, the model list, the comment filter --------------------------------------------------------------


def status_error(code: int) -> ProxyError:
    cls = type(f"E{code}", (ProxyError,), {"status": code})
    error: ProxyError = cls(f"failure {code}")
    return error


@pytest.mark.parametrize(
    ("exc", "status"),
    [
        (BadRequest("bad"), "INVALID_ARGUMENT"),
        (Unauthorized("who"), "UNAUTHENTICATED"),
        (status_error(403), "PERMISSION_DENIED"),
        (NotFound("where"), "NOT_FOUND"),
        (ModelNotFound("which"), "NOT_FOUND"),
        (MethodNotAllowed("how"), "INVALID_ARGUMENT"),
        (PayloadTooLarge("big"), "INVALID_ARGUMENT"),
        (status_error(429), "RESOURCE_EXHAUSTED"),
        (status_error(500), "INTERNAL"),
        (UpstreamConnectError("down"), "UNAVAILABLE"),
        (UpstreamProtocolError("broke"), "UNAVAILABLE"),
        (status_error(503), "UNAVAILABLE"),
        (UpstreamTimeout("slow"), "DEADLINE_EXCEEDED"),
        (status_error(418), "INVALID_ARGUMENT"),
        (status_error(599), "INTERNAL"),
    ],
)
def test_error_bodies(exc: ProxyError, status: str) -> None:
    code, headers, body = DIALECT.error_response(exc)
    assert code == exc.status
    assert headers == [(b"content-type", b"application/json")]
    assert json.loads(body) == {"error": {"code": exc.status, "message": exc.message, "status": status}}
    events = SSEParser().feed(DIALECT.stream_error(SSE_ROUTE, exc))
    assert [json.loads(e.data) for e in events] == [json.loads(body)]


def test_in_stream_error_ends_a_json_array(shared_fixtures: pathlib.Path) -> None:
    sent = as_array((shared_fixtures / ROWS[0]["file"]).read_bytes())[:-1]  # the upstream broke before `]`
    whole = sent + DIALECT.stream_error(ARRAY_ROUTE, UpstreamTimeout("upstream read timed out"))
    parsed = json.loads(whole)
    assert parsed[-1] == {"error": {"code": 504, "message": "upstream read timed out", "status": "DEADLINE_EXCEEDED"}}
    assert parsed[:-1] == [json.loads(chunk) for chunk in sse_data((shared_fixtures / ROWS[0]["file"]).read_bytes())]
    parser = JSONArrayParser()
    assert len(parser.feed(whole)) == len(parsed) and parser.done


@pytest.mark.parametrize("sent", [b"[", b"[\r\n", b"  [ "])
def test_in_stream_error_right_after_the_opening_bracket_is_the_only_element(sent: bytes) -> None:
    exc = UpstreamTimeout("upstream read timed out")
    whole = sent + DIALECT.stream_error(ARRAY_ROUTE, exc, after=sent)
    assert json.loads(whole) == [
        {"error": {"code": 504, "message": "upstream read timed out", "status": "DEADLINE_EXCEEDED"}}
    ]


def test_models_body() -> None:
    body = DIALECT.models_body([("gemini-2.5-pro", "google"), ("gemini-2.0-flash", "google")])
    methods = ["generateContent", "streamGenerateContent", "countTokens"]
    assert json.loads(body) == {
        "models": [
            {"name": "models/gemini-2.5-pro", "displayName": "gemini-2.5-pro", "supportedGenerationMethods": methods},
            {
                "name": "models/gemini-2.0-flash",
                "displayName": "gemini-2.0-flash",
                "supportedGenerationMethods": methods,
            },
        ]
    }
    assert json.loads(DIALECT.models_body([])) == {"models": []}


def test_no_inline_comment_in_either_form() -> None:
    # google-genai parses any non-`data:` SSE line as JSON (see test below), so Gemini never gets the comment.
    comment = b": x-teeproxy-usage {}\n"
    assert DIALECT.frame_filter(SSE_ROUTE, GeminiStreamMeter(array=False), False, lambda: comment) is None
    assert DIALECT.frame_filter(ARRAY_ROUTE, GeminiStreamMeter(array=True), False, lambda: comment) is None


# --- the google-genai SDK against our bytes -------------------------------------------------------------------


@dataclass
class Script:
    """What the local server answers, and the requests it saw as (method, target, lower-cased headers)."""

    status: int = 200
    content_type: str = "application/json"
    body: bytes = b"{}"
    seen: list[tuple[str, str, list[tuple[bytes, bytes]]]] = field(default_factory=list)
    by_path: dict[str, bytes] = field(default_factory=dict)


@contextmanager
def sdk_against(script: Script, api_version: str | None = None) -> Iterator[genai.Client]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        _script: ClassVar[Script] = script

        def _answer(self) -> None:
            self.rfile.read(int(self.headers.get("content-length") or 0))
            headers = [(k.lower().encode(), v.encode()) for k, v in self.headers.items()]
            self._script.seen.append((self.command, self.path, headers))
            path = urlsplit(self.path).path
            body = next((b for suffix, b in self._script.by_path.items() if path.endswith(suffix)), self._script.body)
            self.send_response(self._script.status)
            self.send_header("content-type", self._script.content_type)
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = _answer

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    options = HttpOptions(base_url=f"http://127.0.0.1:{server.server_port}", api_version=api_version)
    client = genai.Client(api_key="tp-test", http_options=options)
    try:
        yield client
    finally:
        client.close()
        server.shutdown()
        server.server_close()
        thread.join()


def as_incoming(method: str, target: str, headers: list[tuple[bytes, bytes]]) -> Incoming:
    parts = urlsplit(target)
    return Incoming(method, unquote(parts.path), parts.path.encode(), parts.query.encode(), headers)


@pytest.mark.parametrize("api_version", [None, "v1beta", "v1"])
def test_what_google_genai_sends_is_matched(api_version: str | None) -> None:
    script = Script(body=b'{"candidates":[]}')
    script.by_path[":countTokens"] = b'{"totalTokens":1}'
    script.by_path[":batchEmbedContents"] = b'{"embeddings":[{"values":[0.1]},{"values":[0.2]}]}'
    script.by_path["/models"] = DIALECT.models_body([("gemini-2.5-flash", "google")])
    with sdk_against(script, api_version) as client:
        client.models.generate_content(model="gemini-2.5-flash", contents="hi")
        client.models.count_tokens(model="models/gemini-2.5-flash", contents="hi")
        client.models.embed_content(model="gemini-embedding-001", contents=["a", "b"])
        models = list(client.models.list())
        script.content_type, script.body = "text/event-stream", sse(usage_chunk(1, finish=True))
        chunks = list(client.models.generate_content_stream(model="gemini-2.5-flash", contents="hi"))
    assert [m.name for m in models] == ["models/gemini-2.5-flash"]
    assert len(chunks) == 1
    version = api_version or "v1"  # google-genai defaults to v1 with a custom base_url
    expected = [
        ("POST", f"/{version}/models/gemini-2.5-flash:generateContent", "generateContent", "gemini-2.5-flash"),
        ("POST", f"/{version}/models/gemini-2.5-flash:countTokens", "countTokens", "gemini-2.5-flash"),
        (
            "POST",
            f"/{version}/models/gemini-embedding-001:batchEmbedContents",
            "batchEmbedContents",
            "gemini-embedding-001",
        ),
        ("GET", f"/{version}/models", "models", None),
        (
            "POST",
            f"/{version}/models/gemini-2.5-flash:streamGenerateContent?alt=sse",
            KIND_STREAM_SSE,
            "gemini-2.5-flash",
        ),
    ]
    assert [(method, target) for method, target, _ in script.seen] == [(m, t) for m, t, _, _ in expected]
    for (method, target, headers), (_, _, kind, model) in zip(script.seen, expected, strict=True):
        request = as_incoming(method, target, headers)
        route = DIALECT.match(request)
        assert route is not None and route.kind == kind
        if model is not None:
            assert (route.model, route.upstream_path) == (model, target)
        assert DIALECT.client_key(request) == b"tp-test"


@pytest.mark.parametrize(
    ("exc", "raised"),
    [
        (Unauthorized("Invalid API key."), genai_errors.ClientError),
        (status_error(429), genai_errors.ClientError),
        (UpstreamConnectError("connect failed"), genai_errors.ServerError),
        (UpstreamTimeout("timed out"), genai_errors.ServerError),
    ],
)
def test_google_genai_raises_on_our_error_response(exc: ProxyError, raised: type[genai_errors.APIError]) -> None:
    status, _, body = DIALECT.error_response(exc)
    with sdk_against(Script(status=status, body=body)) as client:
        with pytest.raises(raised) as caught:
            client.models.generate_content(model="gemini-2.5-flash", contents="hi")
        assert (caught.value.code, caught.value.message) == (exc.status, exc.message)
        assert caught.value.status == json.loads(body)["error"]["status"]
        with pytest.raises(raised):
            list(client.models.generate_content_stream(model="gemini-2.5-flash", contents="hi"))


def test_google_genai_raises_on_our_in_stream_error(shared_fixtures: pathlib.Path) -> None:
    capture = (shared_fixtures / ROWS[0]["file"]).read_bytes()
    body = capture + DIALECT.stream_error(SSE_ROUTE, UpstreamTimeout("upstream read timed out"))
    texts: list[str] = []
    with sdk_against(Script(content_type="text/event-stream", body=body)) as client:
        with pytest.raises(genai_errors.ServerError) as caught:
            for chunk in client.models.generate_content_stream(model="gemini-2.0-flash", contents="hi"):
                texts.append(chunk.text or "")
    assert len(texts) == len(sse_data(capture))  # every chunk before the error reached the caller
    assert (caught.value.code, caught.value.status) == (504, "DEADLINE_EXCEEDED")


def test_google_genai_rejects_any_line_that_is_not_data(shared_fixtures: pathlib.Path) -> None:
    """A fact about the SDK that limits the inline usage comment: google-genai reads every SSE line that does not
    start with `data: ` as raw JSON, so a comment line (`: x-teeproxy-usage {...}`) makes it raise."""
    capture = (shared_fixtures / ROWS[0]["file"]).read_bytes()
    with sdk_against(Script(content_type="text/event-stream", body=capture + b": x-teeproxy-usage {}\n")) as client:
        with pytest.raises(genai_errors.UnknownApiResponseError):
            list(client.models.generate_content_stream(model="gemini-2.0-flash", contents="hi"))
