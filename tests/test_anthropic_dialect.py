"""The Anthropic dialect: every Anthropic capture gives exactly its expected usage, fed whole, byte by byte and in
random chunks; hostile bytes never raise; routes, keys, credentials, and the errors the real `anthropic` SDK sees."""

from __future__ import annotations

import json
import pathlib
import sys
from typing import Any

import anthropic
import httpx
import msgspec
import pytest
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
from proxy.parsers.sse import MAX_LINE_BYTES
from proxy.providers.anthropic import DIALECT, AnthropicStreamMeter, AnthropicUsage
from proxy.providers.base import Dialect, Incoming, Outgoing, Route, TailComment, Upstream
from proxy.usage import Usage
from tests.conftest import SHARED_FIXTURES, load_expected

# The SDK's own HTTP library: anthropic 2.x runs on httpx2 and refuses httpx objects; older releases use httpx.
sdk_httpx: Any = sys.modules.get("httpx2", httpx)

ROWS = [row for row in load_expected() if row["format"] == "anthropic"]
MESSAGES = Route(kind="messages", upstream_path="/v1/messages")
COUNT_TOKENS = Route(kind="count_tokens", upstream_path="/v1/messages/count_tokens", billable=False)


def test_the_dialect_satisfies_the_protocol() -> None:
    dialect: Dialect = DIALECT  # `mypy --strict` on this file checks the assignment
    assert dialect.name == "anthropic"


# --- the capture corpus ------------------------------------------------------------------------------------


def expected_usage(row: dict[str, Any]) -> Usage:
    """The normalized usage a row stands for: the iterations' sum when there is one (compaction bills every
    sampling iteration), and input counting cache reads and writes (Anthropic's own input_tokens excludes them)."""
    exp = row["expected"]
    counts = exp.get("iterations_sum") or {
        "input_tokens": exp["input_tokens"],
        "output_tokens": exp["output_tokens"],
        "cache_read_input_tokens": exp.get("cached_input_tokens") or 0,
        "cache_creation_input_tokens": exp.get("cache_creation_input_tokens") or 0,
    }
    read, write = counts["cache_read_input_tokens"], counts["cache_creation_input_tokens"]
    return Usage(
        input_tokens=counts["input_tokens"] + read + write,
        cached_tokens=read,
        cache_write_tokens=write,
        output_tokens=counts["output_tokens"],
    )


def meter(body: bytes, sizes: list[int] | None = None) -> AnthropicStreamMeter:
    m = AnthropicStreamMeter()
    pos = 0
    for size in sizes or []:
        m.feed(body[pos : pos + size])
        pos += size
    m.feed(body[pos:])
    m.close()
    return m


def check(row: dict[str, Any], body: bytes, m: AnthropicStreamMeter) -> None:
    assert m.status == "reported"
    assert m.usage is not None
    assert msgspec.structs.replace(m.usage, raw="") == expected_usage(row)
    # raw is the merged usage object: the top-level fields as the last event that stated them said them.
    raw = json.loads(m.usage.raw)
    assert (raw["input_tokens"], raw["output_tokens"]) == (
        row["expected"]["input_tokens"],
        row["expected"]["output_tokens"],
    )
    # Two SDK captures end without the blank line after message_stop: per the SSE spec that event never dispatches.
    assert m.finished == body.endswith(b"\n\n")


@pytest.mark.parametrize("row", ROWS, ids=[r["file"] for r in ROWS])
def test_capture_whole_byte_by_byte_and_with_trailing_data(shared_fixtures: pathlib.Path, row: dict[str, Any]) -> None:
    body = (shared_fixtures / row["file"]).read_bytes()
    check(row, body, meter(body))
    check(row, body, meter(body, [1] * len(body)))
    m = meter(body + b'event: message_delta\ndata: {"type":"message_delta","usage":{"output_tokens": 9')
    assert m.usage == meter(body).usage  # an unfinished trailing frame changes nothing


@pytest.mark.parametrize("row", ROWS, ids=[r["file"] for r in ROWS])
def test_capture_in_whole_frames_takes_the_fast_path_and_agrees(
    shared_fixtures: pathlib.Path, row: dict[str, Any]
) -> None:
    body = (shared_fixtures / row["file"]).read_bytes()
    parts = body.split(b"\n\n")
    sizes = [len(p) + 2 for p in parts[:-1]]
    check(row, body, meter(body, sizes))
    if not body.endswith(b"\n\n"):
        assert meter(body + b"\n\n").finished


