"""The state one request carries between the phases of `proxy.forward` and the relay (`proxy.relay`).

`identity_headers` are on every response the proxy sends or relays: the request id, the provider and model,
and how many attempts it took and why (proxy.failover).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from proxy import headers as h
from proxy.asgi_types import Scope
from proxy.ledger import utc_now_iso
from proxy.metering import Meter
from proxy.providers import DEFAULT
from proxy.providers.base import Dialect, Route, Upstream

if TYPE_CHECKING:
    from proxy.relay import ClientStream

# What ends an SSE frame: the client holds whole frames when the last byte it got ends one.
FRAME_ENDS = (b"\n\n", b"\r\n\r\n", b"\r\r")


class ClientGone(Exception):
    """The client disconnected before its request body arrived."""


@dataclass(slots=True)
class Exchange:
    """State carried between the phases of one request."""

    request_id: str
    started_at: float
    started_time: str  # the ledger's `time`: when the request started (ISO 8601, UTC, microseconds)
    endpoint_path: str
    dialect: Dialect = DEFAULT
    key_name: str | None = None
    route: Route | None = None
    model: str | None = None
    upstream: Upstream | None = None
    strip_usage_frame: bool = False  # the proxy caused a usage frame the client did not ask for
    inline_usage: bool = False
    trailers: bool = False
    sent_upstream: bool = False
    response_started: bool = False
    status: int | None = None
    outcome: str = "completed"
    first_byte_at: float | None = None
    last_byte_at: float | None = None
    max_gap_s: float | None = None  # the longest wait between two body writes to the client
    streaming: bool = False
    attempts: int = 0
    reason: str = "none"  # how the serving provider was chosen: routed, weighted, failover:<what failed>
    client_gone: bool = False
    done: bool = False  # the response is complete: a disconnect now changes nothing
    close_connection: bool = False  # answer with `Connection: close` (HTTP/1.1)
    shutdown: bool = False  # the drain ended this request (proxy.drain)
    sse: bool = False
    sink: ClientStream | None = None
    bytes_to_client: int = 0
    meter: Meter | None = None


def new_exchange(scope: Scope) -> Exchange:
    given = h.get(scope["headers"], h.REQUEST_ID)
    # A fresh id: 128 random bits as 32 hex digits (the shape of a uuid4's hex, at a seventh of its cost).
    request_id = given.decode() if given is not None and h.well_formed_request_id(given) else os.urandom(16).hex()
    return Exchange(
        request_id=request_id,
        started_at=time.perf_counter(),
        started_time=utc_now_iso(),
        endpoint_path=scope["path"],
    )


def identity_headers(ex: Exchange) -> h.Headers:
    """On every response; provider and model are empty when the request never got that far."""
    return [
        (b"x-teeproxy-request-id", ex.request_id.encode()),
        (b"x-teeproxy-provider", ex.upstream.provider.name.encode() if ex.upstream else b""),
        (b"x-teeproxy-model", (ex.model or "").encode("utf-8", "replace")),
        (b"x-teeproxy-attempts", str(ex.attempts).encode()),
        (b"x-teeproxy-reason", ex.reason.encode()),
    ]
