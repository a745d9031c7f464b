"""Graceful shutdown: let in-flight requests finish, then end the rest honestly.

On the first SIGTERM (or SIGINT) the server stops accepting connections and `begin` starts the grace period:
requests in flight carry on; a new request on a kept-alive connection gets 503 with `Connection: close`. When
`[server] graceful_timeout_s` runs out, or on a second signal, `end_now` ends every request still in flight:
each one's task is cancelled with `shutdown` set on its exchange, and `forward.handle` answers that the way a
client can tell: the dialect's in-stream error event and a proper end of the stream (or a 503 before the head),
then its ledger record as always. Only then does the server finish shutting down, so the ledger's final flush
sees every record.
"""

from __future__ import annotations

import asyncio
from typing import Protocol


class Stoppable(Protocol):
    shutdown: bool
    done: bool


class Drain:
    def __init__(self) -> None:
        self.draining = False
        self._inflight: dict[asyncio.Task[None], Stoppable] = {}
        self.started = 0  # requests ever tracked (proxy.collector's idle collection reads it)
        self._timer: asyncio.TimerHandle | None = None
        self._idle = asyncio.Event()
        self._idle.set()

    def track(self, task: asyncio.Task[None], exchange: Stoppable) -> None:
        self.started += 1
        self._inflight[task] = exchange
        self._idle.clear()

    def untrack(self, task: asyncio.Task[None]) -> None:
        self._inflight.pop(task, None)
        if not self._inflight:
            self._idle.set()

    def begin(self, grace_s: float) -> None:
        """The first call starts the grace period; a second one ends everything now."""
        if self.draining:
            self.end_now()
            return
        self.draining = True
        if not self._inflight:
            return
        self._timer = asyncio.get_running_loop().call_later(grace_s, self.end_now)

    def end_now(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for task, exchange in list(self._inflight.items()):
            if not exchange.done and not exchange.shutdown:
                exchange.shutdown = True
                task.cancel()

    @property
    def inflight(self) -> int:
        return len(self._inflight)

    async def wait_idle(self, timeout_s: float) -> bool:
        try:
            async with asyncio.timeout(timeout_s):
                await self._idle.wait()
        except TimeoutError:
            return False
        return True