@settings(max_examples=80, deadline=None)
@given(data=st.data())
def test_capture_in_random_chunks(shared_fixtures: pathlib.Path, data: st.DataObject) -> None:
    row = data.draw(st.sampled_from(ROWS))
    body = (shared_fixtures / row["file"]).read_bytes()
    sizes = data.draw(st.lists(st.integers(min_value=1, max_value=1024), max_size=80))
    check(row, body, meter(body, sizes))


def test_corpus_is_present_when_shared_is() -> None:
    if SHARED_FIXTURES.is_dir():
        assert len(ROWS) >= 8
        assert any("iterations_sum" in r["expected"] for r in ROWS)


# --- hostile input -----------------------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.binary(max_size=80),
            st.sampled_from(
                [
                    b"event: message_delta\n",
                    b"data: ",
                    b'{"type":"message_start","message":{"usage":',
                    b'{"type":"message_delta","usage":',
                    b'{"type":"message_stop"}',
                    b'{"input_tokens":3,"output_tokens":-1,"iterations":[{"input_tokens":"x"}]}',
                    b'"usage"',
                    b'"cache_creation":{"ephemeral_1h_input_tokens":',
                    b"null",
                    b"[" * 1200,
                    b"}",
                    b"\n\n",
                    b"\r",
                ]
            ),
        ),
        max_size=30,
    )
)
def test_meter_never_raises(pieces: list[bytes]) -> None:
    m = AnthropicStreamMeter()
    for piece in pieces:
        m.feed(piece)
    m.close()
    assert m.status in ("reported", "missing", "unparsed")
    events = AnthropicUsage()
    for piece in pieces:
        events.observe(piece)
    assert events.usage is None or isinstance(events.usage, Usage)


@settings(max_examples=100, deadline=None)
@given(data=st.data())
def test_mutated_captures_never_raise(shared_fixtures: pathlib.Path, data: st.DataObject) -> None:
    row = data.draw(st.sampled_from(ROWS))
    body = bytearray((shared_fixtures / row["file"]).read_bytes())
    for _ in range(data.draw(st.integers(min_value=1, max_value=8))):
        at = data.draw(st.integers(min_value=0, max_value=len(body)))
        action = data.draw(st.sampled_from(["flip", "insert", "delete"]))
        if action == "insert":
            body[at:at] = data.draw(st.sampled_from([b"\n", b"\n\n", b'"', b"{", b"null", b"-", b"\r", b"\x00"]))
        elif at < len(body):
            if action == "flip":
                body[at] = data.draw(st.integers(min_value=0, max_value=255))
            else:
                del body[at]
    m = meter(bytes(body), data.draw(st.lists(st.integers(min_value=1, max_value=512), max_size=20)))
    assert m.status in ("reported", "missing", "unparsed")


# --- synthetic streams -------------------------------------------------------------------------------------


def sse(*events: dict[str, Any]) -> bytes:
    return b"".join(b"event: %s\ndata: %s\n\n" % (e["type"].encode(), json.dumps(e).encode()) for e in events)


def start(**usage: Any) -> dict[str, Any]:
    return {"type": "message_start", "message": {"id": "msg_1", "type": "message", "content": [], "usage": usage}}


def delta(**usage: Any) -> dict[str, Any]:
    return {"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": usage}


