"""What every dialect provides, and the small types the proxy and the dialects exchange.

`forward.py` runs the same phases for every dialect and asks the dialect at each step; it never branches on
which dialect it holds. A dialect is a module in `proxy/providers/` with one object satisfying `Dialect`,
registered in `proxy/providers/__init__.py`.

Everything here is sans-I/O: no asyncio, httpx, logging or clocks. A dialect turns bytes and headers into
routes, requests, usage and error bytes; the proxy does the I/O.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import msgspec

from proxy.parsers.sse import FrameError, SSEParser
from proxy.usage import Usage, UsageStatus

_decode_any = msgspec.json.Decoder().decode

if TYPE_CHECKING:
    from proxy.config import ProviderConfig
    from proxy.errors import ProxyError

Headers = list[tuple[bytes, bytes]]


@dataclass(frozen=True, slots=True)
class Incoming:
    """The parts of a client request a dialect may look at to recognize it (ASGI scope, lower-cased names)."""

    method: str
    path: str  # percent-decoded, as ASGI gives it
    raw_path: bytes  # as sent: Bedrock model ids hold `/` and `:` percent-encoded in one path segment
    query: bytes
    headers: Headers


@dataclass(frozen=True, slots=True)
class Route:
    """One of a dialect's endpoints, as recognized from a request's method and path.

    `kind` is the dialect's own name for the endpoint ("chat", "messages", "converse_stream", ...): the meter and
    the error renderer take it. `upstream_path` is appended to the provider's `base_url` (with the query string
    the upstream needs, and never the client's key). `model` is set when the path names the model (Gemini,
    Bedrock); otherwise it comes from the body's `model` field. `stream` is set when the path says whether the
    response streams; otherwise the body's `stream: true` decides. `local` endpoints are answered by the proxy
    itself (model lists) and never go upstream. `billable` is False for endpoints that cost nothing (token
    counting), whose records carry zero usage.
    """

    kind: str
    upstream_path: str
    model: str | None = None
    stream: bool | None = None
    local: bool = False
    billable: bool = True


@dataclass(slots=True)
class Outgoing:
    """The request as it will go upstream. A dialect's `attach_credentials` adds the provider's auth to it."""

    method: str
    url: str
    headers: Headers
    body: bytes


@dataclass(frozen=True, slots=True)
class Upstream:
    """A provider chosen for a request, with its base URL and (never logged) key from the environment."""

    provider: ProviderConfig
    base_url: str
    api_key: str | None = field(repr=False)


class StreamMeter(Protocol):
    """Reads a streaming response body on the side. Sans-I/O and total: it never raises (a framing or decode
    failure sets `status` to "unparsed" and keeps the last usage read as a lower bound)."""

    usage: Usage | None
    # The stream said it is complete (OpenAI's [DONE], Anthropic's message_stop, ...): a client that leaves after
    # this point left a finished stream.
    finished: bool

    @property
    def status(self) -> UsageStatus: ...

    def feed(self, data: bytes) -> None: ...

    def close(self) -> None: ...


class FrameFilter(Protocol):
    """Forwards a stream while changing it in a dialect-approved way (removing the usage frame the proxy caused,
    inserting the inline usage comment). Output equals input otherwise. A filter feeds the stream meter it was
    made with from the same bytes (and closes it in `close`): the relay then feeds nothing else."""

    def feed(self, data: bytes) -> bytes: ...

    def close(self) -> bytes: ...


class Dialect(Protocol):
    name: str

    def match(self, incoming: Incoming) -> Route | None:
        """The endpoint this request is for; None when the path is not one of this dialect's. Raises
        MethodNotAllowed for one of its paths with the wrong method, BadRequest for a malformed path model."""
        ...

    def client_key(self, incoming: Incoming) -> bytes | None:
        """The teeproxy key the client presented, where this dialect's SDKs put it."""
        ...

    def request_fields(self, route: Route, request: dict[str, Any], provider: ProviderConfig) -> dict[str, Any] | None:
        """Top-level fields to set in the request body before it goes upstream, when metering needs them (OpenAI:
        `stream_options` with `include_usage`); None for none. The request is the client's, parsed, and is not
        changed. When there are some, the proxy removes their trace from the response again (the usage-only
        chunk)."""
        ...

    def attach_credentials(self, outgoing: Outgoing, upstream: Upstream) -> None:
        """Add the provider's credentials (the client's own were already dropped). May sign the whole request."""
        ...

    def is_stream(self, route: Route, content_type: str) -> bool:
        """Whether a response with this content type is a stream, to be metered frame by frame."""
        ...

    def stream_meter(self, route: Route) -> StreamMeter: ...

    def body_usage(self, route: Route, body: bytes, headers: Headers) -> Usage | None:
        """Usage of a complete non-streaming response; None when it has none. Raises ValueError (msgspec's
        DecodeError is one) when the body cannot be read."""
        ...

    def frame_filter(
        self, route: Route, meter: StreamMeter, strip_usage_frame: bool, comment: Callable[[], bytes] | None
    ) -> FrameFilter | None:
        """A filter for streams the proxy changed, or to carry the inline usage comment; None when this dialect
        cannot (binary framing) — the proxy then forwards unchanged."""
        ...

    def error_response(self, exc: ProxyError) -> tuple[int, Headers, bytes]:
        """A proxy-made error before the first byte: status, headers (content-type at least) and body, in the
        dialect's own error format."""
        ...

    def stream_error(self, route: Route, exc: ProxyError, after: bytes = b"") -> bytes:
        """A proxy-made error after the first byte: the dialect's own in-stream error event, whole frames.
        `after` is the last piece of body the client got (a JSON array's next element needs a comma only when
        one came before it)."""
        ...

    def models_body(self, models: list[tuple[str, str]]) -> bytes:
        """The body of a local model list for (model id, owner) pairs, in this dialect's format."""
        ...

    def keepalive(self, route: Route) -> bytes | None:
        """Bytes the client's SDK ignores, sent between frames while the upstream is silent (see
        proxy.keepalive); None when the stream's framing has no such thing."""
        ...

    def first_chunk_failed(self, route: Route, data: bytes) -> bool:
        """With a route's `gate_first_chunk`: whether a stream's first bytes already say it failed (an upstream
        that sends 200 and then an error event), so the request can still move to another provider."""
        ...


