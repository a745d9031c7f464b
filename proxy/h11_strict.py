"""Strict request heads for hypercorn 0.18's HTTP/1.1 server: a bare LF in the head is a 400, not a line end.

Why: the start-line and the field lines end with CRLF, but "a recipient MAY recognize a single LF as a line
terminator and ignore any preceding CR" (RFC 9112 §2.2), and h11 does: its `ReceiveBuffer.maybe_extract_lines`
ends the head at `\\n\\r?\\n` and splits it at `\\n`. So `X: a\\nTransfer-Encoding: chunked\\r\\n` is two fields
here, while a front proxy that ends lines only at CRLF sees one field (or refuses it): the two disagree on the
request's fields and its framing, the shape of request smuggling (RFC 9112 §11.2). A recipient is free not to
take up the MAY, so a head with a bare LF is refused as malformed (RFC 9112 §2.2: 400 Bad Request). The body
is not a head: its bytes are never looked at here.

Theory of operation: each hypercorn `H11Protocol` gets, as it is made and before any byte is received, an h11
connection whose receive buffer is a `StrictReceiveBuffer` (a subclass of h11's own, nothing of it copied).
Before h11 cuts a header section out of the buffer (a request head, or a chunked body's trailer section), the
buffer looks for the first `\\r\\n\\r\\n` or the first LF not preceded by CR, whichever comes first; an LF first
raises h11's `LocalProtocolError`, which h11 turns into `RemoteProtocolError` (status hint 400) and hypercorn
into a `400` with `connection: close`, then closes the connection: the app never runs, nothing reaches an
upstream, and bytes pipelined behind the bad head are never parsed. The search resumes where it left off
(minus three bytes, for a CRLFCRLF cut across reads), so a head that trickles in costs O(n) as in h11. Only
hypercorn's server connections are strict; h11 elsewhere in the process (httpx's client side, the demo
upstream) is untouched.

`install()` checks the hypercorn and h11 versions and the seams before patching, and refuses clearly otherwise.
"""

from __future__ import annotations

import re
from typing import Any

import h11
from h11._receivebuffer import ReceiveBuffer

from proxy.patch_versions import require

SUPPORTED_HYPERCORN_PREFIX = "0.18."
SUPPORTED_H11_PREFIX = "0.16."
_MARK = "__teeproxy_h11_strict__"
# The end of a header section, or a bare LF before it: whichever the search meets first decides.
_HEAD_END_OR_BARE_LF = re.compile(rb"\r\n\r\n|(?<!\r)\n")


class StrictReceiveBuffer(ReceiveBuffer):
    """h11's receive buffer, except that a header section must end each of its lines with CRLF."""

    def __init__(self) -> None:
        super().__init__()
        self._checked = 0  # how many of the buffer's first bytes are known to hold no bare LF and no CRLFCRLF

    def _extract(self, count: int) -> bytearray:
        self._checked = 0  # the buffer now starts elsewhere
        return super()._extract(count)

    def maybe_extract_lines(self) -> list[bytearray] | None:
        data: bytearray = self._data
        # A leading CRLF is h11's "no request line" (or an empty trailer section): h11 decides that itself.
        if not data.startswith(b"\r\n"):
            match = _HEAD_END_OR_BARE_LF.search(data, max(0, self._checked - 3))
            if match is None:
                self._checked = len(data)
            elif match[0] == b"\n":
                raise h11.LocalProtocolError("bare LF in a header section (RFC 9112 §2.2)")
        return super().maybe_extract_lines()


def install() -> None:
    """Make hypercorn's HTTP/1.1 server refuse bare LFs in request heads. Idempotent; raises RuntimeError if
    hypercorn or h11 is not what this module was written against."""
    versions = require(
        "h11_strict",
        {"hypercorn": SUPPORTED_HYPERCORN_PREFIX, "h11": SUPPORTED_H11_PREFIX},
        "check whether it still accepts a bare LF as a line end",
    )
    from hypercorn.protocol import h11 as hc_h11

    protocol_cls: Any = hc_h11.H11Protocol
    if getattr(protocol_cls.__init__, _MARK, False):
        return
    probe = h11.Connection(h11.SERVER)
    buffer = getattr(probe, "_receive_buffer", None)
    missing = [
        name
        for name, present in (
            ("h11.Connection._receive_buffer", type(buffer) is ReceiveBuffer),
            ("ReceiveBuffer._data", isinstance(getattr(buffer, "_data", None), bytearray)),
            ("ReceiveBuffer._extract", callable(getattr(ReceiveBuffer, "_extract", None))),
            ("ReceiveBuffer.maybe_extract_lines", callable(getattr(ReceiveBuffer, "maybe_extract_lines", None))),
            ("H11Protocol.connection", "connection" in protocol_cls.__init__.__code__.co_names),
        )
        if not present
    ]
    if missing:
        found = " and ".join(f"{name} {version}" for name, version in versions.items())
        raise RuntimeError(f"{found} lack what proxy.h11_strict patches: {', '.join(missing)}")
    lax = ReceiveBuffer()
    lax += b"GET / HTTP/1.1\nhost: x\n\n"
    if lax.maybe_extract_lines() is None:
        raise RuntimeError(f"h11 {versions['h11']} no longer takes a bare LF as a line end; drop proxy.h11_strict")

    original_init = protocol_cls.__init__

    def init(self: Any, *args: Any, **kwargs: Any) -> None:
        original_init(self, *args, **kwargs)
        connection = self.connection
        # Made a moment ago, it has received nothing: swapping its empty buffer loses no byte.
        if isinstance(connection, h11.Connection) and not connection._receive_buffer:
            connection._receive_buffer = StrictReceiveBuffer()

    setattr(init, _MARK, True)
    protocol_cls.__init__ = init
