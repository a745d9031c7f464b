"""A sans-I/O, incremental server-sent-events parser.

Theory of operation
-------------------
This implements "Interpreting an event stream" from the WHATWG HTML standard (§9.2.6), on bytes:

* The stream is a sequence of lines. A line ends at CRLF, at a lone LF, or at a lone CR — and nowhere else
  (not at the other characters `str.splitlines()` splits on). A leading UTF-8 BOM is skipped, once.
* An empty line dispatches the event being built. A line starting with `:` is a comment. Otherwise the line is
  `field:value` (one leading space of the value is dropped) or a bare `field` with an empty value.
  `data` lines are joined with LF; `event` sets the type (default "message"); `id` sets the last event id
  unless it holds NUL; `retry` is honoured only when it is all ASCII digits; other fields are ignored.
* An event with no data is not dispatched (its type is reset all the same). At end of stream an event
  that never saw its blank line is discarded.

`feed()` takes bytes cut anywhere — mid-line, between CR and LF, inside a UTF-8 sequence — and returns the
events completed so far. A CR at the very end of a chunk could be the first half of a CRLF, so that one line
waits for the next byte (or for `close()`); nothing else is held back. Line ends are found with `bytes.find`,
never a per-byte loop. The one partial line held between feeds is kept as a list of pieces while no line end
arrives, so a long line fed in many small chunks costs one join, not a copy and a rescan per chunk. Frames of
the shape nearly every provider writes (`event:` at most, one `data:` line, LF LF, no CR) are read whole with a
few finds each; any other frame goes line by line, and both give the same events (a property test holds them
to it).

Each event carries `start` and `end`: absolute offsets into the byte stream (counting from the first byte
ever fed, BOM included) of the frame it came from, from just after the previous blank line to just after its
own. `boundary` is the offset just after the last blank line seen, dispatched or not. With those a caller can
remove exactly one frame from the stream, or insert a line before one, without re-serializing anything.

Buffers are bounded: a line longer than `MAX_LINE_BYTES`, or an event whose data grows past
`MAX_EVENT_BYTES`, is a `FrameError`; the parser is then spent. A feed that completed events before the fault
returns them, and the next call (`feed` or `close`) raises: so the events seen before a fault, like the events of a
stream without one, never depend on how the stream was cut. Data is kept as bytes: the callers look for
byte markers and hand JSON to msgspec, which takes bytes, so no decode is ever needed here.
"""

from __future__ import annotations

import msgspec

# One SSE line holds one JSON chunk for every provider we meet. The largest real ones are a few hundred KiB
# (a tool call's arguments, a web-search result); 4 MiB leaves wide room above the 1 MiB we promise to accept.
MAX_LINE_BYTES = 4 * 1024 * 1024
# An event may span many data lines; bound the whole event too, so a stream without blank lines cannot grow
# memory without limit.
MAX_EVENT_BYTES = 16 * 1024 * 1024

# `retry:` is a reconnection time in milliseconds. Any value this long is nonsense, and int() refuses strings of
# more than 4300 digits (CVE-2020-10735) with a ValueError that must not escape the parser: longer values are
# ignored like any other invalid one.
MAX_RETRY_DIGITS = 18

_BOM = b"\xef\xbb\xbf"


class FrameError(Exception):
    """The stream broke a framing limit. The parser is spent; forwarding is never affected."""


class SSEEvent(msgspec.Struct, frozen=True, gc=False):
    data: bytes
    event: str = "message"
    id: str | None = None
    retry: int | None = None
    start: int = 0
    end: int = 0


def data_frame(buf: bytes, pos: int) -> tuple[int, int] | None:
    """The frame at `pos` (a frame boundary) when it is one `data:` line ending in LF LF, with no CR, within
    `MAX_LINE_BYTES` (how nearly every provider writes them): where its data starts and ends; the next frame starts
    2 bytes after that end. None for a frame of any other shape, or an unfinished one. `SSEParser` gives such a
    frame as an event of that data and type "message". (`SSEParser._data_frames` makes the same test inline, with
    its CR position cached over the frames of a read: a call and a find a frame would cost it a third more.)"""
    if not buf.startswith(b"data:", pos):
        return None
    end = buf.find(b"\n", pos)
    if end < 0 or end + 1 == len(buf) or buf[end + 1] != 0x0A or end - pos > MAX_LINE_BYTES:
        return None
    if buf.find(b"\r", pos, end) >= 0:
        return None
    start = pos + 5
    if start < end and buf[start] == 0x20:
        start += 1
    return start, end


