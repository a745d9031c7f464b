"""Python's cyclic garbage collector, set for a relay, and its pauses timed.

A relay allocates a few hundred container objects per stream, nearly all freed by reference counting when the
stream ends; the collector finds little garbage but, with CPython's defaults (700, 10, 10), walks every live
object of the young generations many times a second and the whole heap (every object start-up made: modules,
the price list, the config) every few seconds. With 1,000 open streams that was a quarter of the paced CPU
and full collections of 100-150 ms.

`tune` runs once per worker after start-up:

* `gc.freeze()` moves everything start-up allocated into the permanent generation, which no collection
  walks again.
* The young generation's threshold goes from 700 to `GEN0_THRESHOLD` allocations (net of those freed), so
  that a collection comes per many requests' worth of objects, not per few, and the middle one is collected
  every `GEN1_MULTIPLIER` young collections, so each stays small. A full collection walks every live object
  (at 10,000 open streams, a million and a half: ~300 ms with the worker stopped), so CPython's own turn for
  it is pushed far out (`GEN2_MULTIPLIER`) and `IdleCollector` runs it instead when the worker has no request
  in flight. Measured on `bench` paced10000 (2 workers, 10,000 streams): 50,000 / 10 / 10 gave 38
  collections and pauses up to 250 ms; 10,000 / 5 / 10 gave 205 and two full ones of 270 ms each;
  10,000 / 2 / 1000 gave 202, 1.0 s in all, none over 100 ms.

That is safe because a request, and a connection, leave no cyclic garbage behind: everything is freed by
reference counting when it ends (the exchange drops its client stream, `proxy.lost_connection` and
`proxy.transport_cycles` break hypercorn's and asyncio's connection cycles; `tests/test_connection_cycles.py`
holds that). Before, each closed client connection left ~10 KiB for a full collection to find, and memory grew
wave after wave.

`GcWatch` times every collection through `gc.callbacks`. The callback runs inside whatever allocation
triggered the collection, so it only appends to a list (no locks: a metric's lock could be the one that
allocation holds); the metrics sampler moves the pauses into `teeproxy_gc_pause_seconds` every second.
"""

from __future__ import annotations

import gc
import time
from typing import Any

GEN0_THRESHOLD = 10_000
GEN1_MULTIPLIER = 2
GEN2_MULTIPLIER = 1000
# A full collection runs when the worker is idle (no request in flight), at most this often and only if requests
# were served since the last one; under load without a pause, only when CPython's own (rare) turn comes.
IDLE_FULL_COLLECTION_EVERY_S = 30.0
# Pauses kept between two samples at most (a bound if the sampler stalls).
_MAX_PENDING = 10_000


def tune() -> None:
    gc.collect()
    gc.freeze()
    gc.set_threshold(GEN0_THRESHOLD, GEN1_MULTIPLIER, GEN2_MULTIPLIER)


class IdleCollector:
    """`maybe_collect(in_flight, started)` from the metrics sampler, with the requests in flight and the count of
    requests ever started: a full collection when nothing is in flight, requests were served since the last one,
    and `every_s` has passed. Cheap to call every second."""

    def __init__(self, every_s: float = IDLE_FULL_COLLECTION_EVERY_S) -> None:
        self.every_s = every_s
        self._last = time.monotonic()
        self._started_at_last = 0

    def maybe_collect(self, in_flight: int, started: int, now: float | None = None) -> bool:
        now = time.monotonic() if now is None else now
        if in_flight or started == self._started_at_last or now - self._last < self.every_s:
            return False
        self._last = now
        self._started_at_last = started
        gc.collect()
        return True


class GcWatch:
    """`gc.callbacks` member while installed: (generation, seconds) of each collection, taken by `drain`."""

    def __init__(self) -> None:
        self._started = 0.0
        self._pending: list[tuple[int, float]] = []

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        elif len(self._pending) < _MAX_PENDING:
            self._pending.append((info["generation"], time.perf_counter() - self._started))

    def install(self) -> None:
        if self not in gc.callbacks:
            gc.callbacks.append(self)

    def uninstall(self) -> None:
        if self in gc.callbacks:
            gc.callbacks.remove(self)

    def drain(self) -> list[tuple[int, float]]:
        pending, self._pending = self._pending, []
        return pending
