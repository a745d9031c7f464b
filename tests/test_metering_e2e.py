"""Metering end to end: the real openai SDK, curl, raw h11 and h2 clients against the proxy and a replay upstream.

What a user would notice: the ledger holds each capture's exact usage and price, whether or not the client
asked for usage; the stream the client gets is the upstream's, byte for byte, less exactly the usage frame the
proxy caused; the bill arrives as trailers or as an inline comment; nothing is lost when the client leaves.
"""

from __future__ import annotations

import json
import pathlib
import socket
import subprocess
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import genai_prices
import h2.connection
import h2.events
import h11
import httpx
import openai
import pytest

from proxy.forward import _with_fields
from tests.conftest import load_expected
from tests.servers import CLIENT_KEY, UPSTREAM_KEY_ENV, UPSTREAM_SECRET, Script, Stack, h11_post, start_stack

AUTH = {"authorization": f"Bearer {CLIENT_KEY}"}
MESSAGES = [{"role": "user", "content": "hi"}]
OPENAI_ROWS = [row for row in load_expected() if row["file"].split("/")[0] in ("openai", "openai_responses")]


@pytest.fixture
def stack(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Stack]:
    monkeypatch.setenv(UPSTREAM_KEY_ENV, UPSTREAM_SECRET)
    yield from start_stack(tmp_path)


def capture_model(body: bytes) -> str:
    for line in body.split(b"\n"):
        if line.startswith(b"data: {"):
            chunk = json.loads(line[6:])
            model = chunk.get("model") or (chunk.get("response") or {}).get("model")
            if model:
                return str(model)
    raise AssertionError("capture names no model")


def frames(body: bytes) -> list[bytes]:
    """The capture cut into SSE frames, independently of the proxy's parser (these captures use LF only)."""
    parts = body.split(b"\n\n")
    out = [part + b"\n\n" for part in parts[:-1]]
    if parts[-1]:
        out.append(parts[-1])
    return out


def is_usage_only_chunk(frame: bytes) -> bool:
    for line in frame.split(b"\n"):
        if line.startswith(b"data: {"):
            chunk = json.loads(line[6:])
            return chunk.get("choices") == [] and isinstance(chunk.get("usage"), dict)
    return False


def expected_cost(model: str, row: dict[str, Any]) -> Decimal | None:
    exp = row["expected"]
    usage = genai_prices.Usage(
        input_tokens=exp["input_tokens"],
        output_tokens=exp["output_tokens"],
        cache_read_tokens=exp.get("cached_input_tokens") or 0,
    )
    try:
        return genai_prices.calc_price(usage, model_ref=model, provider_id="openai").total_price
    except LookupError:
        return None


def run_sdk(stack: Stack, row: dict[str, Any], model: str, ask_usage: bool) -> list[Any]:
    """Drive the capture's endpoint with the real SDK; returns what the SDK yielded."""
    client = openai.OpenAI(base_url=stack.url + "/v1", api_key=CLIENT_KEY, max_retries=0)
    options: dict[str, Any] = {"stream_options": {"include_usage": True}} if ask_usage else {}
    with client:
        if row["format"] == "openai_responses":
            try:
                return list(client.responses.create(model=model, input="hi", stream=True))
            except openai.APIError:  # the insufficient_quota capture ends in an error event
                return []
        if row["file"].startswith("openai/completions"):
            return list(client.completions.create(model=model, prompt="hi", stream=True, **options))
        return list(client.chat.completions.create(model=model, messages=MESSAGES, stream=True, **options))  # type: ignore[call-overload]


