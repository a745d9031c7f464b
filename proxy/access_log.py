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


class AccessLine(msgspec.Struct):
    """Field names are a public contract, like the ledger's (and `access_line` builds it in their order)."""

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
    ttfb_s, max_gap_s = event.ttfb_s, event.max_gap_s
    # Positional, in the fields' order: a Struct of this size takes keywords at a third of the speed.
    return AccessLine(
        r.time,
        r.request_id,
        r.key_name,
        r.provider,
        event.dialect,
        r.model,
        r.endpoint,
        r.outcome,
        r.http_status,
        event.attempts,
        event.streaming,
        None if ttfb_s is None else round(ttfb_s * 1000, 3),
        None if max_gap_s is None else round(max_gap_s * 1000, 3),
        round(r.duration_ms, 3),
        r.bytes_to_client,
        r.input_tokens,
        r.cached_tokens,
        r.cache_write_tokens,
        r.output_tokens,
        r.reasoning_tokens,
        r.usage_status,
        r.cost,
        r.cost_status,
    )


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