class SSEParser:
    def __init__(self) -> None:
        # Bytes not yet consumed: the pieces of at most one partial line. It may end in a CR (a line end whose
        # LF may still come); only the last piece can hold that CR, and no piece holds any other CR or LF.
        self._held: list[bytes] = []
        self._held_size = 0
        self._base = 0  # absolute offset of the first held byte
        self._at_start = True  # the BOM check is still pending
        self._data: list[bytes] = []
        self._data_size = 0
        self._event_type = ""
        self._last_id: str | None = None
        self._retry: int | None = None
        self._frame_start = 0
        self.boundary = 0
        self._failed = False
        self._deferred: str | None = None  # a fault found after events the last feed returned; not raised yet

    def feed(self, data: bytes) -> list[SSEEvent]:
        if self._failed:
            self._raise_deferred()
            raise FrameError("the parser already failed")
        if not data:
            return []
        held = self._held
        if held:
            if not self._at_start and held[-1][-1] != 0x0D and b"\n" not in data and b"\r" not in data:
                # Still inside the same line: queue the piece. The size check is the one `_scan` would make, so
                # where the limit trips does not depend on the chunking.
                self._held_size += len(data)
                held.append(data)
                if self._held_size > MAX_LINE_BYTES:
                    self._fail(f"unterminated line exceeds MAX_LINE_BYTES ({MAX_LINE_BYTES})")
                return []
            held.append(data)
            buf = b"".join(held)
        else:
            buf = data
        self._held = []
        self._held_size = 0
        if self._at_start:
            if len(buf) < len(_BOM) and _BOM.startswith(buf):
                self._hold(buf)
                return []
            self._at_start = False
            if buf.startswith(_BOM):
                buf = buf[len(_BOM) :]
                self._base += len(_BOM)
        events: list[SSEEvent] = []
        try:
            self._scan(buf, False, events)
        except FrameError as exc:
            if not events:
                raise
            self._deferred = str(exc)  # the next feed() or close() raises it
        return events

    @property
    def at_boundary(self) -> bool:
        """Nothing is pending: the next byte fed starts a new frame (the stream's first byte too). Never after a
        fault: the next call must raise it."""
        return not self._held and not self._data and not self._event_type and not self._failed

    def skip(self, size: int) -> None:
        """Account for the next `size` bytes without parsing them: whole frames the caller has no use for.

        Only valid `at_boundary` with those bytes ending in a blank line (LF LF) and no more than `MAX_LINE_BYTES`
        of them, or whole frames each of which `data_frame` read: then the stream is at a frame boundary again
        afterwards, as if they had been fed and their events ignored (their `id:` and `retry:` fields too), and
        feeding them could not have raised FrameError either, so skipping never makes the outcome depend on how the
        stream was chunked. (A count, not the bytes: a slice of a large read would be a copy made for nothing.)
        """
        self._at_start = False  # a BOM, if the stream had one, was in the skipped frames
        self._base += size
        self._frame_start = self.boundary = self._base

    def close(self) -> list[SSEEvent]:
        """End of stream: a line held for a possible CRLF is processed; an unfinished event is dropped. Raises
        the fault the last feed found after the events it returned; once a fault was raised, returns nothing."""
        if self._failed:
            self._raise_deferred()
            return []
        buf = b"".join(self._held)
        self._held = []
        self._held_size = 0
        self._failed = True  # nothing more may be fed
        if not buf:
            return []
        events: list[SSEEvent] = []
        try:
            self._scan(buf, True, events)
        except FrameError:  # pragma: no cover - the held line was already checked against the limit when fed
            return []
        return events

    def _raise_deferred(self) -> None:
        message, self._deferred = self._deferred, None
        if message is not None:
            raise FrameError(message)

    def _scan(self, buf: bytes, final: bool, events: list[SSEEvent]) -> None:
        """Reads `buf` (the held bytes and the new ones) into `events`, holding back the partial line at its end."""
        size = len(buf)
        # Cache the next CR and LF positions: scanning again from `pos` for a character that is not in the rest
        # of the buffer would make many short lines quadratic.
        lf = buf.find(b"\n")
        cr = buf.find(b"\r")
        pos = self._data_frames(buf, 0, cr, events) if self._frame_start == self._base else 0
        while True:
            if lf != -1 and lf < pos:
                lf = buf.find(b"\n", pos)
            if cr != -1 and cr < pos:
                cr = buf.find(b"\r", pos)
            if lf == -1 and cr == -1:
                break
            if cr == -1 or (lf != -1 and lf < cr):
                end, nxt = lf, lf + 1
            elif cr + 1 < size:
                end, nxt = cr, (cr + 2 if buf[cr + 1] == 0x0A else cr + 1)
            elif final:
                end, nxt = cr, cr + 1
            else:
                break  # a CR as the last byte: wait to see whether LF follows
            if end - pos > MAX_LINE_BYTES:
                self._fail(f"line of {end - pos} bytes exceeds MAX_LINE_BYTES ({MAX_LINE_BYTES})")
            event = self._line(buf, pos, end, self._base + nxt)
            if event is not None:
                events.append(event)
            if end == pos:  # a blank line: a frame starts at `nxt`
                if cr != -1 and cr < nxt:
                    cr = buf.find(b"\r", nxt)
                pos = self._data_frames(buf, nxt, cr, events)
            else:
                pos = nxt
        rest = buf[pos:] if pos else buf
        # A CR held at the end is a line end, not part of the line: leave it out of the count, so that a line of
        # exactly MAX_LINE_BYTES is accepted whether or not a chunk boundary falls between its CR and LF.
        if len(rest) - (rest[-1:] == b"\r") > MAX_LINE_BYTES:
            self._fail(f"unterminated line exceeds MAX_LINE_BYTES ({MAX_LINE_BYTES})")
        if rest and not final:
            self._hold(rest)
        self._base += pos

    def _data_frames(self, buf: bytes, pos: int, cr: int, events: list[SSEEvent]) -> int:
        """The fast path, from the start of a frame at `pos` (`cr`: the first CR at or after it, or -1): whole
        frames of one `data:` line, after at most one `event:` line, ending in LF LF with no CR (how nearly every
        provider writes them) are read with a few finds each instead of line by line. The events are the ones the
        line-by-line scan would give. Returns where it stopped: a frame of another shape, or an unfinished one, is
        left to that scan."""
        base = self._base
        size = len(buf)
        while True:
            line = pos
            event_type = "message"
            if buf.startswith(b"event:", line):
                end = buf.find(b"\n", line)
                if end < 0 or 0 <= cr < end or end - line > MAX_LINE_BYTES:
                    break
                start = line + 6
                if start < end and buf[start] == 0x20:
                    start += 1
                event_type = buf[start:end].decode("utf-8", "replace") or "message"
                line = end + 1
            if not buf.startswith(b"data:", line):
                break
            end = buf.find(b"\n", line)
            if end < 0 or 0 <= cr < end or end + 1 == size or buf[end + 1] != 0x0A or end - line > MAX_LINE_BYTES:
                break
            start = line + 5
            if start < end and buf[start] == 0x20:
                start += 1
            pos = end + 2
            events.append(SSEEvent(buf[start:end], event_type, self._last_id, None, self._frame_start, base + pos))
            self._frame_start = self.boundary = base + pos
        return pos

    def _hold(self, rest: bytes) -> None:
        self._held = [rest]
        self._held_size = len(rest)

    def _fail(self, message: str) -> None:
        self._failed = True
        self._held = []
        self._data = []
        raise FrameError(message)

    def _line(self, buf: bytes, pos: int, end: int, after: int) -> SSEEvent | None:
        # The line is buf[pos:end]; it is not sliced out first, so a data line's value is copied once, not three
        # times (line, after-colon, after-space), which matters for the large lines.
        if pos == end:
            return self._dispatch(after)
        if buf[pos] == 0x3A:  # ":" comment
            return None
        colon = buf.find(b":", pos, end)
        if colon == -1:
            field, start = buf[pos:end], end
        else:
            field, start = buf[pos:colon], colon + 1
            if start < end and buf[start] == 0x20:  # "If value starts with a U+0020 SPACE character, remove it"
                start += 1
        if field == b"data":
            self._data_size += end - start + 1
            if self._data_size > MAX_EVENT_BYTES:
                self._fail(f"event data exceeds MAX_EVENT_BYTES ({MAX_EVENT_BYTES})")
            self._data.append(buf[start:end])
        elif field == b"event":
            self._event_type = buf[start:end].decode("utf-8", "replace")
        elif field == b"id":
            value = buf[start:end]
            if b"\x00" not in value:
                self._last_id = value.decode("utf-8", "replace")
        elif field == b"retry":
            value = buf[start:end]
            # bytes.isdigit is ASCII-only, as the spec wants ("consists of only ASCII digits").
            if value.isdigit() and len(value) <= MAX_RETRY_DIGITS:
                self._retry = int(value)
        return None

    def _dispatch(self, after: int) -> SSEEvent | None:
        start = self._frame_start
        self._frame_start = self.boundary = after
        if not self._data:
            self._event_type = ""
            self._retry = None
            return None
        data = self._data[0] if len(self._data) == 1 else b"\n".join(self._data)
        event = SSEEvent(
            data=data,
            event=self._event_type or "message",
            id=self._last_id,
            retry=self._retry,
            start=start,
            end=after,
        )
        self._data = []
        self._data_size = 0
        self._event_type = ""
        self._retry = None
        return event
