"""A sans-I/O, incremental splitter of a streamed JSON array into its top-level elements.

Theory of operation
-------------------
Gemini's `streamGenerateContent` without `alt=sse` answers with one JSON array (RFC 8259 §5) written element
by element: `[{...}` first, then `,\r\n{...}` per chunk, then `]`. This splitter returns each top-level
element's bytes as soon as its last byte arrives; it does not decode them (msgspec does, later, and only when
a byte marker says it is worth it).

Between elements the RFC 8259 grammar is enforced: whitespace (§2: space, tab, LF, CR) anywhere, one `[`
first, `]` or an element after it, exactly one `,` between elements, `]` last and only whitespace after it.
Anything else there is a `FrameError`. Inside an element only what decides where it ends is tracked: the
stack of open `{`/`[` (a closer must match the opener on top), and strings, in which brackets do not count
and a backslash escapes the next byte (§7), so `"\\"` ends a string and `"\""` does not. A scalar element
(number, true, false, null) ends at the first byte that cannot be part of one; it is not validated.

`feed()` takes bytes cut anywhere. Scanning is done by compiled regexes over the buffer, never a Python loop
per byte: outside strings the next bracket or quote is found with `search`, and a string that is complete in
the buffer is consumed by one match (an unrolled, possessive pattern: linear, no backtracking). Only a string
still open at the end of the data is scanned in a second mode, resumed where it stopped. Each byte is
scanned once (twice for the tail of an unfinished string), however the input is chunked.

When a fault follows elements completed in the same `feed()`, those elements are returned and the
`FrameError` is raised by the next call, so the elements seen before a fault never depend on chunking.
After a `FrameError` the splitter is spent: every later call raises it again. `close()` raises it when the
array never got its closing bracket (a stream cut short).

Buffers are bounded: only the bytes of the element being read are kept, and an element longer than
`MAX_ELEMENT_BYTES` is a `FrameError`. Whitespace between elements is dropped as it arrives.
"""

from __future__ import annotations

import re

from proxy.parsers.sse import FrameError

# One element is one GenerateContentResponse chunk. The largest real ones carry an inline image or a long tool
# result (a few MiB as base64); 16 MiB matches the SSE parser's per-event bound, so both framings of the same
# stream accept the same chunks.
MAX_ELEMENT_BYTES = 16 * 1024 * 1024

_WS = re.compile(rb"[ \t\r\n]*")
# Outside strings: everything up to the next bracket, whole strings included (in one match); it stops before a
# bracket, or before the quote of a string that is not complete in the buffer.
_SKIP = re.compile(rb'(?:[^"\[\]{}]++|"[^"\\]*+(?:\\.[^"\\]*+)*+")*+', re.S)
# Inside a string: the longest run of its bytes; what follows is `"`, or a backslash that ends the data.
_STRING_BODY = re.compile(rb'[^"\\]*+(?:\\.[^"\\]*+)*+', re.S)
_SCALAR = re.compile(rb"[-+.0-9A-Za-z]*")
_SCALAR_START = frozenset(b"-0123456789tfn")
_OPENERS = {0x7D: 0x7B, 0x5D: 0x5B}  # } -> {, ] -> [

# Where the splitter is, between elements (or inside one).
_BEFORE, _FIRST, _NEXT, _AFTER, _IN, _DONE, _FAILED = range(7)


