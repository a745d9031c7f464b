"""The OpenAI dialect: usage from chat/completions chunks, Responses events and plain JSON bodies.

Theory of operation
-------------------
OpenAI-style streams are SSE; each event's data is one JSON object (or the `[DONE]` sentinel). Usage arrives:

* chat / legacy completions: in a `usage` object, normally on a final chunk with `choices: []` (only when the
  request set `stream_options.include_usage`), but some compatible upstreams put it on the finish chunk with
  non-empty choices (DeepSeek, Groq, Mistral, Z.ai), Groq may report it only in `x_groq.usage`, and an error
  chunk may itself carry usage (OpenRouter). `usage: null` on ordinary chunks means "not yet". The LAST usage
  seen wins.
* Responses API: in `response.usage` of the terminal event — `response.completed`, `response.failed` or
  `response.incomplete` (null when there is nothing to bill).
* non-streaming: a top-level `usage` in the JSON body (embeddings report `prompt_tokens` only).

`choices: []` alone does not mean "usage chunk": Azure's first chunk has empty choices and
`prompt_filter_results`. A chunk is the *usage-only chunk* that include_usage adds when its choices are empty,
its usage is an object, and it carries no error; that is the one frame `OpenAIFrameFilter` may remove.

Cost of the sidecar: every event is checked for the byte marker `"usage"` before any JSON is decoded, and the
decoders are module-level msgspec Decoders over view Structs holding only the usage fields.

Normalization (see proxy.usage): OpenAI's prompt/input tokens already include cached tokens; output tokens
include reasoning tokens. OpenAI itself reports no cache writes; the compatible upstreams that do put them in
`prompt_tokens_details.cache_write_tokens` (OpenRouter) or `cache_creation_input_tokens` (LiteLLM-style
gateways), both already counted in the prompt tokens like cache reads.

Status (see proxy.usage): "reported" when the last usage object seen was read; "unparsed" when something that
may have held usage could not be read after it (a frame past the parser's limits, an undecodable usage
object), in which case `usage` still holds the last one that was read, as a lower bound; "missing" otherwise.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import msgspec

from proxy.errors import MethodNotAllowed, ProxyError
from proxy.parsers.sse import MAX_LINE_BYTES, FrameError, SSEEvent, SSEParser, data_frame
from proxy.providers.base import (
    FrameFilter,
    Headers,
    Incoming,
    Outgoing,
    Route,
    StreamMeter,
    Upstream,
    bearer_token,
    first_sse_event_failed,
)
from proxy.usage import Usage, UsageStatus

if TYPE_CHECKING:
    from proxy.config import ProviderConfig

_USAGE_MARKER = b'"usage"'
# The marker, less the null ones, in one search. A `find` and a check per null marker (OpenAI puts one in every
# chunk) cost twice as much on a read of a hundred of OpenAI's own chunks (28 against 13 µs), and `find` was no
# faster on chunks without one (8 against 6 µs).
_search_usage = re.compile(rb'"usage"(?!:null|: null)').search
# msgspec cannot put Raw in a union with None; an empty Raw stands for "field absent".
_ABSENT = msgspec.Raw()
_DONE = b"[DONE]"
_TERMINAL_RESPONSE_EVENTS = frozenset({"response.completed", "response.failed", "response.incomplete"})


class _Details(msgspec.Struct):
    cached_tokens: int | None = None
    reasoning_tokens: int | None = None
    cache_write_tokens: int | None = None  # OpenRouter
    cache_creation_input_tokens: int | None = None


class _UsageView(msgspec.Struct):
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None
    prompt_tokens_details: _Details | None = None
    completion_tokens_details: _Details | None = None
    input_tokens_details: _Details | None = None
    output_tokens_details: _Details | None = None
    prompt_cache_hit_tokens: int | None = None  # DeepSeek
    cache_creation_input_tokens: int | None = None  # LiteLLM-style gateways in front of Anthropic


class _XGroq(msgspec.Struct):
    usage: msgspec.Raw = _ABSENT


class _ChunkView(msgspec.Struct):
    choices: list[msgspec.Raw] | None = None
    usage: msgspec.Raw = _ABSENT
    x_groq: _XGroq | None = None
    error: msgspec.Raw = _ABSENT


class _ResponseView(msgspec.Struct):
    usage: msgspec.Raw = _ABSENT


class _ResponseEventView(msgspec.Struct):
    type: str = ""
    response: _ResponseView | None = None


class _BodyView(msgspec.Struct):
    usage: msgspec.Raw = _ABSENT


# Lax about number types in the usage object only: some compatible servers write token counts as `12.0` or
# `"12"`; a count is still a count. A fractional or non-numeric count still fails (and marks "unparsed").
_decode_usage = msgspec.json.Decoder(_UsageView, strict=False).decode
_decode_chunk = msgspec.json.Decoder(_ChunkView).decode
_decode_response_event = msgspec.json.Decoder(_ResponseEventView).decode
_decode_body = msgspec.json.Decoder(_BodyView).decode

# What reading a usage object can raise: msgspec's errors (ValueErrors), a UnicodeDecodeError (also a ValueError)
# on invalid UTF-8 in a string it reads, and RecursionError on JSON nested deeper than the decoder's stack.
DecodeErrors = (ValueError, RecursionError)


def _usage_marker(data: bytes, pos: int = 0) -> int:
    """Where the first `"usage"` in `data` at or after `pos` is that may hold usage: not `"usage":null` (or
    `": null"`), which OpenAI (with include_usage), Azure and the legacy completions endpoint put in every chunk. -1
    when there is none. A chat or completions frame without one holds no usage whatever else it holds, so it is
    neither decoded nor, when it cannot be, counted as a doubt: the same rule whether the frame is passed over or
    parsed."""
    found = _search_usage(data, pos)
    return found.start() if found is not None else -1


def _done_frame_end(data: bytes, at: int) -> int:
    """Where the frame after the one holding the `[DONE]` at `at` starts, when that frame is one `data: [DONE]`
    line (`data_frame`); -1 otherwise."""
    start = data.rfind(b"\n\n", 0, at) + 2
    frame = data_frame(data, start if start > 1 else 0)
    if frame is None or frame[1] - frame[0] != len(_DONE):
        return -1
    return frame[1] + 2


def _present(raw: msgspec.Raw) -> bool:
    """The field was there and was not null."""
    return bool(raw) and bytes(raw) != b"null"


def normalize(raw: msgspec.Raw) -> Usage | None:
    """An OpenAI-style usage object as a `Usage`; None when it holds no token counts at all."""
    view = _decode_usage(raw)
    prompt = view.prompt_tokens if view.prompt_tokens is not None else view.input_tokens
    completion = view.completion_tokens if view.completion_tokens is not None else view.output_tokens
    if prompt is None and completion is None:
        return None
    details_in = view.prompt_tokens_details or view.input_tokens_details
    cached = details_in.cached_tokens if details_in is not None else None
    if cached is None:
        cached = view.prompt_cache_hit_tokens
    cache_write = view.cache_creation_input_tokens
    if cache_write is None and details_in is not None:
        cache_write = details_in.cache_write_tokens
        if cache_write is None:
            cache_write = details_in.cache_creation_input_tokens
    details_out = view.completion_tokens_details or view.output_tokens_details
    reasoning = details_out.reasoning_tokens if details_out is not None else None
    return Usage(
        input_tokens=prompt or 0,
        cached_tokens=cached or 0,
        cache_write_tokens=cache_write or 0,
        output_tokens=completion or 0,
        reasoning_tokens=reasoning or 0,
        raw=bytes(raw).decode("utf-8", "replace"),
    )


def usage_from_body(endpoint: str, body: bytes) -> Usage | None:
    """Usage in a non-streaming JSON body (chat, completions, responses, embeddings all put it at the top level);
    None when there is none. Raises msgspec.DecodeError (ValidationError is a subclass) on a malformed body, so
    the caller can tell "unparsed" from "missing"; `body_usage` is the same, never raising."""
    if _USAGE_MARKER not in body:
        return None
    try:
        view = _decode_body(body)
        return normalize(view.usage) if _present(view.usage) else None
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None


def body_usage(endpoint: str, body: bytes) -> tuple[Usage | None, UsageStatus]:
    """`usage_from_body` with the outcome as a status instead of an exception. Never raises."""
    try:
        usage = usage_from_body(endpoint, body)
    except DecodeErrors:
        return None, "unparsed"
    return usage, ("reported" if usage is not None else "missing")


class OpenAIStreamMeter:
    """Reads an OpenAI-style SSE stream for usage. Never raises; a failure marks the status "unparsed".

    Most reads never reach the SSE parser: `scan` passes over whole frames without a marker and reads the frames
    with one where they lie. The parser is made at the first read `scan` cannot take whole, and is told how many
    bytes were passed over before it, so its offsets count from the stream's first byte all the same."""

    def __init__(self, endpoint: str) -> None:
        self._responses = endpoint == "responses"
        self._parser: SSEParser | None = None
        self._skipped = 0  # bytes passed over while there was no parser
        self.usage: Usage | None = None
        # The stream said it is complete ([DONE], or a terminal Responses event): a client that leaves after
        # this point left a finished stream (the OpenAI SDK closes the connection as soon as it reads [DONE]).
        self.finished = False
        self._spent = False  # the parser failed: nothing more is read
        # Something that may have held usage could not be read, and no usage has been read since. A decode
        # failure does not stop the meter: a later (last) usage object still settles the count.
        self._doubt = False

    @property
    def status(self) -> UsageStatus:
        if self._doubt:
            return "unparsed"
        return "reported" if self.usage is not None else "missing"

    @property
    def at_boundary(self) -> bool:
        """Nothing is pending: the next byte fed starts a new frame, and `scan` may read it."""
        parser = self._parser
        return parser is None or parser.at_boundary

    @property
    def boundary(self) -> int:
        """The stream offset just after the last blank line seen (`SSEParser.boundary`)."""
        parser = self._parser
        return self._skipped if parser is None else parser.boundary

    def skip(self, size: int) -> None:
        """Account for `size` bytes `scan` has read (`SSEParser.skip`)."""
        parser = self._parser
        if parser is None:
            self._skipped += size
        else:
            parser.skip(size)

    def parse(self, data: bytes) -> list[SSEEvent]:
        """The events `data` completes, by the parser (made now if this is the first read it needs). Raises
        FrameError; the caller then calls `fail`."""
        parser = self._parser
        if parser is None:
            parser = self._parser = SSEParser()
            if self._skipped:
                parser.skip(self._skipped)
        return parser.feed(data)

    def end_parse(self) -> list[SSEEvent]:
        """The parser's `close`: the events the end of the stream completes."""
        return self._parser.close() if self._parser is not None else []

    def scan(self, data: bytes, until_done: bool = False, cut: bool = False) -> tuple[int, list[int] | None]:
        """The fast path, for a read that starts at a frame boundary (`at_boundary`): whole frames without a marker
        (`"usage"`, for chat and completions as `_usage_marker` finds it; [DONE], see below) are passed over
        unparsed, each frame with one that is one `data:` line (`data_frame`) is read where it lies, and so on to
        the end of the read's last whole frame. It stops early at a frame of any other shape, at more than
        `MAX_LINE_BYTES` without a marker (such bytes might hold a line the parser would refuse), and with
        `until_done` before a frame that may be [DONE]. Each search starts where the last frame read ended.

        [DONE] only sets `finished`, for good, and it is a stream's last frame: the read's last one is looked for
        from the end, where it is found at once. When that is a [DONE] frame, the frames before it are searched for
        usage only, and `finished` is set once the frames read reach it (searching the whole read for it too was
        two fifths of the frame filter's time on a read of a hundred chunks). Otherwise, and with `until_done`
        (the inline comment goes just before the first [DONE]), a frame that may be [DONE] is a frame with a
        marker.

        Returns how many leading bytes were read (whole frames: the caller `skip`s them, and the parser takes the
        rest), and with `cut` the start and end offsets of the usage-only chunks' frames among them, in pairs
        (None when there are none). Nothing in the frames passed over can matter to the meter or the filter: they
        are accounted for as the parser would, by C-speed finds instead of a parse."""
        size = len(data)
        done_end = -1  # the end of the read's last frame, when that is a [DONE] frame: no other need be found
        find_done = until_done  # whether a frame that may be [DONE] is a frame with a marker
        if not until_done and not self.finished:
            last = data.rfind(_DONE)
            if last >= 0:
                done_end = _done_frame_end(data, last)
                find_done = done_end < 0
        pos = 0
        cuts: list[int] | None = None
        responses = self._responses
        while pos < size:
            marker = data.find(_USAGE_MARKER, pos) if responses else _usage_marker(data, pos)
            done = data.find(_DONE, pos, marker if marker >= 0 else size) if find_done else -1
            if marker < 0 and done < 0:
                end = size if data.endswith(b"\n\n") else data.rfind(b"\n\n", pos) + 2
                if pos + 2 <= end <= pos + MAX_LINE_BYTES:
                    pos = end
                break
            first = done if done >= 0 else marker
            start = data.rfind(b"\n\n", pos, first) + 2  # a frame never holds a blank line: its own starts after it
            if start == 1:
                start = pos  # the marker is in the first frame
            if start - pos > MAX_LINE_BYTES:
                break
            if until_done and first == done:
                pos = start
                break
            frame = data_frame(data, start)
            if frame is None:
                pos = start
                break
            begin, end = frame
            pos = end + 2
            # The frame holds the marker found: [DONE] when that is all it holds, else a frame to decode.
            if first == done and end - begin == len(_DONE):
                self.finished = True
            else:
                frame_data = data[begin:end]
                usage_only = self._observe_marked(frame_data) if first != done else self.observe_data(frame_data)
                if usage_only and cut:
                    if cuts is None:
                        cuts = []
                    cuts += (start, pos)
        if done_end > 0 and (pos >= done_end or self._done_within(data[:pos])):
            self.finished = True
        return pos, cuts

    def _done_within(self, frames: bytes) -> bool:
        """Whether whole frames `scan` passed over without looking for [DONE] hold one: rare (it stopped before the
        read's last frame, a [DONE] one, which the parser reads next), so they are parsed again, by a parser of
        their own."""
        parser = SSEParser()
        if self._parser is not None or self._skipped:
            parser.skip(0)  # not the stream's first byte: a BOM here is no BOM
        try:
            return any(event.data == _DONE for event in parser.feed(frames))
        except FrameError:  # pragma: no cover - `scan` passes over and reads only frames the parser takes
            return False

    def feed(self, data: bytes) -> None:
        if self._spent:
            return
        if self.at_boundary:
            pos, _ = self.scan(data)
            if pos:
                self.skip(pos)
                if pos == len(data):
                    return
                data = data[pos:]
        try:
            events = self.parse(data)
        except FrameError:
            self.fail()
            return
        for event in events:
            self.observe(event)

    def close(self) -> None:
        if self._spent:
            return
        self._spent = True
        try:
            events = self.end_parse()
        except FrameError:  # the last read completed events, then broke a limit
            self._doubt = True
            return
        for event in events:
            self.observe(event)

    def fail(self) -> None:
        """The stream can no longer be parsed (FrameError): stop reading, and mark the usage "unparsed"."""
        self._spent = True
        self._doubt = True

    def observe(self, event: SSEEvent) -> bool:
        """Take the usage from one event, if it has some. True when it is the usage-only chunk."""
        return self.observe_data(event.data)

    def observe_data(self, data: bytes) -> bool:
        """`observe` for an event of this data (the meter reads nothing else of an event)."""
        if (_USAGE_MARKER not in data) if self._responses else (_usage_marker(data) < 0):
            if data == _DONE:
                self.finished = True
            return False
        return self._observe_marked(data)

    def _observe_marked(self, data: bytes) -> bool:
        """`observe_data` for data that holds a usage marker."""
        try:
            if self._responses:
                self._observe_response_event(data)
                return False
            return self._observe_chunk(data)
        except DecodeErrors:
            self._doubt = True
            return False

    def _observe_chunk(self, data: bytes) -> bool:
        chunk = _decode_chunk(data)
        top_level = _present(chunk.usage)
        if top_level:
            raw = chunk.usage
        elif chunk.x_groq is not None and _present(chunk.x_groq.usage):
            raw = chunk.x_groq.usage
        else:
            return False
        usage = normalize(raw)
        if usage is not None:
            self.usage = usage
            self._doubt = False
        return top_level and chunk.choices == [] and not _present(chunk.error)

    def _observe_response_event(self, data: bytes) -> None:
        event = _decode_response_event(data)
        if event.type in _TERMINAL_RESPONSE_EVENTS:
            self.finished = True
        if event.type in _TERMINAL_RESPONSE_EVENTS and event.response is not None and _present(event.response.usage):
            usage = normalize(event.response.usage)
            if usage is not None:
                self.usage = usage
                self._doubt = False


