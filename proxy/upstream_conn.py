"""One HTTP/1.1 connection to a provider: an asyncio Protocol; sans-I/O heads (`proxy.parsers.head`: the
request written, the response head read) and body reader (`proxy.parsers.body`).

This is the relay's upstream hot path, kept as short as the event loop allows:

* **One item per socket read.** `data_received` hands a read to the body reader, which returns all the body
  bytes it completed in one piece, so a read holding a hundred SSE frames is one chunk for the relay, one
  ASGI message and one `send()` to the client. When the relay is slower than the upstream, `read` hands over
  everything queued as one chunk.
* **No task wake per read, where the client keeps up.** A `consumer` (the relay's `Tee.direct`) may take each
  read in `data_received` itself while the reader waits with nothing queued; a read it declines (the client's
  socket is not taking bytes without waiting) is queued for `read`, and later reads queue behind it.
* **Bounded buffering.** Past `HIGH_WATER` bytes queued, the transport stops reading; the upstream then waits
  on TCP flow control until the relay takes the bytes. At most `HIGH_WATER` plus one socket read (asyncio
  reads up to 256 KiB) is held per stream.
* **Timeouts re-armed cheaply.** One timer per connection. The read timeout bounds how long a reader waits
  with nothing arriving (for the response head, or between body reads), not the whole response; a read just
  stamps the time, and the timer, when it fires, re-arms itself from the last stamp. Time the relay spends
  waiting for a slow client is not counted.
* **Errors mapped here,** once: every failure a reader sees is an `UpstreamError` subclass whose message
  names the kind of failure, never a URL or a key.

The pool (`proxy.upstream_pool`) owns connections between requests; `proxy.upstream` is the request API.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Callable

from proxy import transport_cycles
from proxy.errors import UpstreamError, UpstreamProtocolError, UpstreamTimeout
from proxy.parsers.body import BodyError, BodyReader, CloseBody, reader_for
from proxy.parsers.head import HeadError, ResponseHead, ResponseHeadReader, request_head

# Bytes queued for the relay before the socket stops being read.
HIGH_WATER = 64 * 1024

_Head = tuple[int, list[tuple[bytes, bytes]]]


class StaleConnection(UpstreamProtocolError):
    """A kept-alive connection closed before the response's first byte: the request may be sent again on a new
    connection (the server closed an idle connection just as it was reused)."""


class UpstreamConnection(asyncio.Protocol):
    """A client connection: `send_request`, then `read` until b"", then the pool takes it back (`reusable`)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, key: tuple[str, str, int]) -> None:
        self.key = key  # (scheme, host, port): the pool's origin
        self.closed = False
        self.idle_since = 0.0
        self.reused = False  # served a request before this one
        self.on_lost: Callable[[UpstreamConnection], None] | None = None  # the pool's, to forget it
        # Takes body chunks as they are read, while the reader waits (see `_consumed`); None: all go to `read`.
        self.consumer: Callable[[bytes], bool] | None = None
        self._consumer_error: BaseException | None = None
        self._loop = loop
        self._transport: asyncio.Transport | None = None
        self._head_reader: ResponseHeadReader | None = None
        self._body: BodyReader | None = None
        self._keep_alive = False
        self._in_use = False
        self._received = False  # any byte of the current response
        self._head: _Head | None = None
        self._chunks: collections.deque[bytes] = collections.deque()
        self._buffered = 0
        self._eof = False  # the response body is complete
        self._error: UpstreamError | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._reading_paused = False
        self._write_waiter: asyncio.Future[None] | None = None
        self._writing_paused = False
        self._read_timeout: float | None = None
        self._last_data_at = 0.0
        self._wait_since = 0.0
        self._timer: asyncio.TimerHandle | None = None

    # -- asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport

    def data_received(self, data: bytes) -> None:
        if not self._in_use or self._eof:
            # Bytes nobody asked for (on an idle connection, or past the response): never serve them to anyone.
            self._fail(UpstreamProtocolError("the upstream provider sent bytes outside a response"))
            self.close()
            return
        self._received = True
        self._last_data_at = self._loop.time()
        if self._body is not None:
            self._take_body(data)
            return
        assert self._head_reader is not None
        try:
            parsed = self._head_reader.feed(data)
        except HeadError:
            self._fail(UpstreamProtocolError("the upstream provider broke the HTTP protocol"))
            self.close()
            return
        if parsed is not None:
            self._take_head(*parsed)

    def eof_received(self) -> bool | None:
        return None  # close the transport; connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._loop.call_soon(transport_cycles.let_go, self._transport)  # once the transport has finished closing
        if self.on_lost is not None:
            self.on_lost(self)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._in_use and not self._eof and self._error is None:
            if self._body is not None:
                try:
                    self._body.close()  # the end of a body delimited by the connection's close
                    self._eof = True
                except BodyError:
                    self._fail(UpstreamProtocolError("the upstream provider closed the connection mid-body"))
            elif self.reused and not self._received:
                self._fail(StaleConnection("the upstream provider closed a kept-alive connection"))
            else:
                self._fail(UpstreamProtocolError("the upstream provider closed the connection"))
        self._wake()
        write_waiter = self._write_waiter
        if write_waiter is not None and not write_waiter.done():
            write_waiter.set_result(None)

    def pause_writing(self) -> None:
        self._writing_paused = True

    def resume_writing(self) -> None:
        self._writing_paused = False
        waiter = self._write_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # -- the response

    def _take_head(self, head: ResponseHead, rest: bytes) -> None:
        """From the head's end on, the body reader (`proxy.parsers.body`) takes the bytes."""
        self._head_reader = None
        self._head = (head.status, head.headers)
        self._keep_alive = head.keep_alive
        self._body = reader_for(head.status, head.headers)
        if rest or self._body.done:
            self._take_body(rest)
        else:
            self._wake()

    def _take_body(self, data: bytes) -> None:
        assert self._body is not None
        try:
            chunk = self._body.feed(data)
        except BodyError:
            self._fail(UpstreamProtocolError("the upstream provider broke the HTTP body framing"))
            self.close()
            return
        queued = False
        if chunk and not self._consumed(chunk):
            queued = True
            self._chunks.append(chunk)
            self._buffered += len(chunk)
            if self._buffered > HIGH_WATER and not self._reading_paused and self._transport is not None:
                self._reading_paused = True
                self._transport.pause_reading()
        if self._body.done:
            self._eof = True
        if queued or self._eof or self._consumer_error is not None:
            self._wake()

    def _consumed(self, chunk: bytes) -> bool:
        """Whether the consumer took the chunk here, without waking the reader: only while the reader waits
        with nothing queued (so bytes stay in order), and only if the consumer says it could."""
        consumer = self.consumer
        waiter = self._waiter
        if consumer is None or waiter is None or waiter.done() or self._chunks:
            return False
        try:
            return consumer(chunk)
        except BaseException as exc:  # the reader raises it, as if it had failed there itself
            self.consumer = None
            self._consumer_error = exc
            return True

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _fail(self, error: UpstreamError) -> None:
        if self._error is None and not self._eof:
            self._error = error
        self._wake()

    # -- the request

    async def send_request(
        self,
        method: bytes,
        target: bytes,
        headers: list[tuple[bytes, bytes]],
        body: bytes,
        read_timeout: float | None,
    ) -> _Head:
        """Write the request; return the response's status and headers (names lowercased)."""
        assert self._transport is not None
        self._in_use = True
        self._received = False
        self._read_timeout = read_timeout
        try:
            data = request_head(method, target, headers)
        except HeadError:
            raise UpstreamProtocolError("the request could not be framed for the upstream provider") from None
        self._head_reader = ResponseHeadReader()
        self._transport.write(data + body)
        if self._writing_paused:
            await self._drain_writes()
        while self._head is None:
            await self._wait()
        head, self._head = self._head, None
        return head

    async def _drain_writes(self) -> None:
        waiter = self._write_waiter = self._loop.create_future()
        try:
            async with asyncio.timeout(self._read_timeout):
                await waiter
        except TimeoutError:
            raise UpstreamTimeout("the upstream provider did not take the request within the timeout") from None
        finally:
            self._write_waiter = None
        if self.closed and self._error is not None:
            raise self._error

    async def read(self) -> bytes:
        """The next part of the body: everything that arrived since the last call (and the consumer did not
        take), b"" at its end."""
        while True:
            if self._consumer_error is not None:
                self._raise_failure()
            chunks = self._chunks
            if chunks:
                chunk = chunks.popleft() if len(chunks) == 1 else b"".join(chunks)
                chunks.clear()
                self._buffered = 0
                if self._reading_paused and self._transport is not None and not self.closed:
                    self._reading_paused = False
                    self._transport.resume_reading()
                return chunk
            if self._eof:
                return b""
            await self._wait()

    def unread(self, chunk: bytes) -> None:
        """Put a chunk back in front, to be read again (the first-chunk gate looks before the relay reads)."""
        if chunk:
            self._chunks.appendleft(chunk)
            self._buffered += len(chunk)

    async def _wait(self) -> None:
        self._raise_failure()
        waiter = self._waiter = self._loop.create_future()
        self._wait_since = self._loop.time()
        if self._timer is None and self._read_timeout is not None:
            self._timer = self._loop.call_at(self._wait_since + self._read_timeout, self._on_timer)
        try:
            await waiter
        finally:
            self._waiter = None
        if not self._chunks:
            self._raise_failure()

    def _raise_failure(self) -> None:
        if self._consumer_error is not None:
            error, self._consumer_error = self._consumer_error, None
            raise error
        if self._error is not None:
            raise self._error

    def _on_timer(self) -> None:
        self._timer = None
        if self._waiter is None or self._read_timeout is None or self._eof:
            return  # nobody is waiting: the next wait arms the timer again
        deadline = max(self._last_data_at, self._wait_since) + self._read_timeout
        if self._loop.time() >= deadline:
            self._fail(UpstreamTimeout("the upstream provider stopped sending within the read timeout"))
        else:
            self._timer = self._loop.call_at(deadline, self._on_timer)

    # -- after the response

    @property
    def reusable(self) -> bool:
        """Whole response read, both sides done, nothing after it, and the server did not ask to close."""
        body = self._body
        if self.closed or self._error is not None or not self._eof or self._chunks or body is None:
            return False
        return self._keep_alive and not body.extra and not isinstance(body, CloseBody)

    def recycle(self) -> None:
        """Ready for the next request (the pool calls this only when `reusable`)."""
        self._body = None
        self._in_use = False
        self._eof = False
        self.reused = True
        self.consumer = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._transport is not None and not self.closed:
            self.closed = True
            self._transport.abort()  # no lingering: the provider sees the connection end now
