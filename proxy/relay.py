"""The tee: upstream bytes to the client as they arrive, the sidecar meter reading the same bytes after them.

Each upstream read goes to the client as one ASGI body message, unchanged, and only then to the meter. Two
things may change what the client gets, both by the dialect's rules: the frame filter (a usage frame the proxy
caused is removed, the inline usage comment is added; it holds back the bytes of an unfinished SSE frame,
which no SSE client can use before the frame ends anyway), and the scrubber (the provider's key out of a
non-2xx body). After the first byte an upstream failure becomes the dialect's in-stream error event; a plain
body cut short ends the response abnormally. The client's side (`ClientStream`) stamps each write's time (the
largest gap metric, the keep-alive ticker) and knows whether the client holds whole frames.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

from proxy import client_connection
from proxy import headers as h
from proxy.asgi_types import Send
from proxy.client_connection import CLIENT_TRANSPORT
from proxy.errors import UpstreamError, UpstreamTimeout
from proxy.exchange import FRAME_ENDS, Exchange, identity_headers
from proxy.metering import Meter, new_meter, render_inline_comment, usage_figures
from proxy.providers.base import FrameFilter
from proxy.scrub import SecretScrubber, scrub_headers
from proxy.state import ProxyState
from proxy.upstream import UpstreamResponse
from proxy.usage import Usage

_STREAMING_HEADERS: h.Headers = [(b"cache-control", b"no-cache"), (b"x-accel-buffering", b"no")]


async def relay(
    state: ProxyState,
    ex: Exchange,
    response: UpstreamResponse,
    send: Send,
) -> None:
    """Tee the upstream body to the client while the meter reads it on the side. (The client leaving cancels
    this, see `forward._client_left`; `handle` closes the upstream response.)"""
    assert ex.upstream is not None and ex.route is not None
    dialect, route = ex.dialect, ex.route
    ex.status = response.status_code
    content_type = response.header(b"content-type") or ""
    streaming = ex.streaming = response.status_code < 400 and dialect.is_stream(route, content_type)
    sse = content_type.startswith("text/event-stream")
    meter: Meter | None = None
    if state.metering and route.billable:
        meter = new_meter(dialect, route, streaming, response.headers)
    ex.meter = meter
    response_headers = h.client_response_headers(response.headers)
    scrubber: SecretScrubber | None = None
    if ex.upstream.api_key:
        secret = ex.upstream.api_key.encode()
        response_headers = scrub_headers(response_headers, secret)
        if response.status_code >= 300:
            scrubber = SecretScrubber(secret)
    # A scrubbed (non-2xx) body is never a stream the proxy changed: the filter is for 2xx streams only.
    frame_filter: FrameFilter | None = None
    if scrubber is None and streaming and meter is not None and (ex.strip_usage_frame or ex.inline_usage):
        comment = (lambda: render_inline_comment(state, ex)) if ex.inline_usage and sse else None
        frame_filter = dialect.frame_filter(route, meter, ex.strip_usage_frame, comment)
    if not streaming and frame_filter is None and scrubber is None and not ex.trailers:
        length = h.get(response.headers, b"content-length")
        if length is not None:
            response_headers.append((b"content-length", length))
    if streaming:
        present = {name for name, _ in response_headers}
        response_headers.extend((name, value) for name, value in _STREAMING_HEADERS if name not in present)
    response_headers.extend(identity_headers(ex))
    if ex.trailers:
        response_headers.append((b"trailer", h.TRAILER_DECLARATION))
    await send(
        {
            "type": "http.response.start",
            "status": response.status_code,
            "headers": response_headers,
            "trailers": ex.trailers,
        }
    )
    ex.response_started = True

    sink = ex.sink = ClientStream(ex, send, dialect.keepalive(route) if streaming else None)
    ex.sse = sse
    emit = sink.write
    keepalive = state.keepalive if sink.keepalive is not None and state.keepalive.interval_s > 0 else None
    if keepalive is not None:
        keepalive.add(sink)

    tee = Tee(scrubber, frame_filter, meter)
    if sink.direct is not None:
        response.tee_into(tee.direct(sink))
    failure: UpstreamError | None = None
    try:
        await tee.pump(response.read, emit)
    except UpstreamError as exc:
        failure = exc
        ex.outcome = "timeout" if isinstance(exc, UpstreamTimeout) else "upstream_error"
    finally:
        response.tee_into(None)
        if keepalive is not None:
            keepalive.discard(sink)
    if scrubber is not None:
        tail = scrubber.close()
        if tail:
            await emit(tail)
    if frame_filter is not None:
        tail = frame_filter.close()  # an unfinished frame is still the client's: every byte goes out
        if tail:
            await emit(tail)
    elif meter is not None:
        meter.close()
    if failure is not None:
        if streaming:
            # After the first byte the status is spent: tell the client in the dialect's own in-stream form,
            # in a frame of its own even when the upstream stopped mid-frame.
            event = dialect.stream_error(route, failure, sink.last)
            if sse and not sink.at_boundary:
                event = b"\n\n" + event
            await emit(event)
        else:
            # A plain body cut short must not look complete: end the response abnormally (the server resets
            # the stream or closes the connection without the final chunk) instead of sending its end.
            raise failure
    # The end of the body waits until the client has taken it (HTTP/2 drains its buffer): a client that leaves
    # meanwhile still cancels, and a finished meter still makes that a completed stream.
    await send({"type": "http.response.body", "body": b"", "more_body": False})
    if ex.trailers:
        await send({"type": "http.response.trailers", "headers": trailer_fields(state, ex), "more_trailers": False})
    ex.done = True


class Tee:
    """One upstream read's way to the client and the meter: the scrubber's or the frame filter's output, or
    the read itself, goes to the client first; then the meter reads the upstream's bytes (the frame filter
    meters what it reads itself).

    `pump` does it from the relay's task, a read at a time. `direct` does it in the upstream connection's
    read callback instead, for each read that arrives while the client's socket takes bytes without waiting
    (see `proxy.client_connection.DirectBodyWriter`): no task wakes for a read then, which on paced streams
    was most of a chunk's cost in Python. Both keep the order of the bytes: the callback takes a read only
    while `pump` waits with nothing queued."""

    __slots__ = ("_transform", "_meter_feed")

    def __init__(self, scrubber: SecretScrubber | None, frame_filter: FrameFilter | None, meter: Meter | None) -> None:
        self._transform: Callable[[bytes], bytes] | None = None
        self._meter_feed: Callable[[bytes], None] | None = None
        if frame_filter is not None and scrubber is None:
            self._transform = frame_filter.feed
        else:
            self._transform = scrubber.feed if scrubber is not None else None
            self._meter_feed = meter.feed if meter is not None else None

    async def pump(self, read: Callable[[], Awaitable[bytes]], emit: Callable[[bytes], Awaitable[None]]) -> None:
        transform, meter_feed = self._transform, self._meter_feed
        while chunk := await read():
            out = transform(chunk) if transform is not None else chunk
            if out:
                await emit(out)  # the tee: forward first ...
            if meter_feed is not None:
                meter_feed(chunk)  # ... then let the sidecar read it

    def direct(self, sink: ClientStream) -> Callable[[bytes], bool]:
        transform, meter_feed = self._transform, self._meter_feed
        ready, write = sink.ready, sink.write_now

        def take(chunk: bytes) -> bool:
            if not ready():
                return False
            out = transform(chunk) if transform is not None else chunk
            if out:
                write(out)
            if meter_feed is not None:
                meter_feed(chunk)
            return True

        return take


class ClientStream:
    """The client's side of the relay: body writes, their timings, and keep-alives between frames."""

    __slots__ = (
        "_ex",
        "_send",
        "_transport",
        "at_boundary",
        "direct",
        "keepalive",
        "last",
        "last_write_at",
        "_writing",
    )

    def __init__(self, ex: Exchange, send: Send, keepalive: bytes | None) -> None:
        self._ex = ex
        self._send = send
        self._transport = CLIENT_TRANSPORT.get()
        self.direct = client_connection.direct_body_writer(send)
        self.keepalive = keepalive
        self.at_boundary = True  # the client holds whole frames only
        self.last = b""  # the last body piece written (a dialect's in-stream error may depend on it)
        self.last_write_at = time.perf_counter()
        self._writing = False

    def ready(self) -> bool:
        """Whether `write_now` may write now (only with a direct writer)."""
        return self.direct is not None and self.direct.ready()

    def write_now(self, data: bytes) -> None:
        """`write` without a coroutine, when `ready()`."""
        assert self.direct is not None
        self._stamp(data)
        self.direct.write(data)
        self._ex.bytes_to_client += len(data)

    async def write(self, data: bytes) -> None:
        self._stamp(data)
        ex = self._ex
        self._writing = True
        taken = self._open()
        try:
            await self._send({"type": "http.response.body", "body": data, "more_body": True})
        finally:
            self._writing = False
        if taken:
            ex.bytes_to_client += len(data)

    def _stamp(self, data: bytes) -> None:
        ex = self._ex
        now = time.perf_counter()
        if ex.first_byte_at is None:
            ex.first_byte_at = now
        elif ex.last_byte_at is not None:
            gap = now - ex.last_byte_at
            if ex.max_gap_s is None or gap > ex.max_gap_s:
                ex.max_gap_s = gap
        ex.last_byte_at = self.last_write_at = now
        self.at_boundary = data.endswith(FRAME_ENDS)
        self.last = data

    def _open(self) -> bool:
        """Whether the client's connection still takes bytes (a write to a closing one is dropped)."""
        transport = self._transport
        return transport is None or not transport.is_closing()

    def can_ping(self) -> bool:
        return self.at_boundary and not self._writing and not self._ex.done

    async def ping(self) -> None:
        assert self.keepalive is not None
        self.last_write_at = time.perf_counter()
        self._writing = True
        taken = self._open()
        try:
            await self._send({"type": "http.response.body", "body": self.keepalive, "more_body": True})
        finally:
            self._writing = False
        if taken:
            self._ex.bytes_to_client += len(self.keepalive)


def trailer_fields(state: ProxyState, ex: Exchange) -> h.Headers:
    usage, status, cost, _ = usage_figures(state, ex)
    u = usage or Usage()
    fields = [
        (b"x-teeproxy-input-tokens", str(u.input_tokens).encode()),
        (b"x-teeproxy-output-tokens", str(u.output_tokens).encode()),
        (b"x-teeproxy-cached-tokens", str(u.cached_tokens).encode()),
        (b"x-teeproxy-cache-write-tokens", str(u.cache_write_tokens).encode()),
        (b"x-teeproxy-reasoning-tokens", str(u.reasoning_tokens).encode()),
    ]
    if cost is not None:
        fields.append((b"x-teeproxy-cost-usd", format(cost, "f").encode()))
    fields.append((b"x-teeproxy-usage", status.encode()))
    return fields
