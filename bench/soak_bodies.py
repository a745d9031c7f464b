"""What the soak's fake provider says, in each dialect's own format: good streams, broken ones, and garbage.

A `Body` is the response entity and the offsets where its frames end, so the upstream can write it frame by
frame, cut it at a frame boundary, or insert garbage between two frames. Good streams come from the real
captures in ../shared/fixtures when that folder is there (served byte for byte) and are otherwise made here,
in the shapes the providers document; the event-stream encoder is written here too, apart from the proxy's, so
that the soak does not test the proxy with the proxy's own code.

Kinds (what the client asked for): `openai_chat_stream`, `openai_chat` (a JSON body), `openai_responses`,
`anthropic`, `gemini_sse`, `gemini_array` (streamGenerateContent without alt=sse), `gemini_generate`
(generateContent, a JSON body), `bedrock` (ConverseStream), `bedrock_converse` (Converse, a JSON body).
"""

from __future__ import annotations

import json
import pathlib
import random
import struct
import zlib
from dataclasses import dataclass

SHARED_FIXTURES = pathlib.Path(__file__).resolve().parent.parent.parent / "shared" / "fixtures"
KINDS = (
    "openai_chat_stream",
    "openai_chat",
    "openai_responses",
    "anthropic",
    "gemini_sse",
    "gemini_array",
    "gemini_generate",
    "bedrock",
    "bedrock_converse",
)
SSE_KINDS = frozenset({"openai_chat_stream", "openai_responses", "anthropic", "gemini_sse"})
JSON_KINDS = frozenset({"openai_chat", "gemini_generate", "bedrock_converse"})
# The "2 MiB single line": one SSE data line (one array element, one event-stream message) this long.
BIG_LINE_BYTES = 2 * 1024 * 1024
_FIXTURE_FORMATS = {
    "openai_chat": "openai_chat_stream",
    "openai_responses": "openai_responses",
    "anthropic": "anthropic",
    "gemini": "gemini_sse",
    "bedrock_converse": "bedrock",
}
_WORDS = "the quick brown fox jumps over a lazy dog while streams are cut reset stalled and resumed".split()


@dataclass(frozen=True, slots=True)
class Body:
    content_type: bytes
    data: bytes
    frame_ends: tuple[int, ...]  # offset just past each frame; the last is len(data) unless the tail is unframed

    def pieces(self) -> list[bytes]:
        out, start = [], 0
        for end in self.frame_ends:
            out.append(self.data[start:end])
            start = end
        if start < len(self.data):
            out.append(self.data[start:])
        return out


def _json(obj: object) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def _sse(frames: list[bytes], content_type: bytes = b"text/event-stream; charset=utf-8") -> Body:
    ends, pos = [], 0
    for frame in frames:
        pos += len(frame)
        ends.append(pos)
    return Body(content_type, b"".join(frames), tuple(ends))


def sse_frame_ends(data: bytes) -> tuple[int, ...]:
    """Offsets just past each blank line (LF LF, CRLF CRLF or CR CR) in an SSE body."""
    ends = []
    pos = 0
    while True:
        found = [(i, len(sep)) for sep in (b"\n\n", b"\r\n\r\n", b"\r\r") if (i := data.find(sep, pos)) != -1]
        if not found:
            break
        i, n = min(found)
        pos = i + n
        ends.append(pos)
    return tuple(ends)


def event_message(headers: dict[str, str], payload: bytes) -> bytes:
    """One AWS event-stream message (string headers), both CRCs included."""
    head = b"".join(
        struct.pack(">B", len(name)) + name.encode() + struct.pack(">BH", 7, len(value)) + value.encode()
        for name, value in headers.items()
    )
    prelude = struct.pack(">II", 12 + len(head) + len(payload) + 4, len(head))
    message = prelude + struct.pack(">I", zlib.crc32(prelude)) + head + payload
    return message + struct.pack(">I", zlib.crc32(message))


def bedrock_event(event_type: str, payload: object) -> bytes:
    headers = {":event-type": event_type, ":content-type": "application/json", ":message-type": "event"}
    return event_message(headers, _json(payload))


