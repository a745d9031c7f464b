"""A request head read by hypercorn's HTTP/1.1 server in two regex passes instead of a regex per line.

h11 0.16 reads a request head as lines: it cuts the head out of its buffer, splits it, strips each line's CR,
matches the request line with one regex and each field line with another (through a generator per head), and
builds a dict of groups for each. For the head an OpenAI SDK sends (17 fields) that took 29 µs, of which 10
went to cutting and splitting alone; for the bench's 4-field head, 11.5 µs.

Here the whole head is matched at once, against h11's own patterns (`h11._abnf`: the request line, then each
field line as `field-name ":" OWS field-value OWS`, each line ending CRLF, then the blank line), and the fields
are taken from the lines so checked with one `findall` (the name, and the rest of the line after its leading OWS,
whose trailing OWS is stripped where there is any); the `Request` is built as h11's reader builds it
(`_parsed=True`, so h11 still checks Host and the framing fields). Only a head that matches is read this way:
anything else (not yet complete, an obsolete line fold, a bare CR or LF, a byte h11 refuses) goes to h11's own
reader, with `proxy.h11_strict`'s buffer in front of it as before, so what is refused, and how, is unchanged.
The fast reader runs only on that buffer's connections (hypercorn's), never on other h11 users in the process.

Why the two readings agree: no byte a line may hold (token, visible characters, SP and HTAB) is CR or LF, so
a match ends every line at its own CRLF, the head at the first CRLFCRLF, and `findall`, starting at the first
field line, matches exactly the lines the whole-head match checked, one each: a name holds no colon, so each
match splits its line at the first one, as h11's does. `tests/test_h11_request_head.py`
holds the two readers to the same events, errors and leftover bytes on generated heads.

`install()` checks the h11 version and the reader it replaces, and refuses otherwise.
"""

from __future__ import annotations

import re
from typing import Any

import h11

from proxy.h11_strict import StrictReceiveBuffer
from proxy.patch_versions import require

SUPPORTED_PREFIX = "0.16."
_MARK = "__teeproxy_h11_request_head__"


def _patterns() -> tuple[re.Pattern[bytes], re.Pattern[bytes]]:
    from h11 import _abnf

    # h11's field line is `field-name ":" OWS field-value OWS`, its value a run of visible or obs-text bytes
    # (`[^\x00\s]`) with SP or HTAB only between them. OWS, value, OWS together are therefore any run of those
    # bytes, SP and HTAB: every byte but NUL, CR, LF, VT and FF. One character class checks a line as h11's
    # nested pattern does, at a fraction of the regex engine's work.
    name = _abnf.field_name
    checked_line = rf"{name}:[^\x00\r\n\x0b\x0c]*\r\n"
    head = rf"{_abnf.request_line}\r\n(?P<fields>(?:{checked_line})*)\r\n"
    # Over checked lines only: the name, and the rest after the leading OWS (its trailing OWS is stripped after).
    field_line = rf"({name}):[ \t]*([^\r]*)\r\n"
    return re.compile(head.encode("ascii")), re.compile(field_line.encode("ascii"))


_HEAD, _FIELD_LINE = _patterns()


def read_request_head(buf: StrictReceiveBuffer) -> h11.Request | None:
    """A whole, plain request head out of `buf` as h11's `Request`; None when it is not one (h11 reads it)."""
    data = buf._data
    end = data.find(b"\r\n\r\n", max(0, buf._checked - 3))  # not again where the strict buffer found none
    if end < 0:
        return None
    match = _HEAD.fullmatch(data, 0, end + 4)
    if match is None:
        return None
    start = match.start("fields")
    fields = _FIELD_LINE.findall(data, start, end + 2)
    if data.find(b" \r\n", start, end + 2) >= 0 or data.find(b"\t\r\n", start, end + 2) >= 0:
        fields = [(name, value.rstrip(b" \t")) for name, value in fields]  # a value with trailing OWS
    method, target, http_version = match.group("method", "target", "http_version")
    buf._extract(end + 4)
    return h11.Request(method=method, target=target, http_version=http_version, headers=fields, _parsed=True)


def install() -> None:
    """Idempotent; raises RuntimeError if h11 is not what this module was written against."""
    version = require("h11_request_head", {"h11": SUPPORTED_PREFIX}, "check its request reader and patterns")["h11"]
    from h11 import _readers

    key = (h11.CLIENT, h11.IDLE)
    current: Any = _readers.READERS[key]
    if getattr(current, _MARK, False):
        return
    if current is not _readers.maybe_read_from_IDLE_client:
        raise RuntimeError(f"h11 {version}'s request reader is not what proxy.h11_request_head expects")
    h11_reader = current

    def reader(buf: Any) -> h11.Request | None:
        if type(buf) is StrictReceiveBuffer:
            request = read_request_head(buf)
            if request is not None:
                return request
        return h11_reader(buf)

    setattr(reader, _MARK, True)
    _readers.READERS[key] = reader