class OpenAIFrameFilter:
    """Forwards an SSE stream frame by frame, removing the usage-only chunk and/or inserting a comment line.

    Used only when the proxy changed what the upstream sends (include_usage injected on the client's behalf)
    or the client asked for inline usage. Output equals input except: with `strip_usage_chunk`, the bytes of
    the usage-only chunk's frame are left out; with `make_comment`, its line goes just before the `[DONE]`
    frame, or at the end of a stream that has none. Bytes of an unfinished frame wait for the rest of it (an
    SSE client cannot act on part of a frame); everything up to the last frame boundary is released at once.
    The meter reads the same bytes: a read from a frame boundary goes through the meter's `scan` (the usage-only
    frame cut out by slicing), and what `scan` leaves to the parser is released from the parser's events. After
    a FrameError the filter passes everything through unchanged, and the comment goes at the end.
    """

    def __init__(
        self,
        meter: OpenAIStreamMeter,
        strip_usage_chunk: bool,
        make_comment: Callable[[], bytes] | None = None,
    ) -> None:
        self.meter = meter
        self._strip = strip_usage_chunk
        self._make_comment = make_comment
        self._pending = bytearray()
        self._base = 0  # absolute stream offset of self._pending[0]
        self._passthrough = False
        self._last = b"\n"  # the last byte forwarded after a FrameError (a line end before any)
        self._inserted = False

    def feed(self, data: bytes) -> bytes:
        if self._passthrough:
            if data:
                self._last = data[-1:]
            return data
        meter = self.meter
        if self._pending or not meter.at_boundary:
            return self._feed(data)
        # The comment goes just before [DONE]: until it is in, the parser's way reads a frame that may be one.
        pos, cuts = meter.scan(data, self._make_comment is not None and not self._inserted, self._strip)
        if pos:
            meter.skip(pos)
            self._base += pos
        if cuts is None:
            if pos == len(data):
                return data
            if not pos:
                return self._feed(data)
            return b"".join((memoryview(data)[:pos], self._feed(data[pos:])))
        view = memoryview(data)
        out: list[bytes | memoryview] = [view[: cuts[0]]]
        for i in range(2, len(cuts), 2):  # more than one usage-only chunk: not from OpenAI, but kept to the rule
            out.append(view[cuts[i - 1] : cuts[i]])
        out.append(view[cuts[-1] : pos])
        if pos < len(data):
            out.append(self._feed(data[pos:]))
        return b"".join(out)

    def _feed(self, data: bytes) -> bytes:
        self._pending += data
        try:
            events = self.meter.parse(data)
        except FrameError:
            return self._give_up()
        return self._release(events, self.meter.boundary)

    def close(self) -> bytes:
        if self._passthrough:
            out = b""
        else:
            try:
                events = self.meter.end_parse()
            except FrameError:
                out = self._give_up()
            else:
                out = self._release(events, self._base + len(self._pending))
        if self._make_comment is not None and not self._inserted:
            self._inserted = True
            if not (out or self._last).endswith((b"\n", b"\r")):
                out += b"\n"  # the stream ended inside a line: the comment still starts a line of its own
            out += self._make_comment()
        return out

    def _give_up(self) -> bytes:
        """A FrameError: everything from here on is forwarded as it comes, and the comment goes at the end."""
        self._passthrough = True
        self.meter.fail()
        out = bytes(self._pending)
        self._pending.clear()
        if out:
            self._last = out[-1:]
        return out

    def _release(self, events: list[SSEEvent], upto: int) -> bytes:
        if not events and upto == self._base:
            return b""
        out = bytearray()
        cursor = self._base
        base = self._base
        pending = self._pending
        for event in events:
            usage_only = self.meter.observe(event)
            if self._make_comment is not None and not self._inserted and event.data == _DONE:
                out += pending[cursor - base : event.start - base]
                cursor = event.start
                self._inserted = True
                out += self._make_comment()
            if usage_only and self._strip:
                out += pending[cursor - base : event.start - base]
                cursor = event.end
        upto = max(upto, cursor)
        out += pending[cursor - base : upto - base]
        del pending[: upto - base]
        self._base = upto
        return bytes(out)