def event_stream_ends(data: bytes) -> tuple[int, ...]:
    ends, pos = [], 0
    while len(data) - pos >= 12:
        total = struct.unpack_from(">I", data, pos)[0]
        if total < 16 or pos + total > len(data):
            break
        pos += total
        ends.append(pos)
    return tuple(ends)


def _array(elements: list[bytes]) -> Body:
    frames = [b"[" + elements[0]] + [b",\r\n" + e for e in elements[1:]] + [b"]"]
    return _sse(frames, b"application/json; charset=UTF-8")


# --- good streams, made here --------------------------------------------------------------------------------


def _words(rng: random.Random, n: int) -> list[str]:
    return [rng.choice(_WORDS) + " " for _ in range(n)]


def _openai_chunk(choices: list[object], usage: object = None) -> bytes:
    body: dict[str, object] = {
        "id": "chatcmpl-soak",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "gpt-4o-mini",
        "choices": choices,
    }
    if usage is not None:
        body["usage"] = usage
    return b"data: " + _json(body) + b"\n\n"


def _openai_usage(n: int) -> dict[str, int]:
    return {"prompt_tokens": 12, "completion_tokens": n, "total_tokens": 12 + n}


def openai_chat_stream(words: list[str], include_usage: bool, done: bool = True) -> Body:
    frames = [_openai_chunk([{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}])]
    frames += [_openai_chunk([{"index": 0, "delta": {"content": w}, "finish_reason": None}]) for w in words]
    frames.append(_openai_chunk([{"index": 0, "delta": {}, "finish_reason": "stop"}]))
    if include_usage:
        frames.append(_openai_chunk([], _openai_usage(len(words))))
    if done:
        frames.append(b"data: [DONE]\n\n")
    return _sse(frames)


def openai_chat(words: list[str]) -> Body:
    data = _json(
        {
            "id": "chatcmpl-soak",
            "object": "chat.completion",
            "created": 1,
            "model": "gpt-4o-mini",
            "choices": [
                {"index": 0, "message": {"role": "assistant", "content": "".join(words)}, "finish_reason": "stop"}
            ],
            "usage": _openai_usage(len(words)),
        }
    )
    return Body(b"application/json", data, (len(data),))


def _responses_event(kind: str, body: dict[str, object]) -> bytes:
    return b"event: " + kind.encode() + b"\ndata: " + _json({"type": kind, **body}) + b"\n\n"


def openai_responses(words: list[str], done: bool = True) -> Body:
    response = {"id": "resp_soak", "object": "response", "status": "in_progress", "model": "gpt-4o-mini"}
    frames = [_responses_event("response.created", {"response": response})]
    frames += [_responses_event("response.output_text.delta", {"item_id": "msg_1", "delta": w}) for w in words]
    if done:
        usage = {"input_tokens": 12, "output_tokens": len(words), "total_tokens": 12 + len(words)}
        completed = {**response, "status": "completed", "usage": usage}
        frames.append(_responses_event("response.completed", {"response": completed}))
    return _sse(frames)


def _anthropic_event(kind: str, body: dict[str, object]) -> bytes:
    return b"event: " + kind.encode() + b"\ndata: " + _json({"type": kind, **body}) + b"\n\n"


def anthropic(words: list[str], done: bool = True) -> Body:
    message = {
        "id": "msg_soak",
        "type": "message",
        "role": "assistant",
        "model": "claude-haiku-4-5",
        "content": [],
        "usage": {"input_tokens": 12, "output_tokens": 1},
    }
    frames = [
        _anthropic_event("message_start", {"message": message}),
        _anthropic_event("content_block_start", {"index": 0, "content_block": {"type": "text", "text": ""}}),
        _anthropic_event("ping", {}),
    ]
    frames += [
        _anthropic_event("content_block_delta", {"index": 0, "delta": {"type": "text_delta", "text": w}}) for w in words
    ]
    frames.append(_anthropic_event("content_block_stop", {"index": 0}))
    delta = {"delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": len(words)}}
    frames.append(_anthropic_event("message_delta", delta))
    if done:
        frames.append(_anthropic_event("message_stop", {}))
    return _sse(frames)


