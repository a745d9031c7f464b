"""The fault matrix: every streaming route of every dialect against each upstream fault the proxy promises to
survive, as a raw HTTP/1.1 client sees it over a real socket, and as the ledger records it.

Routes: OpenAI chat completions (with `include_usage` asked for by the client, and without, when the proxy asks
for it and removes the usage chunk it caused) and Responses (SSE), Anthropic Messages (SSE), Gemini
streamGenerateContent as SSE (`alt=sse`) and as a JSON array, Bedrock converse-stream (AWS event stream); and,
for the cut-short plain body, each dialect's non-streaming endpoint. Faults, each a scripted upstream
(tests.servers.Script):

    cut        the upstream closes the connection mid-body, inside a frame or at a frame boundary
    stall      the upstream goes silent past `read_timeout_s`, after the first byte or after whole frames
    no_end     the body ends properly (a final chunk) but the stream lacks its terminator
    garbage    junk bytes between two frames
    big_frame  one 2 MiB frame: a single SSE line, JSON-array element or event-stream message
    5xx        an error status before the first byte, with one provider (no failover); and the proxy's own
               504 (no response head in time) and 502 (nothing listening)
    drip       a short stream written one byte at a time, with pauses

and two kinds of client: one that leaves at its first body bytes (the request ends at once, recorded as
`client_disconnected`), and one that reads a 2 MiB frame slowly (every byte arrives, in order).

What each cell checks is what the README promises ("Resilience", "Failover, faults and shutdown"): the client
gets every byte the upstream sent, byte for byte, first; when the upstream failed mid-stream, the dialect's own
in-stream error follows, in a frame of its own, and the response still ends properly; a plain body cut short
ends abnormally instead. The ledger holds one record per request, found by its `x-teeproxy-request-id`: the
outcome (`completed`, `upstream_error`, `timeout`), the status, the usage seen so far and its status, and
`bytes_to_client` equal to what the client read; the trailers say the same.

One proxy serves the whole module. Besides tests.servers' providers (one per dialect, default timeouts) it has,
per dialect, a `stall-*` provider with a short read timeout and a `down-*` provider nobody listens for.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import h11
import pytest
from botocore.eventstream import EventStreamBuffer

from proxy.parsers.eventstream import event_frame
from tests.servers import (
    CLIENT_KEY,
    UPSTREAM_KEY_ENV,
    UPSTREAM_SECRET,
    Script,
    Stack,
    free_port,
    root_url,
    start_stack,
)
from tests.test_dialects_e2e import split_messages

DIALECTS = ("openai", "anthropic", "gemini", "bedrock")
READ_TIMEOUT_S = 0.5  # the stall-* providers' read_timeout_s
STALL_S = 2.0  # how long a stalled upstream stays silent: well past READ_TIMEOUT_S, so the proxy gives up first
DRIP_PAUSE_S = 0.001
BIG_TEXT = b"0123456789abcdef" * (2 * 1024 * 1024 // 16)  # 2 MiB of text in one frame
# Junk between two frames: bytes no decoder expects, then an SSE event whose JSON is broken where usage would be.
GARBAGE = b'\x00\xff\xfe\xc3\x28 not a frame: {"usage": [[[\n\ndata: {"usage": {"prompt_tokens": "\xff"}, "error": \n\n'
SSE = b"text/event-stream; charset=utf-8"
EVENTSTREAM = b"application/vnd.amazon.eventstream"
JSON = b"application/json; charset=UTF-8"
BEDROCK_MODEL = "anthropic.claude-3-5-sonnet-20240620-v1:0"
USAGE_FIELDS = ("input_tokens", "cached_tokens", "cache_write_tokens", "output_tokens", "reasoning_tokens")
# Whole frames the upstream sends before a cut or a stall "at a frame boundary" (and before inserted frames).
BEFORE = 2

Figures = dict[str, int]


def usage(input: int, output: int, cached: int = 0, written: int = 0, reasoning: int = 0) -> Figures:
    """Normalized usage, as the ledger holds it (input includes cache reads and writes)."""
    return {
        "input_tokens": input,
        "cached_tokens": cached,
        "cache_write_tokens": written,
        "output_tokens": output,
        "reasoning_tokens": reasoning,
    }


# --- the stack: tests.servers' providers, plus a stalling and an unreachable one per dialect ----------------------


def fault_providers(upstream_url: str, down_port: int) -> str:
    """`stall-<dialect>` (the replay upstream, read_timeout_s = READ_TIMEOUT_S) serves model `stall-model`;
    `down-<dialect>` (a port nobody listens on) serves `down-model`. One route each: the plan keeps the one
    provider that speaks the client's dialect."""
    blocks = []
    for dialect in DIALECTS:
        suffix = "/v1" if dialect == "openai" else ""
        region = 'region = "us-east-1"' if dialect == "bedrock" else ""
        blocks.append(
            f"""
[[providers]]
name = "stall-{dialect}"
dialect = "{dialect}"
base_url = "{root_url(upstream_url)}{suffix}"
api_key_env = "{UPSTREAM_KEY_ENV}"
read_timeout_s = {READ_TIMEOUT_S}
{region}

[[providers]]
name = "down-{dialect}"
dialect = "{dialect}"
base_url = "http://127.0.0.1:{down_port}{suffix}"
api_key_env = "{UPSTREAM_KEY_ENV}"
connect_timeout_s = 2
{region}
"""
        )
    for kind in ("stall", "down"):
        names = ", ".join(f'"{kind}-{dialect}"' for dialect in DIALECTS)
        blocks.append(f'\n[[routes]]\nmodels = ["{kind}-*"]\nproviders = [{names}]\n')
    return "".join(blocks)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.setenv(UPSTREAM_KEY_ENV, UPSTREAM_SECRET)
        yield from start_stack(
            tmp_path_factory.mktemp("fault-matrix"), extra=lambda base_url: fault_providers(base_url, free_port())
        )


