"""HTTP/2 backpressure for hypercorn 0.18: a client whose flow-control window is closed makes the relay wait.

Why: hypercorn queues each HTTP/2 stream's body in a `StreamBuffer`; `push` (the app's `send`) waits once the
buffer holds `BUFFER_HIGH_WATER` bytes, until `pop` (the connection's sender) has taken it below
`BUFFER_LOW_WATER`. But when the client's window is closed, the sender calls `pop(0)`, which takes nothing and
still sets the "drained" event (it compares the length of what it took, not of what is left, with the low-water
mark). The app's `send` returns at once, the relay reads on, and the whole upstream body piles up in the buffer
(RSS grew ~120 MiB/s against a client that had read 410 bytes). HTTP/1.1 has no such problem: hypercorn waits
for the transport to drain.

Theory of operation: `StreamBuffer.pop` is wrapped, nothing of hypercorn's is copied. When what will be left
after the pop is still at or above the low-water mark, the buffer's `_paused` event is swapped for a throwaway
one for the duration of the call, so the original's `set()` wakes no one; otherwise the original runs as is.
The app's `send` then blocks until the client has taken the data, the relay stops reading, and TCP pushes back
on the upstream. Per stream the proxy then holds at most `BUFFER_HIGH_WATER` (32 KiB) plus one upstream read.

`install()` checks the hypercorn version and the seam before patching, and refuses clearly otherwise.
"""

from __future__ import annotations

from typing import Any

from proxy.patch_versions import require

SUPPORTED_PREFIX = "0.18."
_MARK = "__teeproxy_h2_backpressure__"


def install() -> None:
    require("h2_backpressure", {"hypercorn": SUPPORTED_PREFIX}, "check how its h2 streams wait for the window")
    from hypercorn.protocol import h2 as hypercorn_h2

    buffer_class: Any = hypercorn_h2.StreamBuffer
    if getattr(buffer_class.pop, _MARK, False):
        return
    low_water = hypercorn_h2.BUFFER_LOW_WATER
    original = buffer_class.pop
    if not hasattr(buffer_class, "push") or "_paused" not in buffer_class.__init__.__code__.co_names:
        raise RuntimeError("hypercorn's StreamBuffer is not what proxy.h2_backpressure expects")

    async def pop(self: Any, max_length: int) -> bytes:
        left = len(self.buffer) - min(len(self.buffer), max_length)
        if left < low_water:
            data: bytes = await original(self, max_length)
            return data
        paused = self._paused
        self._paused = type(paused)()  # the original's set() lands here: the app stays paused
        try:
            data = await original(self, max_length)
        finally:
            self._paused = paused
        return data

    setattr(pop, _MARK, True)
    buffer_class.pop = pop