# --- the dialect: what forward.py asks of OpenAI and the OpenAI-compatible family --------------------------------

# path -> endpoint kind. The provider's base_url ends in its own API root (`https://api.openai.com/v1`,
# `https://api.groq.com/openai/v1`, ...), so the path below /v1 is what is appended to it.
_ENDPOINTS = {
    "/v1/chat/completions": "chat",
    "/v1/completions": "completions",
    "/v1/responses": "responses",
    "/v1/embeddings": "embeddings",
}
_MODELS_PATH = "/v1/models"
_INCLUDE_USAGE_KINDS = frozenset({"chat", "completions"})
_JSON = [(b"content-type", b"application/json")]


class _ErrorDetail(msgspec.Struct):
    message: str
    type: str
    param: str | None
    code: str | None


class _Error(msgspec.Struct):
    error: _ErrorDetail


class _Model(msgspec.Struct):
    id: str
    owned_by: str
    object: str = "model"
    created: int = 0


class _ModelList(msgspec.Struct):
    data: list[_Model]
    object: str = "list"


_encode = msgspec.json.Encoder().encode


def error_body(exc: ProxyError) -> bytes:
    """`{"error": {"message", "type", "param", "code"}}`, the shape the OpenAI SDKs parse."""
    return _encode(_Error(_ErrorDetail(exc.message, exc.error_type, None, exc.code)))