# --- a raw HTTP/1.1 client that also reports how the response ended ---------------------------------------------


@dataclass
class Got:
    status: int
    headers: dict[bytes, bytes]
    body: bytes  # every body byte received, however the response ended
    trailers: dict[bytes, bytes]
    clean: bool  # the body ended properly (its last chunk, or its whole Content-Length), not by a closed connection


def post(
    port: int,
    target: str,
    body: bytes,
    headers: list[tuple[str, str]],
    timeout_s: float = 10.0,
    leave_after: int | None = None,
    slow: bool = False,
) -> Got:
    """`leave_after`: close the socket once that many body bytes have arrived (a client that leaves);
    `slow`: read 4 KiB at a time with a pause after each (a client that reads slowly)."""
    conn = h11.Connection(h11.CLIENT)
    all_headers = [
        ("host", f"127.0.0.1:{port}"),
        ("content-type", "application/json"),
        ("content-length", str(len(body))),
        *headers,
    ]
    response: h11.Response | None = None
    parts: list[bytes] = []

    def got(clean: bool, trailers: dict[bytes, bytes]) -> Got:
        assert response is not None, "no response head"
        head = {bytes(k): bytes(v) for k, v in response.headers}
        return Got(response.status_code, head, b"".join(parts), trailers, clean)

    with socket.create_connection(("127.0.0.1", port), timeout=timeout_s) as sock:
        sock.sendall(conn.send(h11.Request(method="POST", target=target, headers=all_headers)))
        sock.sendall(conn.send(h11.Data(data=body)) + conn.send(h11.EndOfMessage()))
        while True:
            try:
                event = conn.next_event()
            except h11.RemoteProtocolError:  # the connection closed before the body's end
                return got(False, {})
            if event is h11.NEED_DATA:
                if leave_after is not None and sum(map(len, parts)) >= leave_after:
                    return got(False, {})
                try:
                    data = sock.recv(4096 if slow else 65536)
                except ConnectionResetError:
                    data = b""
                if slow:
                    time.sleep(0.001)
                conn.receive_data(data)
            elif isinstance(event, h11.Response):
                response = event
            elif isinstance(event, h11.Data):
                parts.append(bytes(event.data))
            elif isinstance(event, h11.EndOfMessage):
                return got(True, {bytes(k): bytes(v) for k, v in event.headers})
            elif isinstance(event, h11.ConnectionClosed):
                return got(False, {})


def record_of(stack: Stack, request_id: str, timeout_s: float = 10.0) -> Any:
    """The ledger record of one request (it can trail the response's last byte by a moment)."""
    state = stack.proxy.app.state
    assert state is not None
    deadline = time.monotonic() + timeout_s
    while True:
        stack.flush_ledger()
        found = state.ledger.query(request_id)
        if found or time.monotonic() > deadline:
            assert len(found) == 1, f"{len(found)} records for {request_id}"
            return found[0]
        time.sleep(0.02)


def figures_of(record: Any) -> Figures:
    return {name: getattr(record, name) for name in USAGE_FIELDS}


def assert_trailers_agree(got: Got, record: Any) -> None:
    """The bill in the trailers is the ledger's."""
    assert got.trailers[b"x-teeproxy-usage"] == record.usage_status.encode()
    for name in USAGE_FIELDS:
        trailer = b"x-teeproxy-" + name.replace("_tokens", "-tokens").replace("_", "-").encode()
        assert got.trailers[trailer] == str(getattr(record, name)).encode()


def sse_events(data: bytes) -> list[tuple[str, bytes]]:
    """(event type, data) of each event in LF-framed SSE, as the proxy writes its own events."""
    events = []
    for block in data.split(b"\n\n"):
        kind, lines = "message", []
        for line in block.split(b"\n"):
            name, _, value = line.partition(b":")
            if name == b"event":
                kind = value.removeprefix(b" ").decode()
            elif name == b"data":
                lines.append(value.removeprefix(b" "))
        if lines:
            events.append((kind, b"\n".join(lines)))
    return events


# --- what a client reads from the proxy's errors, per dialect -------------------------------------------------------


def chat_stream_error(tail: bytes) -> str:
    [(kind, data), done] = sse_events(tail)
    assert (kind, done) == ("message", ("message", b"[DONE]"))
    error = json.loads(data)["error"]
    assert error["type"] == "upstream_error" and error["message"]
    return str(error["code"])


def responses_stream_error(tail: bytes) -> str:
    [(kind, data), (failed_kind, failed)] = sse_events(tail)
    assert (kind, failed_kind) == ("error", "response.failed")
    assert json.loads(failed)["response"]["status"] == "failed"
    error = json.loads(data)
    assert error["type"] == "error" and error["message"]
    return str(error["code"])


def anthropic_stream_error(tail: bytes) -> str:
    [(kind, data)] = sse_events(tail)
    assert kind == "error"
    error = json.loads(data)
    assert error["type"] == "error" and error["error"]["message"]
    return str(error["error"]["type"])


def gemini_sse_stream_error(tail: bytes) -> str:
    [(kind, data)] = sse_events(tail)
    assert kind == "message"
    error = json.loads(data)["error"]
    return f"{error['code']} {error['status']}"


