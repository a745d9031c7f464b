"""Keep-alives for silent streams: one ticker per worker, not a timer per stream.

A reasoning model can think for minutes before its first token; some clients, load balancers and corporate
proxies give up on a connection that carries nothing for 30-60 s. While an upstream is silent, each stream that
has a keep-alive in its dialect (`Dialect.keepalive`: an SSE comment line for OpenAI and Anthropic, a blank
line for Gemini's SSE, nothing for binary or JSON-array streams) gets it every `[server] keepalive_ping_s`
seconds, only between frames (the client has whole frames so far) and never while the relay is writing.

The ticker task runs while there are streams to watch, wakes a few times per interval, and costs nothing per
chunk: the relay only stamps the time of its last write (which it does anyway for the gap metric).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Protocol


class Pingable(Protocol):
    last_write_at: float

    def can_ping(self) -> bool: ...

    async def ping(self) -> None: ...


class KeepAlive:
    def __init__(self, interval_s: float) -> None:
        self.interval_s = interval_s
        self._streams: set[Pingable] = set()
        self._task: asyncio.Task[None] | None = None

    def add(self, stream: Pingable) -> None:
        self._streams.add(stream)
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._tick())

    def discard(self, stream: Pingable) -> None:
        self._streams.discard(stream)

    async def _tick(self) -> None:
        step_s = min(1.0, self.interval_s / 4)
        while self._streams:
            await asyncio.sleep(step_s)
            now = time.perf_counter()
            for stream in list(self._streams):
                if now - stream.last_write_at >= self.interval_s and stream.can_ping():
                    try:
                        await stream.ping()
                    except Exception:  # a client that left is the relay's to notice, not the ticker's
                        self._streams.discard(stream)

    async def aclose(self) -> None:
        self._streams.clear()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