class TailComment:
    """The inline usage comment for SSE dialects with nothing to remove: the stream passes through unchanged (and
    feeds the meter, as every filter does) and the comment line goes after its last byte, on a line of its own."""

    def __init__(self, meter: StreamMeter, comment: Callable[[], bytes]) -> None:
        self._meter = meter
        self._comment = comment
        self._last = b"\n"

    def feed(self, data: bytes) -> bytes:
        self._meter.feed(data)
        if data:
            self._last = data[-1:]
        return data

    def close(self) -> bytes:
        self._meter.close()
        line = self._comment()
        return line if self._last in (b"\n", b"\r") else b"\n" + line


def header(headers: Headers, name: bytes) -> bytes | None:
    """The first value of a header (names are lower-case bytes, as ASGI gives them)."""
    for key, value in headers:
        if key == name:
            return value
    return None


def bearer_token(headers: Headers) -> bytes | None:
    """The token of `Authorization: Bearer <token>`, stripped; None when absent, empty or another scheme."""
    scheme, _, token = (header(headers, b"authorization") or b"").strip().partition(b" ")
    if scheme.lower() == b"bearer" and token.strip():
        return token.strip()
    return None


def first_sse_event_failed(data: bytes) -> bool:
    """Whether the first whole SSE event in `data` is an error: `event: error`, or JSON whose top-level `error`
    is set or whose `type` is "error" / "response.failed". An incomplete first event is not (yet) a failure."""
    try:
        events = SSEParser().feed(data)
    except FrameError:
        return False
    if not events:
        return False
    first = events[0]
    if first.event == "error":
        return True
    try:
        obj = _decode_any(first.data)
    except (ValueError, RecursionError):
        return False
    return isinstance(obj, dict) and (bool(obj.get("error")) or obj.get("type") in ("error", "response.failed"))