def gemini_array_stream_error(tail: bytes) -> str:
    """One more array element (the first, with no comma, when only `[` came before it), then the closing bracket."""
    assert tail.startswith((b",\r\n", b"\r\n")) and tail.endswith(b"\r\n]"), tail
    error = json.loads(tail.removeprefix(b",")[2:-3])["error"]
    return f"{error['code']} {error['status']}"


def bedrock_stream_error(tail: bytes) -> str:
    buffer = EventStreamBuffer()
    buffer.add_data(tail)
    [message] = list(buffer)
    assert message.headers[":message-type"] == "exception"
    assert json.loads(message.payload)["message"]
    return str(message.headers[":exception-type"])


def openai_error(headers: dict[bytes, bytes], body: bytes) -> str:
    error = json.loads(body)["error"]
    assert error["type"] == "upstream_error" and error["message"]
    return str(error["code"])


def anthropic_error(headers: dict[bytes, bytes], body: bytes) -> str:
    error = json.loads(body)
    assert error["type"] == "error" and error["error"]["message"]
    return str(error["error"]["type"])


def gemini_error(headers: dict[bytes, bytes], body: bytes) -> str:
    error = json.loads(body)["error"]
    assert error["message"]
    return f"{error['code']} {error['status']}"


def bedrock_error(headers: dict[bytes, bytes], body: bytes) -> str:
    assert json.loads(body)["message"]
    return headers[b"x-amzn-errortype"].decode()


# What the client reads, per dialect, for: a cut (502 upstream_protocol_error), a stall past the read timeout
# (504 upstream_timeout), no response head in time (504), nothing listening (502 upstream_connect_error).
OPENAI_ERRORS = {
    "cut": "upstream_protocol_error",
    "stall": "upstream_timeout",
    "no_head": "upstream_timeout",
    "refused": "upstream_connect_error",
}
ANTHROPIC_ERRORS = {"cut": "api_error", "stall": "api_error", "no_head": "api_error", "refused": "api_error"}
GEMINI_ERRORS = {
    "cut": "502 UNAVAILABLE",
    "stall": "504 DEADLINE_EXCEEDED",
    "no_head": "504 DEADLINE_EXCEEDED",
    "refused": "502 UNAVAILABLE",
}
BEDROCK_ERRORS = {
    "cut": "modelStreamErrorException",
    "stall": "modelStreamErrorException",
    "no_head": "ModelTimeoutException",
    "refused": "ServiceUnavailableException",
}


# --- the routes, each with a small stream in its own framing ------------------------------------------------------


@dataclass(frozen=True)
class Wire:
    """One streaming route: how a client asks, a small stream the upstream answers with, what is known when."""

    name: str
    dialect: str
    provider: str  # tests.servers' provider that serves `model`
    model: str
    target: Callable[[str], str]  # model -> request target
    request: Callable[[str], bytes]  # model -> request body
    auth: tuple[str, str]
    content_type: bytes
    frames: tuple[bytes, ...]  # the stream, frame by frame; the last is its terminator
    seen: tuple[Figures | None, ...]  # usage known after 0, 1, ... len(frames) whole frames (None: none yet)
    big: Callable[[bytes], bytes]  # a content frame carrying this text
    stream_error: Callable[[bytes], str]  # reads the proxy's in-stream error (the bytes after the upstream's)
    error: Callable[[dict[bytes, bytes], bytes], str]  # reads a proxy-made error response
    expect: dict[str, str]  # what `stream_error` / `error` read, per failure: cut, stall, no_head, refused
    upstream_error: Script  # a 5xx the provider answers before any byte of a stream
    sse: bool = True
    stripped: bytes = b""  # a frame the proxy removes: the usage chunk it caused by asking for include_usage
    # The usage status when the stream stops inside a frame, where it differs from the whole frames' before it:
    # the event-stream meter counts an unfinished message as unreadable ("unparsed"); the SSE and JSON-array
    # meters drop the unfinished frame, as an SSE client does, and keep what the whole frames said.
    torn_status: str | None = None

    @property
    def body(self) -> bytes:
        return b"".join(self.frames)

    def client_bytes(self, upstream: bytes) -> bytes:
        """What the client gets of a whole upstream body: all of it, less the frame the proxy caused, if any."""
        return upstream.replace(self.stripped, b"") if self.stripped else upstream

    def with_inserted(self, frame: bytes) -> bytes:
        """The stream with `frame` inserted after BEFORE frames."""
        return b"".join(self.frames[:BEFORE]) + frame + b"".join(self.frames[BEFORE:])

    def send(self, stack: Stack, model: str | None = None, **client: Any) -> tuple[Got, Any]:
        """One request, asking for the trailers; what the client got, and the request's ledger record. `client`:
        how the client misbehaves (`post`'s `leave_after`, `slow`)."""
        request_id = f"fault-{uuid.uuid4().hex}"
        headers = [self.auth, ("te", "trailers"), ("x-teeproxy-request-id", request_id)]
        model = model or self.model
        got = post(stack.proxy.port, self.target(model), self.request(model), headers, **client)
        return got, record_of(stack, request_id)


def chat_chunk(delta: bytes, finish: bytes = b"null") -> bytes:
    return (
        b'data: {"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"gpt-4o-mini",'
        b'"choices":[{"index":0,"delta":' + delta + b',"finish_reason":' + finish + b"}]}\n\n"
    )


