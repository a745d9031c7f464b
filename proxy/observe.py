"""Who else hears about a request: metrics, the access log, the live view.

`forward.py` tells every observer in `ProxyState.observers` twice per request that went upstream: when it is
sent (`request_started`), and when it has ended and its ledger record is written (`request_finished`, with the
record and the per-stream timings). Nothing is reported per chunk: per-stream figures (time to first byte, the
largest gap between two chunks) are gathered by the relay in plain attributes and handed over once at the end.
Observers must be cheap and must not raise (the ledger record is already safe when they run; an observer that
fails is logged and skipped).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from proxy.ledger import LedgerRecord


@dataclass(frozen=True, slots=True)
class Started:
    request_id: str
    key_name: str | None
    provider: str
    dialect: str
    model: str
    endpoint: str


@dataclass(frozen=True, slots=True)
class Finished:
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
