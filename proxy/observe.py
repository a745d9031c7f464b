"""Who else hears about a request: metrics, the access log, the live view.

`forward.py` tells every observer in `ProxyState.observers` twice per request that went upstream: when it is
sent (`request_started`), and when it has ended and its ledger record is written (`request_finished`, with the
record and the per-stream timings). Nothing is reported per chunk: per-stream figures (time to first byte, the
largest gap between two chunks) are gathered by the relay in plain attributes and handed over once at the end.
Observers must be cheap and must not raise (the ledger record is already safe when they run; an observer that
fails is logged and skipped).
"""

from __future__ import annotations

from typing import Protocol

import msgspec

from proxy.ledger import LedgerRecord

# msgspec Structs rather than frozen dataclasses: made twice per request, and a frozen dataclass's __init__ sets
# each field through object.__setattr__ (~0.7 µs against ~0.06 µs). gc=False: they hold no cycles.


class Started(msgspec.Struct, frozen=True, gc=False):
    request_id: str
    key_name: str | None
    provider: str
    dialect: str
    model: str
    endpoint: str


class Finished(msgspec.Struct, frozen=True, gc=False):
    record: LedgerRecord
    dialect: str
    attempts: int
    # Seconds; None when no body byte reached the client.
    ttfb_s: float | None
    max_gap_s: float | None
    streaming: bool


class Observer(Protocol):
    def request_started(self, event: Started) -> None: ...

    def request_finished(self, event: Finished) -> None: ...