CHAT = Wire(
    name="openai-chat",
    dialect="openai",
    provider="replay",
    model="gpt-4o-mini",
    target=lambda model: "/v1/chat/completions",
    # The client asks for usage itself: the proxy then changes nothing in the stream (no usage frame to remove).
    request=lambda model: json.dumps(
        {"model": model, "stream": True, "stream_options": {"include_usage": True}, "messages": []}
    ).encode(),
    auth=("authorization", f"Bearer {CLIENT_KEY}"),
    content_type=SSE,
    frames=(
        chat_chunk(b'{"role":"assistant","content":"Hello"}'),
        chat_chunk(b"{}", finish=b'"stop"'),
        b'data: {"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"gpt-4o-mini","choices":[],'
        b'"usage":{"prompt_tokens":9,"completion_tokens":3,"total_tokens":12,'
        b'"prompt_tokens_details":{"cached_tokens":4}}}\n\n',
        b"data: [DONE]\n\n",
    ),
    seen=(None, None, None, usage(9, 3, cached=4), usage(9, 3, cached=4)),
    big=lambda text: chat_chunk(b'{"content":"' + text + b'"}'),
    stream_error=chat_stream_error,
    error=openai_error,
    expect=OPENAI_ERRORS,
    upstream_error=Script(
        body=b'{"error":{"message":"The server is overloaded.","type":"server_error","param":null,"code":null}}',
        status=503,
        content_type=b"application/json",
    ),
)

RESPONSES = Wire(
    name="openai-responses",
    dialect="openai",
    provider="replay",
    model="gpt-4o-mini",
    target=lambda model: "/v1/responses",
    request=lambda model: json.dumps({"model": model, "stream": True, "input": "hi"}).encode(),
    auth=("authorization", f"Bearer {CLIENT_KEY}"),
    content_type=SSE,
    frames=(
        b"event: response.created\n"
        b'data: {"type":"response.created","sequence_number":0,"response":{"id":"resp_1","object":"response",'
        b'"status":"in_progress","model":"gpt-4o-mini","output":[],"usage":null}}\n\n',
        b"event: response.output_text.delta\n"
        b'data: {"type":"response.output_text.delta","sequence_number":1,"item_id":"msg_1","output_index":0,'
        b'"content_index":0,"delta":"Hello"}\n\n',
        b"event: response.completed\n"
        b'data: {"type":"response.completed","sequence_number":2,"response":{"id":"resp_1","object":"response",'
        b'"status":"completed","model":"gpt-4o-mini","output":[],"usage":{"input_tokens":9,'
        b'"input_tokens_details":{"cached_tokens":4},"output_tokens":3,"output_tokens_details":'
        b'{"reasoning_tokens":1},"total_tokens":12}}}\n\n',
    ),
    seen=(None, None, None, usage(9, 3, cached=4, reasoning=1)),
    big=lambda text: (
        b"event: response.output_text.delta\n"
        b'data: {"type":"response.output_text.delta","sequence_number":1,"item_id":"msg_1","output_index":0,'
        b'"content_index":0,"delta":"' + text + b'"}\n\n'
    ),
    stream_error=responses_stream_error,
    error=openai_error,
    expect=OPENAI_ERRORS,
    upstream_error=CHAT.upstream_error,
)


def anthropic_event(kind: bytes, data: bytes) -> bytes:
    return b"event: " + kind + b"\ndata: " + data + b"\n\n"


ANTHROPIC = Wire(
    name="anthropic-messages",
    dialect="anthropic",
    provider="replay-anthropic",
    model="claude-sonnet-4-20250514",
    target=lambda model: "/v1/messages",
    request=lambda model: json.dumps({"model": model, "max_tokens": 16, "stream": True, "messages": []}).encode(),
    auth=("x-api-key", CLIENT_KEY),
    content_type=SSE,
    frames=(
        anthropic_event(
            b"message_start",
            b'{"type":"message_start","message":{"id":"msg_1","type":"message","role":"assistant",'
            b'"model":"claude-sonnet-4-20250514","content":[],"stop_reason":null,"usage":{"input_tokens":9,'
            b'"cache_read_input_tokens":4,"cache_creation_input_tokens":2,"output_tokens":1}}}',
        ),
        anthropic_event(
            b"content_block_delta",
            b'{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Hello"}}',
        ),
        anthropic_event(
            b"message_delta",
            b'{"type":"message_delta","delta":{"stop_reason":"end_turn"},"usage":{"output_tokens":3}}',
        ),
        anthropic_event(b"message_stop", b'{"type":"message_stop"}'),
    ),
    seen=(
        None,
        usage(15, 1, cached=4, written=2),
        usage(15, 1, cached=4, written=2),
        usage(15, 3, cached=4, written=2),
        usage(15, 3, cached=4, written=2),
    ),
    big=lambda text: anthropic_event(
        b"content_block_delta",
        b'{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"' + text + b'"}}',
    ),
    stream_error=anthropic_stream_error,
    error=anthropic_error,
    expect=ANTHROPIC_ERRORS,
    upstream_error=Script(
        body=b'{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}',
        status=529,
        content_type=b"application/json",
    ),
)


def gemini_chunk(text: bytes, usage_metadata: bytes | None, finish: bool = False) -> bytes:
    """One GenerateContentResponse, as JSON."""
    return (
        b'{"candidates":[{"content":{"parts":[{"text":"' + text + b'"}],"role":"model"}'
        + (b',"finishReason":"STOP"' if finish else b"")
        + b',"index":0}]'
        + (b',"usageMetadata":' + usage_metadata if usage_metadata is not None else b"")
        + b',"modelVersion":"gemini-2.5-flash"}'
    )  # fmt: skip


