"""A flush that runs a little later, once, for everything noted until then.

The metrics (`proxy.metrics`) and the live view (`proxy.live`) note each request's events when they happen and do
their work for all of them together: in warm caches, and with one lock or one `write()` for many requests instead
of several for each. `FlushSoon` is the policy both use: the first `due()` since the flush last ran arms one
`call_later`; outside an event loop (a script, a test) there is nothing to wait for, and the flush runs at once;
and `noted()` runs it at once when `max_events` are waiting, so a batch stays bounded under load.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable


class FlushSoon:
    __slots__ = ("_flush", "_after_s", "_max_events", "_handle")

    def __init__(self, flush: Callable[[], None], after_s: float, max_events: int) -> None:
        self._flush = flush
        self._after_s = after_s
        self._max_events = max_events
        self._handle: asyncio.TimerHandle | None = None

    def noted(self, waiting: int) -> None:
        """An event was noted, and `waiting` wait for the flush now: it runs at once when they are `max_events`,
        else within `after_s`."""
        if waiting >= self._max_events:
            self._flush()
        else:
            self.due()

    def due(self) -> None:
        """Something was noted: flush within `after_s`."""
        if self._handle is not None:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self._flush()
            return
        self._handle = loop.call_later(self._after_s, self._flush)

    def ran(self) -> None:
        """The flush ran (on time or early): the next `due()` arms the timer again."""
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