@pytest.mark.parametrize("ask_usage", [False, True], ids=["sdk-did-not-ask", "sdk-asked"])
@pytest.mark.parametrize("row", OPENAI_ROWS, ids=[row["file"] for row in OPENAI_ROWS])
def test_ledger_holds_exact_usage_and_price(
    stack: Stack, shared_fixtures: pathlib.Path, row: dict[str, Any], ask_usage: bool
) -> None:
    body = (shared_fixtures / row["file"]).read_bytes()
    model = capture_model(body)
    stack.upstream.script = Script(body=body, chunk_sizes=[113, 7, 4096])
    run_sdk(stack, row, model, ask_usage)

    [record] = stack.records()
    exp = row["expected"]
    if "input_tokens" in exp:
        assert record.usage_status == "reported"
        assert record.input_tokens == exp["input_tokens"]
        assert record.output_tokens == exp["output_tokens"]
        assert record.cached_tokens == (exp.get("cached_input_tokens") or 0)
        assert record.reasoning_tokens == (exp.get("reasoning_tokens") or 0)
        assert record.cache_write_tokens == 0
        assert record.raw_usage and json.loads(record.raw_usage)
        cost = expected_cost(model, row)
        if cost is None:
            assert (record.cost, record.cost_status) == (None, "unpriced")
        else:
            assert record.cost_status == "priced"
            assert Decimal(record.cost) == cost
    else:
        assert record.usage_status == "missing"
        assert (record.cost, record.cost_status) == (None, "unpriced")
    assert record.outcome == "completed"
    assert record.provider == "replay" and record.model == model and record.key_name == "tester"
    assert record.http_status == 200

    sent = json.loads(stack.upstream.requests[0].body)
    if row["format"] == "openai_chat":
        # include_usage was merged into the request whether or not the client asked.
        assert sent["stream_options"]["include_usage"] is True


@pytest.mark.parametrize(
    "capture",
    ["openai/chat_usage_basic.sse", "openai/completions_legacy_usage.sse", "openai/chat_azure_content_filter.sse"],
)
def test_injected_usage_frame_is_removed_exactly(stack: Stack, shared_fixtures: pathlib.Path, capture: str) -> None:
    body = (shared_fixtures / capture).read_bytes()
    stack.upstream.script = Script(body=body, chunk_sizes=[1, 50, 333])
    path = "/v1/completions" if "completions_legacy" in capture else "/v1/chat/completions"
    with (
        httpx.Client() as client,
        client.stream(
            "POST", stack.url + path, json={"model": "gpt-4o", "stream": True, "stream_options": {"x": 1}}, headers=AUTH
        ) as response,
    ):
        got = b"".join(response.iter_raw())
    expected = b"".join(frame for frame in frames(body) if not is_usage_only_chunk(frame))
    assert got == expected
    assert len(got) < len(body)
    sent = json.loads(stack.upstream.requests[0].body)
    assert sent["stream_options"] == {"x": 1, "include_usage": True}  # other keys kept
    [record] = stack.records()
    assert record.usage_status == "reported" and record.bytes_to_client == len(got)