GEMINI_CHUNKS = (
    gemini_chunk(b"Hello", b'{"promptTokenCount":9,"candidatesTokenCount":1,"totalTokenCount":10}'),
    gemini_chunk(b" there", b'{"promptTokenCount":9,"candidatesTokenCount":2,"totalTokenCount":11}'),
    gemini_chunk(
        b"!",
        b'{"promptTokenCount":9,"candidatesTokenCount":3,"thoughtsTokenCount":2,"cachedContentTokenCount":4,'
        b'"totalTokenCount":14}',
        finish=True,
    ),
)
GEMINI_SEEN = (None, usage(9, 1), usage(9, 2), usage(9, 5, cached=4, reasoning=2))
GEMINI_UPSTREAM_ERROR = Script(
    body=b'{"error":{"code":503,"message":"The model is overloaded. Please try again later.","status":"UNAVAILABLE"}}',
    status=503,
    content_type=b"application/json",
)


def gemini_request(model: str) -> bytes:
    return b'{"contents":[{"role":"user","parts":[{"text":"hi"}]}]}'


GEMINI_SSE = Wire(
    name="gemini-sse",
    dialect="gemini",
    provider="replay-gemini",
    model="gemini-2.5-flash",
    target=lambda model: f"/v1beta/models/{model}:streamGenerateContent?alt=sse",
    request=gemini_request,
    auth=("x-goog-api-key", CLIENT_KEY),
    content_type=SSE,
    # Google's SSE frames end with CRLF CRLF; the finish chunk, with the last usage, is the stream's end.
    frames=tuple(b"data: " + chunk + b"\r\n\r\n" for chunk in GEMINI_CHUNKS),
    seen=GEMINI_SEEN,
    big=lambda text: b"data: " + gemini_chunk(text, None) + b"\r\n\r\n",
    stream_error=gemini_sse_stream_error,
    error=gemini_error,
    expect=GEMINI_ERRORS,
    upstream_error=GEMINI_UPSTREAM_ERROR,
)

GEMINI_ARRAY = Wire(
    name="gemini-array",
    dialect="gemini",
    provider="replay-gemini",
    model="gemini-2.5-flash",
    target=lambda model: f"/v1beta/models/{model}:streamGenerateContent",
    request=gemini_request,
    auth=("x-goog-api-key", CLIENT_KEY),
    content_type=JSON,
    # `[` with the first element, `,\r\n` before each further one, and the closing bracket as the stream's end.
    frames=(b"[" + GEMINI_CHUNKS[0], *(b",\r\n" + chunk for chunk in GEMINI_CHUNKS[1:]), b"]"),
    seen=(*GEMINI_SEEN, GEMINI_SEEN[-1]),
    big=lambda text: b",\r\n" + gemini_chunk(text, None),
    stream_error=gemini_array_stream_error,
    error=gemini_error,
    expect=GEMINI_ERRORS,
    upstream_error=GEMINI_UPSTREAM_ERROR,
    sse=False,
)


def bedrock_event(kind: str, payload: dict[str, Any]) -> bytes:
    return event_frame(kind, json.dumps(payload, separators=(",", ":")).encode())


BEDROCK = Wire(
    name="bedrock-converse-stream",
    dialect="bedrock",
    provider="replay-bedrock",
    model=BEDROCK_MODEL,
    target=lambda model: f"/model/{model}/converse-stream",
    request=lambda model: b'{"messages":[{"role":"user","content":[{"text":"hi"}]}]}',
    auth=("authorization", f"Bearer {CLIENT_KEY}"),
    content_type=EVENTSTREAM,
    frames=(
        bedrock_event("messageStart", {"role": "assistant"}),
        bedrock_event("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": "Hello"}}),
        bedrock_event("contentBlockStop", {"contentBlockIndex": 0}),
        bedrock_event("messageStop", {"stopReason": "end_turn"}),
        bedrock_event(
            "metadata",
            {
                "usage": {
                    "inputTokens": 9,
                    "outputTokens": 3,
                    "totalTokens": 18,
                    "cacheReadInputTokens": 4,
                    "cacheWriteInputTokens": 2,
                },
                "metrics": {"latencyMs": 120},
            },
        ),
    ),
    seen=(None, None, None, None, None, usage(15, 3, cached=4, written=2)),
    big=lambda text: bedrock_event("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": text.decode()}}),
    stream_error=bedrock_stream_error,
    error=bedrock_error,
    expect=BEDROCK_ERRORS,
    upstream_error=Script(
        body=b'{"message":"Bedrock is unable to process your request."}',
        status=503,
        content_type=b"application/json",
        headers=[(b"x-amzn-errortype", b"ServiceUnavailableException")],
    ),
    sse=False,
    torn_status="unparsed",
)

# The default for most OpenAI clients: no stream_options. The proxy asks for usage on the client's behalf and
# removes the usage chunk that causes (a frame filter, which holds back the bytes of an unfinished frame).
CHAT_INJECTED = dataclasses.replace(
    CHAT,
    name="openai-chat-usage-injected",
    request=lambda model: json.dumps({"model": model, "stream": True, "messages": []}).encode(),
    stripped=CHAT.frames[2],
)

WIRES = [CHAT, CHAT_INJECTED, RESPONSES, ANTHROPIC, GEMINI_SSE, GEMINI_ARRAY, BEDROCK]
IDS = [wire.name for wire in WIRES]


def script(wire: Wire, body: bytes, **kwargs: Any) -> Script:
    return Script(body=body, content_type=wire.content_type, **kwargs)