def _gemini_chunk(text: str, n: int, last: bool) -> bytes:
    candidate: dict[str, object] = {"content": {"parts": [{"text": text}], "role": "model"}, "index": 0}
    if last:
        candidate["finishReason"] = "STOP"
    usage = {"promptTokenCount": 12, "candidatesTokenCount": n, "totalTokenCount": 12 + n}
    return _json({"candidates": [candidate], "usageMetadata": usage, "modelVersion": "gemini-2.5-flash"})


def gemini_elements(words: list[str]) -> list[bytes]:
    return [_gemini_chunk(w, i + 1, i == len(words) - 1) for i, w in enumerate(words)]


def _json_body(data: bytes) -> Body:
    return Body(b"application/json", data, (len(data),))


def gemini_generate(words: list[str]) -> Body:
    return _json_body(_gemini_chunk("".join(words), len(words), last=True))


def bedrock_converse(words: list[str]) -> Body:
    usage = {"inputTokens": 12, "outputTokens": len(words), "totalTokens": 12 + len(words)}
    message = {"role": "assistant", "content": [{"text": "".join(words)}]}
    return _json_body(
        _json({"output": {"message": message}, "stopReason": "end_turn", "usage": usage, "metrics": {"latencyMs": 42}})
    )


def gemini_sse(elements: list[bytes]) -> Body:
    return _sse([b"data: " + e + b"\r\n\r\n" for e in elements])