class OpenAIDialect:
    name = "openai"

    def match(self, incoming: Incoming) -> Route | None:
        kind = _ENDPOINTS.get(incoming.path)
        if kind is None:
            if incoming.path != _MODELS_PATH:
                return None
            if incoming.method != "GET":
                raise MethodNotAllowed(f"{incoming.method} is not allowed on {incoming.path}")
            return Route(kind="models", upstream_path="", local=True)
        if incoming.method != "POST":
            raise MethodNotAllowed(f"{incoming.method} is not allowed on {incoming.path}; use POST")
        query = incoming.query
        return Route(kind=kind, upstream_path=incoming.path[3:] + ("?" + query.decode("latin-1") if query else ""))

    def client_key(self, incoming: Incoming) -> bytes | None:
        token = bearer_token(incoming.headers)
        if token:
            return token
        for name, value in incoming.headers:
            if name == b"x-api-key":
                return value.strip()
        return None

    def request_fields(self, route: Route, request: dict[str, Any], provider: ProviderConfig) -> dict[str, Any] | None:
        """`stream_options` with `include_usage` merged in, for a streaming chat/completions request that did not ask
        for it (the usage-only chunk that causes is then removed from the client's stream)."""
        if route.kind not in _INCLUDE_USAGE_KINDS or request.get("stream") is not True or not provider.stream_options:
            return None
        stream_options = request.get("stream_options")
        if not isinstance(stream_options, dict):
            return {"stream_options": {"include_usage": True}}
        if stream_options.get("include_usage") is True:
            return None
        return {"stream_options": {**stream_options, "include_usage": True}}

    def attach_credentials(self, outgoing: Outgoing, upstream: Upstream) -> None:
        if upstream.api_key:
            outgoing.headers.append((b"authorization", b"Bearer " + upstream.api_key.encode()))

    def is_stream(self, route: Route, content_type: str) -> bool:
        return content_type.startswith("text/event-stream")

    def stream_meter(self, route: Route) -> StreamMeter:
        return OpenAIStreamMeter(route.kind)

    def body_usage(self, route: Route, body: bytes, headers: Headers) -> Usage | None:
        return usage_from_body(route.kind, body)

    def frame_filter(
        self, route: Route, meter: StreamMeter, strip_usage_frame: bool, comment: Callable[[], bytes] | None
    ) -> FrameFilter | None:
        assert isinstance(meter, OpenAIStreamMeter)
        return OpenAIFrameFilter(meter, strip_usage_chunk=strip_usage_frame, make_comment=comment)

    def error_response(self, exc: ProxyError) -> tuple[int, Headers, bytes]:
        return exc.status, list(_JSON), error_body(exc)

    def stream_error(self, route: Route, exc: ProxyError, after: bytes = b"") -> bytes:
        """Chat and completions: an error chunk (the SDKs raise on it), then `[DONE]` so the stream still ends
        as one should. Responses: the API's own `error` event and a `response.failed` one, which the SDK's
        stream yields (it does not raise on them)."""
        if route.kind == "responses":
            error = {"type": "error", "code": exc.code, "message": exc.message, "param": None, "sequence_number": 0}
            failed = {
                "type": "response.failed",
                "sequence_number": 1,
                "response": {
                    "id": "resp_teeproxy_error",
                    "object": "response",
                    "created_at": 0,
                    "status": "failed",
                    "error": {"code": "server_error", "message": exc.message},
                    "model": "",
                    "output": [],
                    "parallel_tool_calls": False,
                    "tool_choice": "auto",
                    "tools": [],
                    "usage": None,
                },
            }
            return (
                b"event: error\ndata: " + _encode(error) + b"\n\n"
                b"event: response.failed\ndata: " + _encode(failed) + b"\n\n"
            )
        return b"data: " + error_body(exc) + b"\n\ndata: [DONE]\n\n"

    def models_body(self, models: list[tuple[str, str]]) -> bytes:
        return _encode(_ModelList(data=[_Model(id=model, owned_by=owner) for model, owner in models]))

    def first_chunk_failed(self, route: Route, data: bytes) -> bool:
        return first_sse_event_failed(data)

    def keepalive(self, route: Route) -> bytes | None:
        return b": ping\n\n"  # an SSE comment: the openai SDKs and EventSource skip it


DIALECT = OpenAIDialect()