def assert_record(
    record: Any,
    got: Got,
    wire: Wire,
    *,
    outcome: str,
    figures: Figures | None,
    provider: str | None = None,
    status: str | None = None,
) -> None:
    """One record for the request, saying what happened, what it cost as far as known, and what the client got."""
    assert record.outcome == outcome
    assert record.http_status == got.status
    assert record.provider == (provider or wire.provider)
    assert record.attempts == 1
    assert record.bytes_to_client == len(got.body)
    assert record.usage_status == (status or ("reported" if figures is not None else "missing"))
    assert figures_of(record) == (figures or usage(0, 0))


# --- (a) the upstream closes the connection mid-stream -------------------------------------------------------------


@pytest.mark.parametrize("where", ["inside_a_frame", "at_a_frame_boundary"])
@pytest.mark.parametrize("wire", WIRES, ids=IDS)
def test_a_cut_mid_stream_ends_with_the_dialects_error_after_every_byte(stack: Stack, wire: Wire, where: str) -> None:
    cut = len(b"".join(wire.frames[:BEFORE]))
    if where == "inside_a_frame":
        cut += len(wire.frames[BEFORE]) // 2
    stack.upstream.script = script(wire, wire.body, chunk_sizes=[cut], cut_after=cut)
    got, record = wire.send(stack)
    assert got.status == 200 and got.clean  # the stream still ends as one should, after its error
    sent = wire.body[:cut]
    assert got.body[:cut] == sent
    tail = got.body[cut:]
    if wire.sse and where == "inside_a_frame":
        assert tail.startswith(b"\n\n")  # the error event in a frame of its own
        tail = tail[2:]
    assert wire.stream_error(tail) == wire.expect["cut"]
    if wire is GEMINI_ARRAY and where == "at_a_frame_boundary":
        assert "error" in json.loads(got.body)[-1]  # still one JSON array, the error its last element
    torn = wire.torn_status if where == "inside_a_frame" else None
    assert_record(record, got, wire, outcome="upstream_error", figures=wire.seen[BEFORE], status=torn)
    assert_trailers_agree(got, record)


# --- (b) the upstream stalls past read_timeout_s after the first byte -------------------------------------------


@pytest.mark.parametrize("where", ["after_the_first_byte", "at_a_frame_boundary"])
@pytest.mark.parametrize("wire", WIRES, ids=IDS)
def test_a_stall_past_the_read_timeout_ends_with_the_dialects_error(stack: Stack, wire: Wire, where: str) -> None:
    sent = 1 if where == "after_the_first_byte" else len(b"".join(wire.frames[:BEFORE]))
    stack.upstream.script = script(wire, wire.body, chunk_sizes=[sent, len(wire.body)], pause_s=STALL_S)
    started = time.monotonic()
    got, record = wire.send(stack, model="stall-model")
    assert time.monotonic() - started < STALL_S  # the proxy gave up; the upstream did not end it
    assert got.status == 200 and got.clean
    assert got.body[:sent] == wire.body[:sent]
    tail = got.body[sent:]
    if wire.sse and where == "after_the_first_byte":
        assert tail.startswith(b"\n\n")
        tail = tail[2:]
    assert wire.stream_error(tail) == wire.expect["stall"]
    assert_record(
        record,
        got,
        wire,
        outcome="timeout",
        figures=wire.seen[0 if sent == 1 else BEFORE],
        provider=f"stall-{wire.dialect}",
        status=wire.torn_status if sent == 1 else None,
    )
    assert record.duration_ms >= READ_TIMEOUT_S * 1000
    assert_trailers_agree(got, record)


@pytest.mark.parametrize(
    "where",
    [
        "after_the_first_byte",
        "at_a_frame_boundary",
    ],
)
def test_a_json_array_stream_that_fails_stays_one_json_array(stack: Stack, where: str) -> None:
    """What google-genai and any JSON reader of the array stream needs: the error is the array's last element."""
    wire = GEMINI_ARRAY
    sent = 1 if where == "after_the_first_byte" else len(b"".join(wire.frames[:BEFORE]))
    stack.upstream.script = script(wire, wire.body, chunk_sizes=[sent, len(wire.body)], pause_s=STALL_S)
    got, _ = wire.send(stack, model="stall-model")
    elements = json.loads(got.body)
    assert elements[:-1] == [json.loads(chunk) for chunk in GEMINI_CHUNKS[: 0 if sent == 1 else BEFORE]]
    assert elements[-1]["error"]["status"] == "DEADLINE_EXCEEDED"


# --- (c) the body ends properly, the stream without its terminator --------------------------------------------------


@pytest.mark.parametrize("wire", WIRES, ids=IDS)
def test_a_stream_without_its_terminator_passes_through_as_it_ended(stack: Stack, wire: Wire) -> None:
    body = b"".join(wire.frames[:-1])
    stack.upstream.script = script(wire, body, chunk_sizes=[41])
    got, record = wire.send(stack)
    assert got.status == 200 and got.clean
    assert got.body == wire.client_bytes(body)  # nothing added: the response was complete at the HTTP level
    assert_record(record, got, wire, outcome="completed", figures=wire.seen[-2])
    assert_trailers_agree(got, record)


# --- (d) garbage between two frames -------------------------------------------------------------------------------