def test_provider_can_opt_out_of_stream_options(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(UPSTREAM_KEY_ENV, UPSTREAM_SECRET)
    for stack in start_stack(tmp_path, provider_extra="stream_options = false"):
        stack.upstream.script = Script(body=b"data: [DONE]\n\n")
        httpx.post(stack.url + "/v1/chat/completions", json={"model": "gpt-4o", "stream": True}, headers=AUTH)
        assert "stream_options" not in json.loads(stack.upstream.requests[0].body)


# --- the bill as trailers ----------------------------------------------------------------------------------


def h11_exchange(port: int, body: bytes, te: bool) -> tuple[h11.Response, bytes, list[tuple[bytes, bytes]]]:
    headers = [("authorization", f"Bearer {CLIENT_KEY}"), *([("te", "trailers")] if te else [])]
    response, data, trailers = h11_post(port, "/v1/chat/completions", body, headers)
    return response, data, list(trailers.items())


REQUEST = json.dumps({"model": "gpt-4o-mini", "stream": True, "messages": MESSAGES}).encode()


def test_trailers_over_http11_raw_h11(stack: Stack, shared_fixtures: pathlib.Path) -> None:
    body = (shared_fixtures / "openai/chat_usage_detailed_reasoning.sse").read_bytes()
    stack.upstream.script = Script(body=body, chunk_sizes=[100])
    response, data, trailers = h11_exchange(stack.proxy.port, REQUEST, te=True)
    declared = dict(response.headers)[b"trailer"]
    assert declared == (
        b"x-teeproxy-input-tokens, x-teeproxy-output-tokens, x-teeproxy-cached-tokens, "
        b"x-teeproxy-cache-write-tokens, x-teeproxy-reasoning-tokens, x-teeproxy-cost-usd, x-teeproxy-usage"
    )
    fields = dict(trailers)
    # gpt-4o-mini has a price override in the test config: (12 * 0.15 + 100 * 0.60) / 1e6, exactly.
    assert fields == {
        b"x-teeproxy-input-tokens": b"12",
        b"x-teeproxy-output-tokens": b"100",
        b"x-teeproxy-cached-tokens": b"0",
        b"x-teeproxy-cache-write-tokens": b"0",
        b"x-teeproxy-reasoning-tokens": b"100",
        b"x-teeproxy-cost-usd": str((12 * Decimal("0.15") + 100 * Decimal("0.60")) / 1_000_000).encode(),
        b"x-teeproxy-usage": b"reported",
    }
    assert data == b"".join(f for f in frames(body) if not is_usage_only_chunk(f))

    # Without TE: no trailers, no Trailer header, otherwise the same response.
    plain, plain_data, plain_trailers = h11_exchange(stack.proxy.port, REQUEST, te=False)
    assert plain_trailers == []
    assert b"trailer" not in dict(plain.headers)
    assert plain_data == data
    assert plain.status_code == response.status_code == 200


def test_trailers_missing_usage_and_unpriced(stack: Stack, shared_fixtures: pathlib.Path) -> None:
    stack.upstream.script = Script(body=(shared_fixtures / "openai/chat_no_usage.sse").read_bytes())
    _, _, trailers = h11_exchange(stack.proxy.port, REQUEST, te=True)
    fields = dict(trailers)
    assert fields[b"x-teeproxy-usage"] == b"missing"
    assert b"x-teeproxy-cost-usd" not in fields


def test_trailers_over_http11_curl(stack: Stack, shared_fixtures: pathlib.Path) -> None:
    stack.upstream.script = Script(body=(shared_fixtures / "openai/chat_usage_basic.sse").read_bytes())
    out = subprocess.run(
        [
            "curl",
            "-si",
            "--max-time",
            "20",
            "-H",
            "TE: trailers",
            "-H",
            f"Authorization: Bearer {CLIENT_KEY}",
            "-H",
            "Content-Type: application/json",
            "--data-binary",
            REQUEST.decode(),
            f"http://127.0.0.1:{stack.proxy.port}/v1/chat/completions",
        ],
        capture_output=True,
        check=True,
    ).stdout
    head, _, rest = out.partition(b"\r\n\r\n")
    assert b"HTTP/1.1 200" in head and b"transfer-encoding: chunked" in head.lower()
    # curl prints the trailer fields after the body.
    done = rest.index(b"data: [DONE]")
    tail = rest[done:]
    assert b"x-teeproxy-input-tokens: 14" in tail
    assert b"x-teeproxy-output-tokens: 30" in tail
    assert b"x-teeproxy-usage: reported" in tail


def test_trailers_over_h2c(stack: Stack, shared_fixtures: pathlib.Path) -> None:
    body = (shared_fixtures / "openai/chat_usage_basic.sse").read_bytes()
    stack.upstream.script = Script(body=body, chunk_sizes=[500])
    conn = h2.connection.H2Connection()
    conn.initiate_connection()
    with socket.create_connection(("127.0.0.1", stack.proxy.port), timeout=10) as sock:
        sock.sendall(conn.data_to_send())
        stream_id = conn.get_next_available_stream_id()
        conn.send_headers(
            stream_id,
            [
                (":method", "POST"),
                (":path", "/v1/chat/completions"),
                (":scheme", "http"),
                (":authority", f"127.0.0.1:{stack.proxy.port}"),
                ("te", "trailers"),
                ("authorization", f"Bearer {CLIENT_KEY}"),
                ("content-type", "application/json"),
            ],
        )
        conn.send_data(stream_id, REQUEST, end_stream=True)
        sock.sendall(conn.data_to_send())
        data = b""
        trailers: list[tuple[bytes, bytes]] = []
        ended = False
        while not ended:
            for event in conn.receive_data(sock.recv(65536)):
                if isinstance(event, h2.events.DataReceived):
                    data += event.data
                    conn.acknowledge_received_data(event.flow_controlled_length, stream_id)
                elif isinstance(event, h2.events.TrailersReceived):
                    trailers = [(bytes(k), bytes(v)) for k, v in event.headers]
                elif isinstance(event, h2.events.StreamEnded):
                    ended = True
            sock.sendall(conn.data_to_send())
    fields = dict(trailers)
    assert fields[b"x-teeproxy-input-tokens"] == b"14"
    assert fields[b"x-teeproxy-output-tokens"] == b"30"
    assert data == b"".join(f for f in frames(body) if not is_usage_only_chunk(f))


# --- inline usage ------------------------------------------------------------------------------------------


def test_inline_usage_comment_before_done(stack: Stack, shared_fixtures: pathlib.Path) -> None:
    body = (shared_fixtures / "openai/chat_usage_basic.sse").read_bytes()
    stack.upstream.script = Script(body=body, chunk_sizes=[64])
    with (
        httpx.Client() as client,
        client.stream(
            "POST",
            stack.url + "/v1/chat/completions",
            json={"model": "gpt-4o-mini", "stream": True, "messages": MESSAGES},
            headers={**AUTH, "x-teeproxy-usage": "inline"},
        ) as response,
    ):
        got = b"".join(response.iter_raw())
    before, marker, after = got.partition(b": x-teeproxy-usage ")
    assert marker and after.endswith(b"data: [DONE]\n\n")
    comment = json.loads(after[: after.index(b"\n")])
    assert comment["input_tokens"] == 14 and comment["output_tokens"] == 30 and comment["usage"] == "reported"
    assert Decimal(comment["cost_usd"]) == (14 * Decimal("0.15") + 30 * Decimal("0.60")) / 1_000_000
    assert before == b"".join(f for f in frames(body)[:-1] if not is_usage_only_chunk(f))

    # The SDK does not see the comment: its chunks are the same as without it.
    client = openai.OpenAI(
        base_url=stack.url + "/v1", api_key=CLIENT_KEY, max_retries=0, default_headers={"x-teeproxy-usage": "inline"}
    )
    with client:
        chunks = list(client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True))  # type: ignore[arg-type]
    assert all(chunk.usage is None for chunk in chunks)
    assert len(chunks) == body.count(b"data: {") - 1


