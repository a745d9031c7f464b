"""Sans-I/O HTTP/1.1 response body framing: bytes off the socket in, body bytes out (RFC 9112 §6 and §7.1).

`proxy.parsers.head` reads the upstream's response head; the body, which is where every chunk of every stream
goes, is read here. h11, which read these bodies before, turns each HTTP chunk into an event that passes through
its state machine (a dataclass, validation, state transitions): about 1 µs per chunk, which for a read holding a
hundred SSE frames was a third of the proxy's CPU. These readers take a whole read at a time and return its body
bytes in one piece.

Three framings, chosen from the head by `reader_for`:

* `ChunkedBody`: `size[;ext] CRLF data CRLF` ... `0 CRLF [trailer fields] CRLF`, read by llhttp in C (see the
  class). Chunk extensions and trailer fields are checked and dropped (they describe the hop, and nothing in
  them is the client's).
* `LengthBody`: exactly Content-Length bytes.
* `CloseBody`: everything until the connection closes.

Each `feed(data)` returns the body bytes that `data` completed (b"" when none) and sets `done` at the body's
end; bytes past the end are kept in `extra` (their presence means the connection must not be reused: they
are not a response anyone asked for). `close()` is the connection's end: it raises `BodyError` when the body
was not complete. A framing error raises `BodyError` and leaves the reader spent.
"""

from __future__ import annotations

from functools import partial

import httptools


class BodyError(Exception):
    """The body's framing is broken (or it ended early); the reader is spent."""


class LengthBody:
    __slots__ = ("_remaining", "done", "extra")

    def __init__(self, length: int) -> None:
        self._remaining = length
        self.done = length == 0
        self.extra = b""

    def feed(self, data: bytes) -> bytes:
        if self.done:
            self.extra += data
            return b""
        remaining = self._remaining
        if len(data) < remaining:
            self._remaining = remaining - len(data)
            return data
        self._remaining = 0
        self.done = True
        if len(data) > remaining:
            self.extra = data[remaining:]
            return data[:remaining]
        return data

    def close(self) -> None:
        if not self.done:
            raise BodyError("the body ended before its Content-Length")


class CloseBody:
    __slots__ = ("done", "extra")

    def __init__(self) -> None:
        self.done = False
        self.extra = b""

    def feed(self, data: bytes) -> bytes:
        return data

    def close(self) -> None:
        self.done = True


# A response head that frames what follows as chunked: the llhttp parser reads the body after it.
_CHUNKED_HEAD = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
# A chunked body can only end where this does: the last chunk's line (or its last trailer field), then an empty line.
_END = b"\r\n\r\n"


class _Sink:
    """What llhttp calls back: body bytes onto a list, and a mark when the body ends. Plain bound methods of
    plain objects, so the parser, the sink and the reader make no reference cycle for the collector to find."""

    __slots__ = ("on_body", "on_message_complete")

    def __init__(self, body: list[bytes], ends: list[None]) -> None:
        self.on_body = body.append
        self.on_message_complete = partial(ends.append, None)


class ChunkedBody:
    """`size[;ext] CRLF data CRLF` ... `0 CRLF [trailer fields] CRLF`, read by llhttp (through httptools, the
    parser uvicorn reads requests with): C, where a loop over the chunks in Python cost ~0.3 µs a chunk. It is
    strict, as llhttp is by default (hex sizes that fit 64 bits, CRLF line ends, chunk extensions that are tokens
    or quoted strings) but for one leniency, whitespace before a chunk extension's `;`, which RFC 9112 allows.
    Extensions and trailer fields are checked and dropped (they describe the hop, and nothing in them is the
    client's). Nothing is held between reads but llhttp's own state, so no line limit is
    needed: a size line, an extension or a trailer section streams through, however long.

    The body ends at the LF of a CRLF CRLF; each read is given to llhttp up to each place one ends, so that what
    follows the body's end is never parsed as the start of another response and stays in `extra`, exactly."""

    __slots__ = ("_parser", "_body", "_ends", "_tail", "_broken", "done", "extra")

    def __init__(self) -> None:
        self._body: list[bytes] = []
        self._ends: list[None] = []
        self._parser = httptools.HttpResponseParser(_Sink(self._body, self._ends))
        self._parser.set_dangerous_leniencies(lenient_spaces_after_chunk_size=True)  # BWS before `;`, RFC 9112 §7.1.1
        self._parser.feed_data(_CHUNKED_HEAD)
        self._tail = b""  # the last bytes of the reads before, where a CRLF CRLF may have begun
        self._broken = False
        self.done = False
        self.extra = b""

    def feed(self, data: bytes) -> bytes:
        if self.done:
            self.extra += data
            return b""
        if self._broken:
            raise BodyError("the chunked body is broken")
        try:
            self._feed(data)
        except httptools.HttpParserError as exc:
            self._broken = True
            self._body.clear()
            raise BodyError(f"the chunked body is broken: {exc}") from None
        body = self._body
        if not body:
            return b""
        out = body[0] if len(body) == 1 else b"".join(body)
        body.clear()
        return out

    def _feed(self, data: bytes) -> None:
        parse = self._parser.feed_data
        tail = self._tail
        start = 0
        if tail and data[:1] in (b"\r", b"\n"):  # a CRLF CRLF begun in the reads before may end in this one
            for stop in range(1, min(3, len(data)) + 1):
                if (tail + data[:stop]).endswith(_END):
                    parse(data[start:stop])
                    start = stop
                    if self._ends:
                        self._end(data, stop)
                        return
        at = data.find(_END)
        while at >= 0:
            stop = at + 4
            parse(data[start:stop] if start or stop < len(data) else data)
            start = stop
            if self._ends:
                self._end(data, stop)
                return
            at = data.find(_END, at + 1)
        if start < len(data):
            parse(data[start:] if start else data)
        self._tail = data[-3:] if len(data) >= 3 else (tail + data)[-3:]

    def _end(self, data: bytes, stop: int) -> None:
        self.done = True
        self.extra = data[stop:]

    def close(self) -> None:
        if not self.done:
            self._broken = True
            raise BodyError("the chunked body ended before its last chunk")


BodyReader = LengthBody | CloseBody | ChunkedBody


def reader_for(status: int, headers: list[tuple[bytes, bytes]], head_request: bool = False) -> BodyReader:
    """The framing of a response body from its status and head (RFC 9112 §6.3); names lowercased.
    `proxy.parsers.head` has already refused heads whose framing is invalid (conflicting or malformed
    Content-Length, a Transfer-Encoding that is not chunked)."""
    if head_request or status < 200 or status in (204, 304):
        return LengthBody(0)
    length = None
    for name, value in headers:
        if name == b"transfer-encoding":
            return ChunkedBody()
        if name == b"content-length":
            length = int(value)
    if length is not None:
        return LengthBody(length)
    return CloseBody()