@pytest.mark.parametrize("wire", WIRES, ids=IDS)
def test_garbage_mid_stream_reaches_the_client_unchanged(stack: Stack, wire: Wire) -> None:
    body = wire.with_inserted(GARBAGE)
    stack.upstream.script = script(wire, body, chunk_sizes=[53, 7])
    got, record = wire.send(stack)
    assert got.status == 200 and got.clean
    assert got.body == wire.client_bytes(body)
    assert record.outcome == "completed" and record.http_status == 200
    assert record.bytes_to_client == len(got.body)
    # The meter may lose the count, and then says so, keeping what it read as a lower bound; it never reports a
    # wrong count as right.
    full = wire.seen[-1]
    assert full is not None
    if record.usage_status == "reported":
        assert figures_of(record) == full
    else:
        assert record.usage_status == "unparsed"
        assert all(figures_of(record)[name] <= full[name] for name in USAGE_FIELDS)
    assert_trailers_agree(got, record)


# --- (e) a 2 MiB frame ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("slow", [False, True], ids=["read-at-once", "read-slowly"])
@pytest.mark.parametrize("wire", WIRES, ids=IDS)
def test_a_2mib_frame_passes_through_and_the_count_stands(stack: Stack, wire: Wire, slow: bool) -> None:
    """Read at once, or 4 KiB at a time by a slow client (the relay waits for it, the upstream held back by TCP):
    nothing is lost or reordered, and the count stands."""
    body = wire.with_inserted(wire.big(BIG_TEXT))
    stack.upstream.script = script(wire, body, chunk_sizes=[65536])
    got, record = wire.send(stack, slow=slow)
    assert got.status == 200 and got.clean
    assert got.body == wire.client_bytes(body)
    assert_record(record, got, wire, outcome="completed", figures=wire.seen[-1])
    assert_trailers_agree(got, record)


# --- a client that leaves mid-stream (one that reads slowly: the 2 MiB frame above) ---------------------------------


