"""The structured access log: one JSON line per request that went upstream, written when it ends.

Off by default; `[log] access = true` turns it on, to standard error, or to `[log] access_path` (appended to,
relative to the config file like the ledger's path). Each line is one `write()` on a file opened with
O_APPEND, so the lines of several worker processes sharing one file never interleave.

A line holds the request's identity (request id, key name, provider, dialect, model, endpoint), how it ended
(outcome, HTTP status, upstream attempts), its timings, its usage and its cost: the ledger
record's figures less the upstream's raw usage JSON. Never a secret: no header, no key, no body is in the
observer seam at all, so none can reach this file.
"""

from __future__ import annotations

import logging
import os
import sys

import msgspec

from proxy.observe import Finished, Started

log = logging.getLogger("teeproxy")


class AccessLine(msgspec.Struct, kw_only=True):
    """Field names are a public contract, like the ledger's."""

    time: str  # the request's start, ISO 8601 UTC
    request_id: str
    key_name: str | None
    provider: str | None
    dialect: str
    model: str | None
    endpoint: str
    outcome: str
    http_status: int | None
    attempts: int
    streaming: bool
    ttfb_ms: float | None
    max_gap_ms: float | None
    duration_ms: float
    bytes_to_client: int
    input_tokens: int
    cached_tokens: int
    cache_write_tokens: int
    output_tokens: int
    reasoning_tokens: int
    usage_status: str
    cost_usd: str | None
    cost_status: str


_encode = msgspec.json.Encoder().encode


def access_line(event: Finished) -> AccessLine:
    r = event.record
    return AccessLine(
        time=r.time,
        request_id=r.request_id,
        key_name=r.key_name,
        provider=r.provider,
        dialect=event.dialect,
        model=r.model,
        endpoint=r.endpoint,
        outcome=r.outcome,
        http_status=r.http_status,
        attempts=event.attempts,
        streaming=event.streaming,
        ttfb_ms=_ms(event.ttfb_s),
        max_gap_ms=_ms(event.max_gap_s),
        duration_ms=round(r.duration_ms, 3),
        bytes_to_client=r.bytes_to_client,
        input_tokens=r.input_tokens,
        cached_tokens=r.cached_tokens,
        cache_write_tokens=r.cache_write_tokens,
        output_tokens=r.output_tokens,
        reasoning_tokens=r.reasoning_tokens,
        usage_status=r.usage_status,
        cost_usd=r.cost,
        cost_status=r.cost_status,
    )


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 3)


class AccessLog:
    """An `Observer` writing one line per finished request."""

    def __init__(self, path: str | None = None) -> None:
        self.path = path
        if path is None:
            self._fd = sys.stderr.fileno()
            self._own_fd = False
        else:
            self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640)
            self._own_fd = True
        self._failed = False

    def request_started(self, event: Started) -> None:
        pass

    def request_finished(self, event: Finished) -> None:
        line = _encode(access_line(event)) + b"\n"
        try:
            os.write(self._fd, line)
        except OSError as exc:
            if not self._failed:  # once, not once per request
                log.error("access log %s: write failed: %s", self.path or "<stderr>", exc)
                self._failed = True

    def close(self) -> None:
        if self._own_fd:
            os.close(self._fd)
            self._own_fd = False