# --- nothing lost ------------------------------------------------------------------------------------------


def wait_for_record(stack: Stack) -> Any:
    [record] = stack.records()
    return record


def test_client_disconnect_mid_stream_leaves_a_record(stack: Stack, shared_fixtures: pathlib.Path) -> None:
    body = (shared_fixtures / "openai/chat_usage_n3_choices.sse").read_bytes()
    stack.upstream.script = Script(body=body, chunk_sizes=[200], pause_s=0.1)
    with (
        httpx.Client() as client,
        client.stream(
            "POST",
            stack.url + "/v1/chat/completions",
            json={"model": "gpt-4o", "stream": True, "messages": MESSAGES},
            headers=AUTH,
        ) as response,
    ):
        first = next(response.iter_raw())
        assert first
    record = wait_for_record(stack)
    assert record.outcome == "client_disconnected"
    assert 0 < record.bytes_to_client < len(body)
    assert record.usage_status == "missing"


def test_upstream_failure_mid_stream_leaves_a_record(stack: Stack, shared_fixtures: pathlib.Path) -> None:
    body = (shared_fixtures / "openai/chat_usage_basic.sse").read_bytes()
    stack.upstream.script = Script(body=body, chunk_sizes=[300], cut_after=600)
    with (
        httpx.Client() as client,
        client.stream(
            "POST",
            stack.url + "/v1/chat/completions",
            json={"model": "gpt-4o", "stream": True, "messages": MESSAGES},
            headers=AUTH,
        ) as response,
    ):
        got = b"".join(response.iter_raw())
    # Every byte the upstream sent before it failed reaches the client (the partial frame too), then the error
    # in a frame of its own.
    assert got.startswith(body[:600])
    assert got.endswith(b"}\n\ndata: [DONE]\n\n")  # the error chunk, then the end a stream should have
    last = got[: -len(b"data: [DONE]\n\n")]
    error = json.loads(last[last.rindex(b"\n\ndata: ") + 8 :])
    assert error["error"]["code"] == "upstream_protocol_error"
    record = wait_for_record(stack)
    assert record.outcome == "upstream_error" and record.http_status == 200