TEXT = {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hi"}}
STOP = {"type": "message_stop"}


def test_one_hour_cache_writes() -> None:
    cache_creation = {"ephemeral_5m_input_tokens": 500, "ephemeral_1h_input_tokens": 1000}
    m = meter(
        sse(
            start(
                input_tokens=10,
                cache_read_input_tokens=200,
                cache_creation_input_tokens=1500,
                cache_creation=cache_creation,
                output_tokens=1,
            ),
            TEXT,
            delta(output_tokens=20),
            STOP,
        )
    )
    assert m.usage is not None and m.status == "reported" and m.finished
    assert msgspec.structs.replace(m.usage, raw="") == Usage(
        input_tokens=1710, cached_tokens=200, cache_write_tokens=1500, cache_write_1h_tokens=1000, output_tokens=20
    )


def test_iterations_are_summed_with_their_one_hour_writes_and_thinking_is_reasoning() -> None:
    iteration = {"cache_read_input_tokens": 0, "cache_creation": {"ephemeral_1h_input_tokens": 40}}
    m = meter(
        sse(
            start(input_tokens=100, output_tokens=1),
            delta(
                input_tokens=7,
                output_tokens=30,
                output_tokens_details={"thinking_tokens": 12},
                iterations=[
                    {
                        **iteration,
                        "type": "compaction",
                        "input_tokens": 100,
                        "output_tokens": 50,
                        "cache_creation_input_tokens": 60,
                    },
                    {
                        **iteration,
                        "type": "message",
                        "input_tokens": 7,
                        "output_tokens": 30,
                        "cache_creation_input_tokens": 45,
                    },
                ],
            ),
            STOP,
        )
    )
    assert m.usage is not None and msgspec.structs.replace(m.usage, raw="") == Usage(
        input_tokens=212, cache_write_tokens=105, cache_write_1h_tokens=80, output_tokens=80, reasoning_tokens=12
    )


def test_in_stream_error_keeps_the_usage_read_before_it() -> None:
    """Anthropic's documented mid-stream error (https://docs.anthropic.com/en/api/errors): an `error` event."""
    overloaded = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
    m = meter(sse(start(input_tokens=25, output_tokens=1), TEXT, overloaded))
    assert m.status == "reported" and not m.finished
    assert m.usage is not None and (m.usage.input_tokens, m.usage.output_tokens) == (25, 1)
    only_error = meter(sse(overloaded))
    assert (only_error.usage, only_error.status, only_error.finished) == (None, "missing", False)


def test_null_delta_fields_do_not_override_and_output_is_never_added() -> None:
    m = meter(sse(start(input_tokens=9, output_tokens=4), delta(input_tokens=None, output_tokens=15), STOP))
    assert m.usage is not None and (m.usage.input_tokens, m.usage.output_tokens) == (9, 15)


def test_the_json_type_decides_not_the_sse_event_name() -> None:
    body = b'event: message_delta\ndata: {"type":"content_block_delta","usage":{"output_tokens":99}}\n\n'
    body += b'event: whatever\ndata: {"type":"message_delta","usage":{"output_tokens":3}}\n\n'
    body += b'event: message_stop\ndata: {"type":"content_block_delta","text":"message_stop"}\n\n'
    m = meter(sse(start(input_tokens=2, output_tokens=1)) + body)
    assert m.usage is not None and m.usage.output_tokens == 3
    assert not m.finished


def test_anthropic_usage_reads_bare_event_json() -> None:
    """The Bedrock dialect's use: events arrive as JSON bytes with no SSE framing around them."""
    events = AnthropicUsage()
    assert (events.usage, events.finished, events.doubt) == (None, False, False)
    events.observe(json.dumps(start(input_tokens=5, cache_read_input_tokens=3, output_tokens=1)).encode())
    events.observe(json.dumps(TEXT).encode())
    events.observe(json.dumps(delta(output_tokens=8)).encode())
    before_stop = events.finished
    assert not before_stop
    events.observe(b'{"type": "message_stop", "amazon-bedrock-invocationMetrics": {"inputTokenCount": 8}}')
    assert events.finished and not events.doubt
    assert events.usage is not None and msgspec.structs.replace(events.usage, raw="") == Usage(
        input_tokens=8, cached_tokens=3, output_tokens=8
    )


@pytest.mark.parametrize(
    "bad",
    [
        b'{"type":"message_delta","usage":{"output_tokens":"many"}}',
        b'{"type":"message_delta","usage":{"output_tokens":-4}}',
        b'{"type":"message_delta","usage":{"output_tokens":',
        b'{"type":"message_delta","usage":' + b"[" * 2000 + b"]" * 2000 + b"}",
        b'{"type":"message_start","message":"usage"}',
    ],
)
def test_an_undecodable_usage_is_unparsed_keeps_the_lower_bound_and_sticks(bad: bytes) -> None:
    m = meter(sse(start(input_tokens=5, output_tokens=1)) + b"data: " + bad + b"\n\n" + sse(delta(output_tokens=7)))
    assert m.status == "unparsed"
    assert m.usage is not None and (m.usage.input_tokens, m.usage.output_tokens) == (5, 7)


def test_a_frame_error_is_unparsed_not_raised() -> None:
    head = sse(start(input_tokens=5, output_tokens=1))
    m = meter(head + b"data: " + b"x" * (MAX_LINE_BYTES + 1), [len(head)])
    assert m.status == "unparsed" and m.usage is not None and m.usage.input_tokens == 5


def test_a_stream_without_usage_is_missing() -> None:
    m = meter(sse(TEXT, STOP))
    assert (m.usage, m.status, m.finished) == (None, "missing", True)


# --- non-streaming bodies ----------------------------------------------------------------------------------


MESSAGE_BODY = {
    "id": "msg_01",
    "type": "message",
    "role": "assistant",
    "model": "claude-sonnet-4-5",
    "content": [{"type": "text", "text": "Hello"}],
    "stop_reason": "end_turn",
    "usage": {
        "input_tokens": 12,
        "cache_creation_input_tokens": 300,
        "cache_read_input_tokens": 2000,
        "cache_creation": {"ephemeral_5m_input_tokens": 100, "ephemeral_1h_input_tokens": 200},
        "output_tokens": 40,
        "service_tier": "standard",
    },
}


def test_body_usage_of_a_messages_response() -> None:
    body = json.dumps(MESSAGE_BODY).encode()
    usage = DIALECT.body_usage(MESSAGES, body, [])
    assert usage is not None
    assert msgspec.structs.replace(usage, raw="") == Usage(
        input_tokens=2312, cached_tokens=2000, cache_write_tokens=300, cache_write_1h_tokens=200, output_tokens=40
    )
    assert json.loads(usage.raw) == MESSAGE_BODY["usage"]  # the body's own usage object, verbatim


def test_body_usage_sums_iterations() -> None:
    iterations = [
        {"type": "compaction", "input_tokens": 180000, "output_tokens": 3500},
        {"type": "message", "input_tokens": 23000, "output_tokens": 1000},
    ]
    body = json.dumps(
        {"type": "message", "usage": {"input_tokens": 23000, "output_tokens": 1000, "iterations": iterations}}
    )
    usage = DIALECT.body_usage(MESSAGES, body.encode(), [])
    assert usage is not None and (usage.input_tokens, usage.output_tokens) == (203000, 4500)


def test_body_usage_absent_unbilled_or_unreadable() -> None:
    assert DIALECT.body_usage(MESSAGES, b'{"type":"error","error":{"type":"api_error","message":"x"}}', []) is None
    assert DIALECT.body_usage(MESSAGES, b'{"type":"message","usage":null}', []) is None
    assert DIALECT.body_usage(COUNT_TOKENS, b'{"input_tokens":42}', []) is None
    with pytest.raises(ValueError):
        DIALECT.body_usage(MESSAGES, b'{"usage": {', [])
    with pytest.raises(ValueError):
        DIALECT.body_usage(MESSAGES, b'{"usage": {"input_tokens": "lots"}}', [])
    with pytest.raises(ValueError):
        DIALECT.body_usage(MESSAGES, b'{"usage":' + b"[" * 5000 + b"}", [])


# --- routes, keys, credentials -----------------------------------------------------------------------------


def incoming(method: str, path: str, query: bytes = b"", headers: list[tuple[bytes, bytes]] | None = None) -> Incoming:
    return Incoming(method=method, path=path, raw_path=path.encode(), query=query, headers=headers or [])


VERSION = [(b"anthropic-version", b"2023-06-01")]


@pytest.mark.parametrize(
    ("request_", "route"),
    [
        (incoming("POST", "/v1/messages"), Route(kind="messages", upstream_path="/v1/messages")),
        (
            incoming("POST", "/v1/messages", b"beta=true"),
            Route(kind="messages", upstream_path="/v1/messages?beta=true"),
        ),
        (
            incoming("POST", "/v1/messages/count_tokens"),
            Route(kind="count_tokens", upstream_path="/v1/messages/count_tokens", billable=False),
        ),
        (incoming("GET", "/v1/models", headers=VERSION), Route(kind="models", upstream_path="", local=True)),
        (incoming("GET", "/v1/models"), None),  # the OpenAI dialect's, then
        (incoming("POST", "/v1/chat/completions", headers=VERSION), None),
        (incoming("POST", "/v1/messages/batches"), None),
        (incoming("POST", "/messages"), None),
    ],
)
def test_match(request_: Incoming, route: Route | None) -> None:
    assert DIALECT.match(request_) == route


@pytest.mark.parametrize(
    "request_",
    [
        incoming("GET", "/v1/messages"),
        incoming("PUT", "/v1/messages/count_tokens"),
        incoming("POST", "/v1/models", headers=VERSION),
    ],
)
def test_known_path_wrong_method(request_: Incoming) -> None:
    with pytest.raises(MethodNotAllowed):
        DIALECT.match(request_)


@pytest.mark.parametrize(
    ("headers", "key"),
    [
        ([(b"x-api-key", b" tp-key \t")], b"tp-key"),
        ([(b"authorization", b"Bearer tp-key")], b"tp-key"),
        ([(b"authorization", b"bearer  tp-key ")], b"tp-key"),
        ([(b"x-api-key", b"a"), (b"authorization", b"Bearer b")], b"a"),
        ([(b"x-api-key", b""), (b"authorization", b"Bearer b")], b"b"),
        ([(b"authorization", b"Basic dXNlcjpwdw==")], None),
        ([(b"authorization", b"Bearer ")], None),
        (VERSION, None),
    ],
)
def test_client_key(headers: list[tuple[bytes, bytes]], key: bytes | None) -> None:
    assert DIALECT.client_key(incoming("POST", "/v1/messages", headers=headers)) == key


def upstream(api_key: str | None) -> Upstream:
    provider = ProviderConfig(name="anthropic", base_url="https://api.anthropic.com", dialect="anthropic")
    return Upstream(provider=provider, base_url=provider.base_url, api_key=api_key)


def test_attach_credentials_adds_the_key_and_a_default_version() -> None:
    out = Outgoing("POST", "https://api.anthropic.com/v1/messages", [(b"content-type", b"application/json")], b"{}")
    DIALECT.attach_credentials(out, upstream("sk-ant-upstream"))
    assert out.headers == [
        (b"content-type", b"application/json"),
        (b"x-api-key", b"sk-ant-upstream"),
        (b"anthropic-version", b"2023-06-01"),
    ]


def test_attach_credentials_keeps_the_clients_version_and_beta() -> None:
    client = [(b"anthropic-version", b"2024-01-01"), (b"anthropic-beta", b"compact-2026-01-12")]
    out = Outgoing("POST", "https://api.anthropic.com/v1/messages", list(client), b"{}")
    DIALECT.attach_credentials(out, upstream(None))
    assert out.headers == client


def test_small_seams() -> None:
    assert DIALECT.request_fields(MESSAGES, {"stream": True}, upstream(None).provider) is None
    assert DIALECT.is_stream(MESSAGES, "text/event-stream; charset=utf-8")
    assert not DIALECT.is_stream(MESSAGES, "application/json")
    assert isinstance(DIALECT.stream_meter(MESSAGES), AnthropicStreamMeter)


def test_frame_filter_is_only_the_tail_comment() -> None:
    assert DIALECT.frame_filter(MESSAGES, AnthropicStreamMeter(), False, None) is None
    m = AnthropicStreamMeter()
    f = DIALECT.frame_filter(MESSAGES, m, True, lambda: b": x-teeproxy-usage {}\n")
    assert isinstance(f, TailComment)
    body = sse(start(input_tokens=3, output_tokens=1), delta(output_tokens=2), STOP)
    assert f.feed(body[:10]) + f.feed(body[10:]) + f.close() == body + b": x-teeproxy-usage {}\n"
    assert m.usage is not None and m.usage.output_tokens == 2 and m.finished


# --- errors, and what the anthropic SDK makes of them ------------------------------------------------------


class Overloaded(ProxyError):
    status = 529


class TooManyRequests(ProxyError):
    status = 429


class Forbidden(ProxyError):
    status = 403


ERRORS: list[tuple[ProxyError, str, type[anthropic.APIStatusError]]] = [
    (BadRequest("body is not JSON"), "invalid_request_error", anthropic.BadRequestError),
    (Unauthorized("missing key"), "authentication_error", anthropic.AuthenticationError),
    (Forbidden("no"), "permission_error", anthropic.PermissionDeniedError),
    (NotFound("Unknown request URL"), "not_found_error", anthropic.NotFoundError),
    (ModelNotFound("no route for model x"), "not_found_error", anthropic.NotFoundError),
    (MethodNotAllowed("use POST"), "invalid_request_error", anthropic.APIStatusError),
    (PayloadTooLarge("too big"), "request_too_large", anthropic.ContentTooLargeError),
    (TooManyRequests("slow down"), "rate_limit_error", anthropic.RateLimitError),
    (Overloaded("busy"), "overloaded_error", anthropic.OverloadedError),
    (UpstreamConnectError("could not connect"), "api_error", anthropic.InternalServerError),
    (UpstreamProtocolError("broke"), "api_error", anthropic.InternalServerError),
    (UpstreamTimeout("timed out"), "api_error", anthropic.GatewayTimeoutError),
]


@pytest.mark.parametrize(("exc", "error_type", "_sdk_error"), ERRORS, ids=[type(e[0]).__name__ for e in ERRORS])
def test_error_response(exc: ProxyError, error_type: str, _sdk_error: type) -> None:
    status, headers, body = DIALECT.error_response(exc)
    assert status == exc.status
    assert (b"content-type", b"application/json") in headers
    assert json.loads(body) == {"type": "error", "error": {"type": error_type, "message": exc.message}}


def sdk(handler: Any) -> anthropic.Anthropic:
    """The real SDK over scripted bytes: only the transport is replaced."""
    client = sdk_httpx.Client(transport=sdk_httpx.MockTransport(handler))
    return anthropic.Anthropic(api_key="tp-key", base_url="http://teeproxy.test", http_client=client, max_retries=0)


CREATE: dict[str, Any] = {
    "model": "teeproxy-test-model",  # a real name would one day draw the SDK's DeprecationWarning
    "max_tokens": 16,
    "messages": [{"role": "user", "content": "Hi"}],
}


@pytest.mark.parametrize(("exc", "error_type", "sdk_error"), ERRORS, ids=[type(e[0]).__name__ for e in ERRORS])
def test_the_sdk_raises_the_right_class_on_error_response(
    exc: ProxyError, error_type: str, sdk_error: type[anthropic.APIStatusError]
) -> None:
    status, headers, body = DIALECT.error_response(exc)
    client = sdk(lambda request: sdk_httpx.Response(status, headers=headers, content=body))
    with pytest.raises(anthropic.APIStatusError) as info:
        client.messages.create(**CREATE)
    assert type(info.value) is sdk_error
    assert info.value.status_code == exc.status
    assert info.value.body == {"type": "error", "error": {"type": error_type, "message": exc.message}}


def test_stream_error_bytes() -> None:
    event = DIALECT.stream_error(MESSAGES, UpstreamTimeout("upstream read timed out"))
    assert event.startswith(b"event: error\ndata: ") and event.endswith(b"\n\n") and event.count(b"\n\n") == 1
    payload = json.loads(event.split(b"data: ", 1)[1])
    assert payload == {"type": "error", "error": {"type": "api_error", "message": "upstream read timed out"}}


def test_the_sdk_raises_on_stream_error_mid_stream() -> None:
    exc = UpstreamProtocolError("upstream closed mid-response")
    body = sse(
        start(input_tokens=3, output_tokens=1),
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        TEXT,
    )
    body += DIALECT.stream_error(MESSAGES, exc)
    headers = [(b"content-type", b"text/event-stream")]
    client = sdk(lambda request: sdk_httpx.Response(200, headers=headers, content=body))
    seen: list[str] = []
    with pytest.raises(anthropic.APIStatusError) as info:
        for event in client.messages.create(**CREATE, stream=True):
            seen.append(event.type)
    assert seen == ["message_start", "content_block_start", "content_block_delta"]  # what came before still arrived
    assert info.value.body == {"type": "error", "error": {"type": "api_error", "message": exc.message}}


def test_models_body() -> None:
    body = json.loads(DIALECT.models_body([("claude-sonnet-4-5", "anthropic"), ("claude-haiku-4-5", "anthropic")]))
    assert body == {
        "data": [
            {
                "type": "model",
                "id": "claude-sonnet-4-5",
                "display_name": "claude-sonnet-4-5",
                "created_at": "1970-01-01T00:00:00Z",
            },
            {
                "type": "model",
                "id": "claude-haiku-4-5",
                "display_name": "claude-haiku-4-5",
                "created_at": "1970-01-01T00:00:00Z",
            },
        ],
        "has_more": False,
        "first_id": "claude-sonnet-4-5",
        "last_id": "claude-haiku-4-5",
    }
    assert json.loads(DIALECT.models_body([])) == {"data": [], "has_more": False, "first_id": None, "last_id": None}


def test_the_sdk_lists_our_models() -> None:
    body = DIALECT.models_body([("claude-sonnet-4-5", "anthropic"), ("claude-haiku-4-5", "anthropic")])
    headers = [(b"content-type", b"application/json")]
    client = sdk(lambda request: sdk_httpx.Response(200, headers=headers, content=body))
    assert [m.id for m in client.models.list()] == ["claude-sonnet-4-5", "claude-haiku-4-5"]