@pytest.mark.parametrize("wire", WIRES, ids=IDS)
def test_a_client_that_leaves_mid_stream_ends_the_upstream_request(stack: Stack, wire: Wire) -> None:
    """The upstream writes a frame every 0.3 s; the client leaves at its first body bytes. The request ends at
    once (the upstream connection closed, the provider stops generating): its record is written long before the
    stream would have ended, and says so."""
    pause_s = 0.3
    stack.upstream.script = script(wire, wire.body, chunk_sizes=[len(wire.frames[0])], pause_s=pause_s)
    got, record = wire.send(stack, leave_after=1)
    assert got.status == 200 and not got.clean and got.body
    assert record.outcome == "client_disconnected"
    assert record.http_status == 200 and record.provider == wire.provider
    assert record.duration_ms < (len(wire.body) // len(wire.frames[0]) - 1) * pause_s * 1000


# --- (f) failures before the first byte, one provider: nothing to fail over to --------------------------------------


@pytest.mark.parametrize("wire", WIRES, ids=IDS)
def test_an_upstream_5xx_reaches_the_client_as_it_is(stack: Stack, wire: Wire) -> None:
    failure = wire.upstream_error
    stack.upstream.script = failure
    asked = len(stack.upstream.requests)
    got, record = wire.send(stack)
    assert len(stack.upstream.requests) == asked + 1  # one provider: no retry
    assert got.status == failure.status and got.clean
    assert got.body == failure.body
    for name, value in failure.headers:
        assert got.headers[name] == value
    assert got.headers[b"x-teeproxy-attempts"] == b"1"
    assert_record(record, got, wire, outcome="completed", figures=None)


@pytest.mark.parametrize("wire", WIRES, ids=IDS)
def test_no_response_head_within_the_read_timeout_is_a_504_in_the_dialects_format(stack: Stack, wire: Wire) -> None:
    stack.upstream.script = script(wire, wire.body, head_pause_s=STALL_S)
    got, record = wire.send(stack, model="stall-model")
    assert got.status == 504 and got.clean
    assert wire.error(got.headers, got.body) == wire.expect["no_head"]
    assert (record.outcome, record.http_status, record.provider) == ("timeout", 504, f"stall-{wire.dialect}")
    assert (record.usage_status, figures_of(record)) == ("missing", usage(0, 0))


@pytest.mark.parametrize("wire", WIRES, ids=IDS)
def test_an_unreachable_provider_is_a_502_in_the_dialects_format(stack: Stack, wire: Wire) -> None:
    got, record = wire.send(stack, model="down-model")
    assert got.status == 502 and got.clean
    assert wire.error(got.headers, got.body) == wire.expect["refused"]
    assert (record.outcome, record.http_status, record.provider) == ("upstream_error", 502, f"down-{wire.dialect}")
    assert (record.usage_status, figures_of(record)) == ("missing", usage(0, 0))


def test_a_proxy_made_error_counts_its_body_bytes(stack: Stack) -> None:
    got, record = CHAT.send(stack, model="down-model")
    assert got.status == 502 and got.body
    assert record.bytes_to_client == len(got.body)


# --- (g) a slow drip -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("wire", WIRES, ids=IDS)
def test_a_slow_drip_arrives_whole_and_is_metered_exactly(stack: Stack, wire: Wire) -> None:
    stack.upstream.script = script(wire, wire.body, chunk_sizes=[1], pause_s=DRIP_PAUSE_S)
    got, record = wire.send(stack)
    assert got.status == 200 and got.clean
    assert got.body == wire.client_bytes(wire.body)
    assert_record(record, got, wire, outcome="completed", figures=wire.seen[-1])
    assert_trailers_agree(got, record)


# --- (a) on a plain body: cut short, it must not look complete ------------------------------------------------------


@dataclass(frozen=True)
class Plain:
    """A non-streaming endpoint and its JSON answer (usage last, as the providers write it)."""

    name: str
    target: str
    request: bytes
    auth: tuple[str, str]
    answer: bytes
    provider: str


FILLER = "y" * 3000
PLAINS = [
    Plain(
        "openai-chat",
        "/v1/chat/completions",
        b'{"model":"gpt-4o-mini","messages":[]}',
        ("authorization", f"Bearer {CLIENT_KEY}"),
        json.dumps(
            {
                "id": "chatcmpl-1",
                "object": "chat.completion",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": FILLER}}],
                "usage": {"prompt_tokens": 9, "completion_tokens": 3, "total_tokens": 12},
            }
        ).encode(),
        "replay",
    ),
    Plain(
        "anthropic-messages",
        "/v1/messages",
        b'{"model":"claude-sonnet-4-20250514","max_tokens":16,"messages":[]}',
        ("x-api-key", CLIENT_KEY),
        json.dumps(
            {
                "id": "msg_1",
                "type": "message",
                "role": "assistant",
                "content": [{"type": "text", "text": FILLER}],
                "usage": {"input_tokens": 9, "output_tokens": 3},
            }
        ).encode(),
        "replay-anthropic",
    ),
    Plain(
        "gemini-generate",
        "/v1beta/models/gemini-2.5-flash:generateContent",
        b'{"contents":[]}',
        ("x-goog-api-key", CLIENT_KEY),
        json.dumps(
            {
                "candidates": [{"content": {"parts": [{"text": FILLER}], "role": "model"}, "finishReason": "STOP"}],
                "usageMetadata": {"promptTokenCount": 9, "candidatesTokenCount": 3, "totalTokenCount": 12},
            }
        ).encode(),
        "replay-gemini",
    ),
    Plain(
        "bedrock-converse",
        f"/model/{BEDROCK_MODEL}/converse",
        b'{"messages":[]}',
        ("authorization", f"Bearer {CLIENT_KEY}"),
        json.dumps(
            {
                "output": {"message": {"role": "assistant", "content": [{"text": FILLER}]}},
                "stopReason": "end_turn",
                "usage": {"inputTokens": 9, "outputTokens": 3, "totalTokens": 12},
            }
        ).encode(),
        "replay-bedrock",
    ),
]


@pytest.mark.parametrize("plain", PLAINS, ids=[plain.name for plain in PLAINS])
def test_a_plain_body_cut_short_ends_abnormally(stack: Stack, plain: Plain) -> None:
    cut = 1000
    stack.upstream.script = Script(
        body=plain.answer, content_type=b"application/json", content_length=True, chunk_sizes=[cut], cut_after=cut
    )
    request_id = f"fault-{uuid.uuid4().hex}"
    got = post(stack.proxy.port, plain.target, plain.request, [plain.auth, ("x-teeproxy-request-id", request_id)])
    record = record_of(stack, request_id)
    assert got.status == 200
    assert got.headers[b"content-length"] == str(len(plain.answer)).encode()  # what the client was promised ...
    assert not got.clean  # ... and did not get: the connection ended before it, so no client takes it as whole
    assert got.body == plain.answer[:cut]
    assert (record.outcome, record.http_status, record.provider) == ("upstream_error", 200, plain.provider)
    assert record.bytes_to_client == len(got.body)
    assert (record.usage_status, figures_of(record)) == ("missing", usage(0, 0))


# --- (a) on real captures: a cut at a frame boundary halfway through ----------------------------------------------


def gemini_array_of(sse: bytes) -> bytes:
    """A Gemini SSE capture as the JSON-array stream the same request would get without alt=sse."""
    chunks = [line[5:].strip() for line in sse.replace(b"\r\n", b"\n").split(b"\n") if line.startswith(b"data:")]
    return b"[" + b",\r\n".join(chunks) + b"]"


CAPTURES = [
    (CHAT, "openai/chat_usage_basic.sse"),
    (RESPONSES, "openai_responses/responses_basic.sse"),
    (ANTHROPIC, "anthropic/messages_tool_use.sse"),
    (GEMINI_SSE, "gemini/stream_thinking.sse"),
    (GEMINI_ARRAY, "gemini/stream_thinking.sse"),
    (BEDROCK, "bedrock/converse_stream_basic.bin"),
]


@pytest.mark.parametrize(("wire", "capture"), CAPTURES, ids=[wire.name for wire, _ in CAPTURES])
def test_a_capture_cut_halfway_keeps_every_byte_before_the_error(
    stack: Stack, shared_fixtures: pathlib.Path, wire: Wire, capture: str
) -> None:
    body = (shared_fixtures / capture).read_bytes()
    if wire is GEMINI_ARRAY:
        body = gemini_array_of(body)
        cut = body.index(b",\r\n", len(body) // 2)
    elif wire is BEDROCK:
        messages = split_messages(body)
        cut = sum(len(message) for message in messages[: len(messages) // 2])
    else:
        end = b"\r\n\r\n" if wire is GEMINI_SSE else b"\n\n"
        cut = body.index(end, len(body) // 2) + len(end)
    stack.upstream.script = script(wire, body, chunk_sizes=[cut], cut_after=cut)
    got, record = wire.send(stack)
    assert got.status == 200 and got.clean
    assert got.body[:cut] == body[:cut]  # every byte the upstream sent, unchanged ...
    assert wire.stream_error(got.body[cut:]) == wire.expect["cut"]  # ... then the dialect's error
    assert (record.outcome, record.http_status) == ("upstream_error", 200)
    assert record.bytes_to_client == len(got.body)
    assert record.usage_status in ("reported", "missing")  # whatever the stream had said by then
    assert_trailers_agree(got, record)
