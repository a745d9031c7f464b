"""Sans-I/O HTTP/1.1 response body framing: bytes off the socket in, body bytes out (RFC 9112 §6 and §7.1).

`proxy.parsers.head` reads the upstream's response head; the body, which is where every chunk of every stream
goes, is read here. h11, which read these bodies before, turns each HTTP chunk into an event that passes through
its state machine (a dataclass, validation, state transitions): about 1 µs per chunk, which for a read holding a
hundred SSE frames was a third of the proxy's CPU. These readers take a whole read at a time and return its body
bytes in one piece, with `bytes.find` and slicing, never a loop per byte.

Three framings, chosen from the head by `reader_for`:

* `ChunkedBody`: `size[;ext] CRLF data CRLF` ... `0 CRLF [trailer fields] CRLF`. Strict: hex digits only,
  CRLF line ends, a size line of at most `MAX_LINE_BYTES`. Chunk extensions and trailer fields are read and
  dropped (they describe the hop, and nothing in them is the client's).
* `LengthBody`: exactly Content-Length bytes.
* `CloseBody`: everything until the connection closes.

Each `feed(data)` returns the body bytes that `data` completed (b"" when none) and sets `done` at the body's
end; bytes past the end are kept in `extra` (their presence means the connection must not be reused: they
are not a response anyone asked for). `close()` is the connection's end: it raises `BodyError` when the body
was not complete. A framing error raises `BodyError` and leaves the reader spent.
"""

from __future__ import annotations

MAX_LINE_BYTES = 4096  # a size line with its extensions, or one trailer field line
MAX_TRAILER_BYTES = 64 * 1024

_HEX_DIGITS = b"0123456789abcdefABCDEF"
_HEX = frozenset(_HEX_DIGITS)
_MAX_SIZE_DIGITS = 16


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


# ChunkedBody states
_SIZE, _DATA, _DATA_END, _TRAILER, _DONE, _BROKEN = range(6)


class ChunkedBody:
    __slots__ = ("_state", "_remaining", "_pending", "_trailer_bytes", "done", "extra")

    def __init__(self) -> None:
        self._state = _SIZE
        self._remaining = 0  # data bytes left in the current chunk
        self._pending = b""  # an unfinished line (or the first byte of a chunk's CRLF)
        self._trailer_bytes = 0
        self.done = False
        self.extra = b""

    def feed(self, data: bytes) -> bytes:
        if self._state == _DONE:
            self.extra += data
            return b""
        if self._state == _BROKEN:
            raise BodyError("the chunked body is broken")
        if self._pending:
            data = self._pending + data
            self._pending = b""
        out: list[bytes] = []
        try:
            self._feed(data, out)
        except BodyError:
            self._state = _BROKEN
            raise
        if not out:
            return b""
        return out[0] if len(out) == 1 else b"".join(out)

    def _feed(self, data: bytes, out: list[bytes]) -> None:
        pos, end = 0, len(data)
        state = self._state
        while pos < end:
            if state == _DATA:
                take = min(self._remaining, end - pos)
                out.append(data[pos : pos + take] if take < end or pos else data)
                pos += take
                self._remaining -= take
                if self._remaining == 0:
                    state = _DATA_END
            elif state == _DATA_END:
                if end - pos < 2:
                    if data[pos : pos + 1] != b"\r":
                        raise BodyError("a chunk's data is not followed by CRLF")
                    self._pending = data[pos:]
                    break
                if data[pos : pos + 2] != b"\r\n":
                    raise BodyError("a chunk's data is not followed by CRLF")
                pos += 2
                state = _SIZE
            elif state == _SIZE:
                pos = _whole_chunks(data, pos, out)
                if pos == end:
                    break
                eol = data.find(b"\r\n", pos)
                if eol < 0:
                    if end - pos > MAX_LINE_BYTES:
                        raise BodyError("a chunk size line is too long")
                    self._pending = data[pos:]
                    break
                if eol - pos > MAX_LINE_BYTES:
                    raise BodyError("a chunk size line is too long")
                size = _chunk_size(data[pos:eol])
                pos = eol + 2
                if size == 0:
                    state = _TRAILER
                else:
                    self._remaining = size
                    state = _DATA
            elif state == _TRAILER:
                eol = data.find(b"\r\n", pos)
                if eol < 0:
                    if end - pos > MAX_LINE_BYTES:
                        raise BodyError("a trailer field line is too long")
                    self._pending = data[pos:]
                    break
                line_length = eol - pos
                pos = eol + 2
                if line_length == 0:
                    state = _DONE
                    self.done = True
                    self.extra = data[pos:]
                    pos = end
                    break
                self._trailer_bytes += line_length + 2
                if line_length > MAX_LINE_BYTES or self._trailer_bytes > MAX_TRAILER_BYTES:
                    raise BodyError("the trailer section is too long")
        self._state = state

    def close(self) -> None:
        if not self.done:
            self._state = _BROKEN
            raise BodyError("the chunked body ended before its last chunk")


def _whole_chunks(data: bytes, pos: int, out: list[bytes]) -> int:
    """The fast path, from a size line at `pos`: whole chunks with a plain hex size (no extension) and their
    CRLF, as servers write them, are read with a find, a slice and a check each; their data goes to `out`.
    Returns where it stopped: the last chunk, a chunk not wholly in `data`, an extension, or anything wrong is
    left to the state machine, which reads it (or refuses it) byte for byte as before."""
    find = data.find
    known = _PLAIN_SIZES.get
    while True:
        eol = find(b"\r\n", pos, pos + _MAX_SIZE_DIGITS + 2)
        if eol <= pos:  # none within reach (a longer line, an extension, more to come) or an empty line
            return pos
        line = data[pos:eol]
        size = known(line)
        if size is None:
            size = _plain_size(line)
            if not size:  # not plain hex digits, or the last chunk
                return pos
        start = eol + 2
        stop = start + size
        if data[stop : stop + 2] != b"\r\n":  # not all here yet, or not followed by CRLF
            return pos
        out.append(data[start:stop])
        pos = stop + 2


# Size lines already read, as they were spelled: a stream's chunks come in a few hundred sizes at most, and a
# lookup costs less than checking and converting the digits again. Bounded; past it, sizes are converted each time.
_PLAIN_SIZES: dict[bytes, int] = {}
_MAX_PLAIN_SIZES = 4096


def _plain_size(line: bytes) -> int | None:
    """The size a line of (at most `_MAX_SIZE_DIGITS`) hex digits spells; None for anything else."""
    if line.translate(None, _HEX_DIGITS):
        return None
    size = int(line, 16)
    if size and len(_PLAIN_SIZES) < _MAX_PLAIN_SIZES:  # never 0: the last chunk is the state machine's to read
        _PLAIN_SIZES[line] = size
    return size


def _chunk_size(line: bytes) -> int:
    digits = line.split(b";", 1)[0].rstrip(b" \t")  # chunk-ext after ';' (BWS allowed before it)
    if not digits or len(digits) > _MAX_SIZE_DIGITS or not _HEX.issuperset(digits):
        raise BodyError("a chunk size is not hexadecimal")
    return int(digits, 16)


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