class JSONArrayParser:
    def __init__(self) -> None:
        self._buf = bytearray()  # from the start of the element being read (or of unread data) onwards
        self._pos = 0  # scan position in _buf
        self._start = 0  # where the current element starts in _buf
        self._state = _BEFORE
        self._stack = bytearray()  # open brackets of the current element
        self._in_string = False
        self._scalar = False
        self._error: str | None = None

    @property
    def done(self) -> bool:
        """The closing bracket was seen."""
        return self._state == _DONE

    @property
    def failed(self) -> bool:
        """A framing fault was found: the next call raises FrameError, if the last one did not."""
        return self._error is not None

    def feed(self, data: bytes) -> list[bytes]:
        if self._error is not None:
            raise FrameError(self._error)
        if not data:
            return []
        buf = self._buf
        buf += data
        elements: list[bytes] = []
        try:
            pos = self._split(buf, elements)
        except FrameError as exc:
            self._fail(str(exc))
            if elements:
                return elements  # the error is raised by the next call
            raise
        keep = self._start if self._state == _IN else pos
        if keep:
            del buf[:keep]
            pos -= keep
            self._start = 0
        self._pos = pos
        if self._state == _IN and len(buf) - self._start > MAX_ELEMENT_BYTES:
            self._fail(f"element exceeds MAX_ELEMENT_BYTES ({MAX_ELEMENT_BYTES})")
            if elements:
                return elements
            raise FrameError(self._error)
        return elements

    def close(self) -> list[bytes]:
        """End of stream: nothing is left to return; FrameError when the array was never closed."""
        if self._error is not None:
            raise FrameError(self._error)
        if self._state != _DONE:
            self._fail("the stream ended before the array's closing bracket")
            raise FrameError(self._error)
        self._buf.clear()
        return []

    def _fail(self, message: str) -> None:
        self._error = message
        self._state = _FAILED
        self._buf = bytearray()
        self._stack.clear()

    def _split(self, buf: bytearray, elements: list[bytes]) -> int:
        """Scan `buf` from the saved position, appending complete elements; return where scanning stopped."""
        pos = self._pos
        size = len(buf)
        while pos < size:
            state = self._state
            if state == _IN:
                end = self._element_end(buf, pos)
                if end < 0:
                    return self._pos
                if end - self._start > MAX_ELEMENT_BYTES:
                    raise FrameError(f"element exceeds MAX_ELEMENT_BYTES ({MAX_ELEMENT_BYTES})")
                elements.append(bytes(buf[self._start : end]))
                self._state = _AFTER
                pos = end
                continue
            pos = _end(_WS.match(buf, pos), pos)
            if pos == size:
                break
            byte = buf[pos]
            if state == _BEFORE:
                if byte != 0x5B:
                    raise FrameError(f"expected '[' at the start of the array, got {bytes([byte])!r}")
                self._state = _FIRST
            elif state == _AFTER:
                if byte == 0x2C:
                    self._state = _NEXT
                elif byte == 0x5D:
                    self._state = _DONE
                else:
                    raise FrameError(f"expected ',' or ']' after an element, got {bytes([byte])!r}")
            elif state == _DONE:
                raise FrameError(f"data after the array's closing bracket: {bytes([byte])!r}")
            elif byte == 0x5D and state == _FIRST:
                self._state = _DONE
            else:
                self._begin(byte, pos)
                if self._state == _IN and not self._scalar:
                    pos += 1  # past the opening bracket or quote
                continue
            pos += 1
        return pos

    def _begin(self, byte: int, pos: int) -> None:
        """An element starts at `pos` with `byte`."""
        self._start = pos
        self._stack.clear()
        self._in_string = self._scalar = False
        if byte in (0x7B, 0x5B):
            self._stack.append(byte)
        elif byte == 0x22:
            self._in_string = True
        elif byte in _SCALAR_START:
            self._scalar = True
        else:
            raise FrameError(f"expected an array element, got {bytes([byte])!r}")
        self._state = _IN

    def _element_end(self, buf: bytearray, pos: int) -> int:
        """Scan the current element from `pos`: the offset just past its end; or -1 when it needs more data, with
        the position to resume from saved in `_pos`."""
        stack = self._stack
        size = len(buf)
        while True:
            if self._in_string:
                pos = _end(_STRING_BODY.match(buf, pos), pos)
                if pos == size or buf[pos] != 0x22:
                    break  # at the end, or at a backslash whose escaped byte is still to come
                self._in_string = False
                pos += 1
                if not stack:
                    return pos  # the element was a string
                continue
            if self._scalar:
                pos = _end(_SCALAR.match(buf, pos), pos)
                if pos == size:
                    break
                return pos
            pos = _end(_SKIP.match(buf, pos), pos)
            if pos == size:
                break
            byte = buf[pos]
            pos += 1
            if byte == 0x22:
                self._in_string = True  # a string not complete in the buffer
            elif byte in (0x7B, 0x5B):
                stack.append(byte)
            else:
                if stack[-1] != _OPENERS[byte]:
                    raise FrameError(f"{bytes([byte])!r} closes {bytes([stack[-1]])!r}")
                stack.pop()
                if not stack:
                    return pos
        self._pos = pos
        return -1


def _end(match: re.Match[bytes] | None, pos: int) -> int:
    return match.end() if match is not None else pos