def test_unreachable_upstream_is_502_and_recorded(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(UPSTREAM_KEY_ENV, UPSTREAM_SECRET)
    for stack in start_stack(tmp_path):
        port = stack.upstream.server.port
        stack.loop.run(stack.upstream.server.aclose())  # nothing listens there any more
        response = httpx.post(stack.url + "/v1/chat/completions", json={"model": "gpt-4o"}, headers=AUTH)
        assert response.status_code == 502, port
        assert response.json()["error"]["code"] == "upstream_connect_error"
        [record] = stack.records()
        assert record.outcome == "upstream_error" and record.http_status == 502


@pytest.mark.parametrize("inline", [False, True], ids=["trailers", "inline"])
def test_unparseable_stream_is_forwarded_whole_and_marked_unparsed(stack: Stack, inline: bool) -> None:
    """A frame past the parser's limit costs usage accuracy, never a forwarded byte; a client that asked for the
    inline comment still gets it, at the end, saying so."""
    huge = b'data: {"choices":[{"index":0,"delta":{"content":"' + b"x" * (5 * 1024 * 1024) + b'"}}]}\n\n'
    body = huge + b'data: {"choices":[],"usage":{"prompt_tokens":1,"completion_tokens":1}}\n\ndata: [DONE]\n\n'
    stack.upstream.script = Script(body=body, chunk_sizes=[65536])
    with (
        httpx.Client() as client,
        client.stream(
            "POST",
            stack.url + "/v1/chat/completions",
            json={"model": "gpt-4o", "stream": True},
            headers={**AUTH, "x-teeproxy-usage": "inline"} if inline else AUTH,
        ) as response,
    ):
        got = b"".join(response.iter_raw())
    # The filter gave up and passed everything through, usage frame included.
    if inline:
        assert got.startswith(body) and got[len(body) :].startswith(b": x-teeproxy-usage {")
        comment = json.loads(got[len(body) + len(b": x-teeproxy-usage ") :])
        assert comment["usage"] == "unparsed"
    else:
        assert got == body
    [record] = stack.records()
    assert record.usage_status == "unparsed"
    assert record.outcome == "completed" and record.bytes_to_client == len(got)


def test_sdk_closing_at_done_is_a_completed_stream(stack: Stack, shared_fixtures: pathlib.Path) -> None:
    """The OpenAI SDK stops reading at [DONE] and closes; an upstream may end its body a moment later."""
    body = (shared_fixtures / "openai/chat_usage_basic.sse").read_bytes()
    stack.upstream.script = Script(body=body, end_pause_s=1.0)
    client = openai.OpenAI(base_url=stack.url + "/v1", api_key=CLIENT_KEY, max_retries=0)
    with client:
        chunks = list(client.chat.completions.create(model="gpt-4o", messages=MESSAGES, stream=True))  # type: ignore[call-overload]
    assert chunks
    [record] = stack.records()
    assert record.outcome == "completed"
    assert (record.input_tokens, record.output_tokens, record.usage_status) == (14, 30, "reported")


@pytest.mark.parametrize(
    ("sent", "upstream_gets"),
    [
        # The client's bytes as sent (number spellings, escapes, key order, spacing), the field spliced in first.
        (
            b' {"model": "gpt-4o", "stream": true, "temperature": 1.50, "seed": 12345678901234567890,'
            b' "messages": [{"role": "user", "content": "caf\\u00e9"}]}',
            b' {"stream_options":{"include_usage":true},"model": "gpt-4o", "stream": true, "temperature": 1.50,'
            b' "seed": 12345678901234567890, "messages": [{"role": "user", "content": "caf\\u00e9"}]}',
        ),
        # Options of its own: merged, and the body re-encoded.
        (
            b'{"model": "gpt-4o", "stream": true, "stream_options": {"x": 1}}',
            b'{"model":"gpt-4o","stream":true,"stream_options":{"x":1,"include_usage":true}}',
        ),
    ],
)
def test_the_usage_option_is_added_without_rewriting_the_clients_body(
    stack: Stack, sent: bytes, upstream_gets: bytes
) -> None:
    stack.upstream.script = Script(body=b"data: [DONE]\n\n")
    response = httpx.post(
        stack.url + "/v1/chat/completions", content=sent, headers={**AUTH, "content-type": "application/json"}
    )
    assert response.status_code == 200
    assert stack.upstream.requests[0].body == upstream_gets


@pytest.mark.parametrize(
    ("body", "spliced"),
    [
        (b"{}", b'{"a":1}'),
        (b" { \n} ", b' {"a":1 \n} '),
        (b'\t{"b": 2}', b'\t{"a":1,"b": 2}'),
    ],
)
def test_added_fields_are_spliced_after_the_opening_brace(body: bytes, spliced: bytes) -> None:
    request = json.loads(body)
    assert _with_fields(body, request, {"a": 1}) == spliced
    assert json.loads(spliced) == {"a": 1, **request}
