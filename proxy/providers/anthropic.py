"""The Anthropic Messages dialect: routes, auth, usage from message events and bodies, errors in Anthropic's shape.

Theory of operation
-------------------
A streaming Messages response is SSE (https://docs.anthropic.com/en/docs/build-with-claude/streaming, "Event
types"): one `message_start`, content blocks (`content_block_start` / `_delta` / `_stop`), one or more
`message_delta`, then `message_stop`; `ping` events may come anywhere, and an `error` event (e.g.
`overloaded_error`) may end the stream early. Every event's data is one JSON object whose `type` names it; the
`type` decides here, not the SSE `event:` line, so the same reader serves Anthropic events embedded in other
framings (Bedrock's invoke streams: see `AnthropicUsage`).

Usage starts from `message_start.message.usage`. "The token counts shown in the usage field of the message_delta
event are cumulative" (streaming docs): each field present (and not null) in a `message_delta.usage` replaces
the one held, and output tokens are never added up. Older streams carry only `output_tokens` in the delta; newer
ones repeat input and cache counts, which may differ from message_start's (server tools sample more than once).
With compaction (https://docs.anthropic.com/en/docs/build-with-claude/compaction) the top-level counts cover only
the last sampling iteration; `usage.iterations[]` lists every one and the bill is their sum.

Normalization (see proxy.usage): Anthropic's `input_tokens` EXCLUDES cache reads and writes, so input = input +
cache_read + cache_creation; cached = cache_read; cache_write = cache_creation, of which
`cache_creation.ephemeral_1h_input_tokens` are the one-hour writes (clamped to the writes: a breakdown kept from
message_start can be stale once a delta restates the total); reasoning = `output_tokens_details.thinking_tokens`.
`Usage.raw` is the merged usage object: message_start's fields with the deltas' over them, each field's value
verbatim (for a non-streaming body, the body's usage object verbatim).

Cost of the sidecar: only events holding the byte marker `"usage"` or `message_stop` are decoded, by
module-level msgspec Decoders over view Structs; whole frames without them skip the SSE parser altogether.

Status (see proxy.usage): "reported" when usage was read; "missing" when the stream had none; "unparsed" when
the framing failed or something that may have held usage could not be decoded. That doubt sticks: a later
delta does not settle it, because deltas merge into message_start instead of replacing it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated, Any

import msgspec

from proxy.errors import MethodNotAllowed, ProxyError
from proxy.parsers.sse import MAX_LINE_BYTES, FrameError, SSEParser
from proxy.providers.base import (
    FrameFilter,
    Headers,
    Incoming,
    Outgoing,
    Route,
    StreamMeter,
    TailComment,
    Upstream,
    bearer_token,
    first_sse_event_failed,
    header,
)
from proxy.usage import Usage, UsageStatus

if TYPE_CHECKING:
    from proxy.config import ProviderConfig

API_VERSION = b"2023-06-01"  # https://docs.anthropic.com/en/api/versioning: sent when the client sent none
_USAGE_MARKER = b'"usage"'
_STOP_MARKER = b"message_stop"
_ENDPOINTS = {"/v1/messages": ("messages", True), "/v1/messages/count_tokens": ("count_tokens", False)}
_MODELS_PATH = "/v1/models"
_JSON = [(b"content-type", b"application/json")]
# https://docs.anthropic.com/en/api/errors: HTTP status -> error.type. Other 4xx are invalid requests; other 5xx
# are api_error.
_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "request_too_large",
    429: "rate_limit_error",
    529: "overloaded_error",
}
# msgspec cannot put Raw in a union with None; an empty Raw stands for "field absent".
_ABSENT = msgspec.Raw()
# A negative count is as unreadable as a string of letters: it fails decoding (and marks the usage "unparsed").
_Count = Annotated[int, msgspec.Meta(ge=0)]


class _CacheCreation(msgspec.Struct):
    ephemeral_1h_input_tokens: _Count | None = None


class _OutputDetails(msgspec.Struct):
    thinking_tokens: _Count | None = None


class _Counts(msgspec.Struct):
    """The counts an iteration and the usage object itself share."""

    input_tokens: _Count | None = None
    output_tokens: _Count | None = None
    cache_read_input_tokens: _Count | None = None
    cache_creation_input_tokens: _Count | None = None
    cache_creation: _CacheCreation | None = None


class _UsageView(_Counts):
    output_tokens_details: _OutputDetails | None = None
    iterations: list[_Counts] | None = None


class _EventView(msgspec.Struct):
    type: str = ""
    message: msgspec.Raw = _ABSENT  # message_start
    usage: msgspec.Raw = _ABSENT  # message_delta


class _MessageView(msgspec.Struct):  # message_start's `message`, or a whole non-streaming response
    usage: msgspec.Raw = _ABSENT


# Lax about number types in usage only (`12.0`, `"12"` are still counts), as the OpenAI dialect is.
_decode_usage = msgspec.json.Decoder(_UsageView, strict=False).decode
_decode_fields = msgspec.json.Decoder(dict[str, msgspec.Raw]).decode
_decode_event = msgspec.json.Decoder(_EventView).decode
_decode_message = msgspec.json.Decoder(_MessageView).decode
_encode = msgspec.json.Encoder().encode

# Besides DecodeError (a ValueError), msgspec raises UnicodeDecodeError (also one) on invalid UTF-8 in a string it
# reads, and RecursionError on JSON nested ~1000 deep, even inside a Raw field: none may escape the meter.
DecodeErrors = (ValueError, RecursionError)


def _present(raw: msgspec.Raw) -> bool:
    return bool(raw) and bytes(raw) != b"null"


def normalize(raw: bytes) -> Usage | None:
    """An Anthropic usage object as a `Usage` (iterations summed when present); None when it holds no counts."""
    view = _decode_usage(raw)
    parts = view.iterations or [view]
    if not view.iterations and all(
        n is None
        for n in (view.input_tokens, view.output_tokens, view.cache_read_input_tokens, view.cache_creation_input_tokens)
    ):
        return None
    fresh = sum(p.input_tokens or 0 for p in parts)
    read = sum(p.cache_read_input_tokens or 0 for p in parts)
    write = sum(p.cache_creation_input_tokens or 0 for p in parts)
    # One-hour writes from the iterations when they carry the breakdown, else from the top level.
    breakdowns = [p.cache_creation for p in parts if p.cache_creation is not None]
    if not breakdowns and view.cache_creation is not None:
        breakdowns = [view.cache_creation]
    one_hour = sum(b.ephemeral_1h_input_tokens or 0 for b in breakdowns)
    details = view.output_tokens_details
    return Usage(
        input_tokens=fresh + read + write,
        cached_tokens=read,
        cache_write_tokens=write,
        cache_write_1h_tokens=min(one_hour, write),
        output_tokens=sum(p.output_tokens or 0 for p in parts),
        reasoning_tokens=(details.thinking_tokens or 0) if details is not None else 0,
        raw=raw.decode("utf-8", "replace"),
    )


class AnthropicUsage:
    """Accumulates usage over one message's events, each given as its JSON bytes. Never raises.

    Shared with the Bedrock dialect, which finds these same events inside AWS event-stream frames.
    """

    def __init__(self) -> None:
        self._fields: dict[str, msgspec.Raw] = {}
        self._usage: Usage | None = None
        self._finished = False
        self._doubt = False

    @property
    def usage(self) -> Usage | None:
        """The usage merged so far (a lower bound while the message runs), or None before any."""
        return self._usage

    @property
    def finished(self) -> bool:
        """`message_stop` was seen."""
        return self._finished

    @property
    def doubt(self) -> bool:
        """Something that may have held usage could not be decoded: `usage` may be short."""
        return self._doubt

    def observe(self, data: bytes) -> None:
        if _USAGE_MARKER not in data and _STOP_MARKER not in data:
            return
        try:
            event = _decode_event(data)
            if event.type == "message_stop":
                self._finished = True
                return
            if event.type == "message_start":
                raw = _decode_message(event.message).usage if _present(event.message) else _ABSENT
                fields: dict[str, msgspec.Raw] = {}  # a new message starts from its own usage
            elif event.type == "message_delta":
                raw = event.usage
                fields = dict(self._fields)
            else:
                return
            if not _present(raw):
                return
            fields.update((k, v) for k, v in _decode_fields(raw).items() if bytes(v) != b"null")
            usage = normalize(_encode(fields))
        except DecodeErrors:
            self._doubt = True
            return
        self._fields = fields
        if usage is not None:
            self._usage = usage


class AnthropicStreamMeter:
    """Reads an Anthropic Messages SSE stream for usage. Never raises; a failure marks the status "unparsed"."""

    def __init__(self) -> None:
        self.parser = SSEParser()
        self.events = AnthropicUsage()
        self.usage: Usage | None = None
        self.finished = False
        self._spent = False  # closed, or the parser failed: nothing more is read
        self._frame_error = False

    @property
    def status(self) -> UsageStatus:
        if self._frame_error or self.events.doubt:
            return "unparsed"
        return "reported" if self.usage is not None else "missing"

    def feed(self, data: bytes) -> None:
        if self._spent:
            return
        # The fast path, as in the OpenAI meter: whole frames (parser at a boundary, data ending in a blank line,
        # short enough that the parser could not have refused it) with neither marker cannot matter.
        if (
            data.endswith(b"\n\n")
            and len(data) <= MAX_LINE_BYTES
            and self.parser.at_boundary
            and _USAGE_MARKER not in data
            and _STOP_MARKER not in data
        ):
            self.parser.skip(len(data))
            return
        try:
            events = self.parser.feed(data)
        except FrameError:
            self._spent = self._frame_error = True
            return
        self._observe([e.data for e in events])

    def close(self) -> None:
        if self._spent:
            return
        self._spent = True
        try:
            events = self.parser.close()
        except FrameError:  # the last read completed events, then broke a limit
            self._frame_error = True
            return
        self._observe([e.data for e in events])

    def _observe(self, datas: list[bytes]) -> None:
        for data in datas:
            self.events.observe(data)
        self.usage = self.events.usage
        self.finished = self.events.finished


def usage_from_body(body: bytes) -> Usage | None:
    """Usage of a non-streaming Messages response (its top-level `usage`); None when it has none. Raises
    msgspec.DecodeError on a body that cannot be read (once the usage marker says there may be usage in it)."""
    if _USAGE_MARKER not in body:
        return None
    try:
        view = _decode_message(body)  # a non-streaming response is the Message message_start carries
        return normalize(bytes(view.usage)) if _present(view.usage) else None
    except RecursionError:
        raise msgspec.DecodeError("JSON nested too deeply") from None


class _ErrorDetail(msgspec.Struct):
    type: str
    message: str


class _Error(msgspec.Struct, tag_field="type", tag="error"):
    error: _ErrorDetail


class _Model(msgspec.Struct, tag_field="type", tag="model"):
    id: str
    display_name: str
    created_at: str = "1970-01-01T00:00:00Z"


class _ModelList(msgspec.Struct):
    data: list[_Model]
    has_more: bool
    first_id: str | None
    last_id: str | None


def error_body(exc: ProxyError) -> bytes:
    """`{"type":"error","error":{"type","message"}}`, the shape the Anthropic SDKs parse."""
    error_type = _ERROR_TYPES.get(exc.status) or ("api_error" if exc.status >= 500 else "invalid_request_error")
    return _encode(_Error(_ErrorDetail(error_type, exc.message)))


class AnthropicDialect:
    name = "anthropic"

    def match(self, incoming: Incoming) -> Route | None:
        if incoming.path == _MODELS_PATH:
            # Shared with the OpenAI dialect: it is Anthropic's only when the client speaks Anthropic.
            if header(incoming.headers, b"anthropic-version") is None:
                return None
            if incoming.method != "GET":
                raise MethodNotAllowed(f"{incoming.method} is not allowed on {incoming.path}; use GET")
            return Route(kind="models", upstream_path="", local=True)
        endpoint = _ENDPOINTS.get(incoming.path)
        if endpoint is None:
            return None
        if incoming.method != "POST":
            raise MethodNotAllowed(f"{incoming.method} is not allowed on {incoming.path}; use POST")
        kind, billable = endpoint
        query = "?" + incoming.query.decode("latin-1") if incoming.query else ""
        return Route(kind=kind, upstream_path=incoming.path + query, billable=billable)

    def client_key(self, incoming: Incoming) -> bytes | None:
        key = (header(incoming.headers, b"x-api-key") or b"").strip()
        if key:
            return key
        return bearer_token(incoming.headers)

    def request_fields(self, route: Route, request: dict[str, Any], provider: ProviderConfig) -> dict[str, Any] | None:
        return None  # usage is always in the stream: nothing to ask for

    def attach_credentials(self, outgoing: Outgoing, upstream: Upstream) -> None:
        if upstream.api_key:
            outgoing.headers.append((b"x-api-key", upstream.api_key.encode()))
        if header(outgoing.headers, b"anthropic-version") is None:
            outgoing.headers.append((b"anthropic-version", API_VERSION))

    def is_stream(self, route: Route, content_type: str) -> bool:
        return content_type.strip().lower().startswith("text/event-stream")

    def stream_meter(self, route: Route) -> StreamMeter:
        return AnthropicStreamMeter()

    def body_usage(self, route: Route, body: bytes, headers: Headers) -> Usage | None:
        return usage_from_body(body) if route.billable else None

    def frame_filter(
        self, route: Route, meter: StreamMeter, strip_usage_frame: bool, comment: Callable[[], bytes] | None
    ) -> FrameFilter | None:
        return TailComment(meter, comment) if comment is not None else None

    def error_response(self, exc: ProxyError) -> tuple[int, Headers, bytes]:
        return exc.status, list(_JSON), error_body(exc)

    def stream_error(self, route: Route, exc: ProxyError, after: bytes = b"") -> bytes:
        return b"event: error\ndata: " + error_body(exc) + b"\n\n"

    def models_body(self, models: list[tuple[str, str]]) -> bytes:
        data = [_Model(id=model, display_name=model) for model, _owner in models]
        first, last = (data[0].id, data[-1].id) if data else (None, None)
        return _encode(_ModelList(data=data, has_more=False, first_id=first, last_id=last))

    def first_chunk_failed(self, route: Route, data: bytes) -> bool:
        return first_sse_event_failed(data)

    def keepalive(self, route: Route) -> bytes | None:
        return b": ping\n\n"  # an SSE comment: the anthropic SDK skips it


DIALECT = AnthropicDialect()