def bedrock(words: list[str], done: bool = True) -> Body:
    frames = [bedrock_event("messageStart", {"role": "assistant"})]
    frames += [bedrock_event("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": w}}) for w in words]
    frames.append(bedrock_event("contentBlockStop", {"contentBlockIndex": 0}))
    frames.append(bedrock_event("messageStop", {"stopReason": "end_turn"}))
    usage = {"inputTokens": 12, "outputTokens": len(words), "totalTokens": 12 + len(words)}
    metadata = bedrock_event("metadata", {"usage": usage, "metrics": {"latencyMs": 42}})
    if done:
        frames.append(metadata)
    else:
        frames.append(metadata[: len(metadata) // 2])  # the stream ends inside its last message
    return _sse(frames, b"application/vnd.amazon.eventstream")


# --- the catalogue the upstream draws from ----------------------------------------------------------------------


class Catalogue:
    """Good, broken and huge bodies per kind; the captures are loaded once, the big bodies built once."""

    def __init__(self, fixtures: pathlib.Path | None = SHARED_FIXTURES) -> None:
        self.captures: dict[str, list[Body]] = {kind: [] for kind in KINDS}
        if fixtures is not None and (fixtures / "expected.json").is_file():
            self._load(fixtures)
        self._big = {kind: self._make_big(kind) for kind in KINDS}

    def _load(self, root: pathlib.Path) -> None:
        for row in json.loads((root / "expected.json").read_text()):
            kind = _FIXTURE_FORMATS.get(row["format"])
            path = root / row["file"]
            if kind is None or not path.is_file():
                continue
            data = path.read_bytes()
            if kind == "bedrock":
                self.captures[kind].append(Body(b"application/vnd.amazon.eventstream", data, event_stream_ends(data)))
                continue
            self.captures[kind].append(Body(b"text/event-stream; charset=utf-8", data, sse_frame_ends(data)))
            if kind == "gemini_sse":  # the same chunks as the JSON-array stream
                elements = [line[6:] for line in data.splitlines() if line.startswith(b"data: ")]
                self.captures["gemini_array"].append(_array(elements))

    def good(self, kind: str, rng: random.Random, include_usage: bool) -> Body:
        """A complete, well-formed response: a capture half the time when there are captures."""
        captures = self.captures[kind]
        if captures and rng.random() < 0.5:
            return rng.choice(captures)
        return self.made(kind, _words(rng, rng.randint(3, 24)), include_usage, done=True)

    def unterminated(self, kind: str, rng: random.Random, include_usage: bool) -> Body:
        """Ends cleanly at the HTTP level without the dialect's end: no [DONE], no message_stop, no `]`."""
        return self.made(kind, _words(rng, rng.randint(2, 12)), include_usage, done=False)

    def big(self, kind: str) -> Body:
        return self._big[kind]

    @staticmethod
    def made(kind: str, words: list[str], include_usage: bool, done: bool) -> Body:
        if kind == "openai_chat_stream":
            return openai_chat_stream(words, include_usage, done)
        if kind in JSON_KINDS:
            body = {"openai_chat": openai_chat, "gemini_generate": gemini_generate}.get(kind, bedrock_converse)(words)
            return body if done else Body(body.content_type, body.data[:-7], ())
        if kind == "openai_responses":
            return openai_responses(words, done)
        if kind == "anthropic":
            return anthropic(words, done)
        if kind == "gemini_sse":
            body = gemini_sse(gemini_elements(words))
            # No terminator in Gemini's SSE: the unfinished form is a last event without its blank line.
            return body if done else Body(body.content_type, body.data[:-4], body.frame_ends[:-1])
        if kind == "gemini_array":
            body = _array(gemini_elements(words))
            return body if done else Body(body.content_type, body.data[:-1], body.frame_ends[:-1])
        if kind == "bedrock":
            return bedrock(words, done)
        raise ValueError(kind)

    def _make_big(self, kind: str) -> Body:
        text = "x" * BIG_LINE_BYTES
        words = ["big ", text, " end"]
        return self.made(kind, words, include_usage=True, done=True)


def error_event(kind: str) -> Body:
    """A 200 whose first event is the provider's own error (what `gate_first_chunk` can still fail over)."""
    error = {"error": {"message": "soak: overloaded", "type": "server_error", "code": 503}}
    if kind in ("openai_chat_stream", "openai_responses"):
        return _sse([b"data: " + _json(error) + b"\n\n"])
    if kind == "openai_chat":
        return _json_body(_json(error))
    if kind == "anthropic":
        return _sse([_anthropic_event("error", {"error": {"type": "overloaded_error", "message": "Overloaded"}})])
    google = {"error": {"code": 503, "message": "soak: overloaded", "status": "UNAVAILABLE"}}
    if kind == "gemini_generate":
        return _json_body(_json(google))
    if kind == "bedrock_converse":
        return _json_body(b'{"message":"soak: overloaded"}')
    if kind == "gemini_sse":
        return _sse([b"data: " + _json(google) + b"\r\n\r\n"])
    if kind == "gemini_array":
        return _array([_json(google)])
    headers = {":exception-type": "serviceUnavailableException", ":content-type": "application/json"}
    return _sse(
        [event_message({**headers, ":message-type": "exception"}, b'{"message":"soak"}')],
        b"application/vnd.amazon.eventstream",
    )


def error_status_body(kind: str, status: int) -> bytes:
    if kind == "anthropic":
        return _json({"type": "error", "error": {"type": "overloaded_error", "message": f"soak {status}"}})
    if kind.startswith("gemini"):
        return _json({"error": {"code": status, "message": f"soak {status}", "status": "UNAVAILABLE"}})
    if kind.startswith("bedrock"):
        return _json({"message": f"soak {status}"})
    return _json({"error": {"message": f"soak {status}", "type": "server_error", "param": None, "code": None}})


# Nesting past Python's default recursion limit (1000), balanced: a well-framed element or line, just deep.
DEEP = b"[" * 1200 + b"]" * 1200
# Garbage between frames: what a broken or hostile upstream could send. Each is aimed at a parser's edge: bad
# JSON behind a usage marker, huge numbers, deep nesting, long retry fields, stray CRs, NULs, invalid UTF-8.
_SSE_GARBAGE = (
    b'data: {"usage": {"prompt_tokens": "NaN", \n\n',
    b'data: {"choices":[],"usage":{"prompt_tokens":1e999,"completion_tokens":-1}}\n\n',
    b'data: {"choices":[],"usage":{"prompt_tokens":' + b"9" * 5000 + b"}}\n\n",
    b"data: " + b"[" * 20000 + b"\n\n",
    b'data: {"usage":' + b'{"a":' * 3000 + b"\n\n",
    b"retry: " + b"9" * 6000 + b"\n\n",
    b"\r\r\r\n\n\x00\x00data\n\n",
    b'event: message_delta\ndata: {"type":"message_delta","usage":{"output_tokens":"many"}}\n\n',
    b'event: message_start\ndata: {"type":"message_start","message":{"usage":null}}\n\n',
    b'data: {"usageMetadata": [1, 2, 3]}\r\n\r\n',
    b'data: {"type":"response.completed","response":{"usage":{"input_tokens":{}}}}\n\n',
    b'data: {"usage":"\xff\xfe\xfd"}\n\n',
    b"\xef\xbb\xbfdata: late bom\n\n",
    b"data: [DONE]\n\ndata: after done\n\n",
    b": comment only\n\n",
    # Invalid UTF-8 inside a JSON string a meter decodes, and nesting deeper than Python's recursion limit behind a
    # usage marker: msgspec raises UnicodeDecodeError and RecursionError for these, not DecodeError.
    b'data: {"candidates":[{"finishReason":"ST\xffOP"}],"usageMetadata":{"promptTokenCount":1}}\r\n\r\n',
    b'data: {"type":"message_delta","delta":{"stop_reason":"\xff"},"usage":{"output_tokens":1}}\n\n',
    b'data: {"usageMetadata":' + DEEP + b"}\r\n\r\n",
    b'event: message_delta\ndata: {"type":"message_delta","usage":' + DEEP + b"}\n\n",
)
_ARRAY_GARBAGE = (b",,", b"}{", b'"unterminated', b"[[[[", b"]", b'{"usageMetadata": {"promptTokenCount": "x"}}')
# Whole elements, to follow an element of a Gemini JSON-array stream.
_ELEMENT_GARBAGE = (
    b',\r\n{"candidates":[{"finishReason":"\xff"}]}',
    b',\r\n{"usageMetadata":' + DEEP + b"}",
    b',\r\n{"usageMetadata":{"promptTokenCount":1e999}}',
)
# Put before a JSON body: what the body meters decode first.
_BODY_GARBAGE = (
    b'{"usage":' + DEEP + b"}",
    b'{"usageMetadata":' + DEEP + b"}",
    b'{"usage":{"inputTokens":"\xff"},',
    b'{"candidates":[{"finishReason":"\xff"}],"usageMetadata":{"promptTokenCount":1}}',
)


def garbage(kind: str, rng: random.Random) -> bytes:
    """Bytes to put between two frames of a `kind` stream (or into a JSON body)."""
    roll = rng.random()
    if roll < 0.2:
        return rng.randbytes(rng.randint(1, 300))
    if kind == "bedrock":
        good = bedrock_event("metadata", {"usage": {"inputTokens": 1, "outputTokens": 1, "totalTokens": 2}})
        choice = rng.randrange(4)
        if choice == 0:  # a flipped bit: the message CRC no longer matches
            i = rng.randrange(12, len(good))
            return good[:i] + bytes([good[i] ^ 0x40]) + good[i + 1 :]
        if choice == 1:  # a prelude that announces 4 GiB
            return b"\xff\xff\xff\xff" + rng.randbytes(20)
        if choice == 2:  # a well-framed message whose JSON is broken
            headers = {":event-type": "metadata", ":message-type": "event"}
            return event_message(headers, b'{"usage": {"inputTokens": [' * 50)
        return event_message({":message-type": "exception", ":exception-type": "x"}, rng.randbytes(40))
    if kind == "gemini_array":
        return rng.choice(_ARRAY_GARBAGE + _ELEMENT_GARBAGE * 2)
    if kind in JSON_KINDS:
        return rng.choice(_ARRAY_GARBAGE + _BODY_GARBAGE * 2)
    return rng.choice(_SSE_GARBAGE)
