"""Closed asyncio connections freed by reference counting, not left for the cyclic garbage collector.

CPython 3.11's socket transport keeps a bound method of itself (`_SelectorSocketTransport._read_ready_cb`), so
every closed connection leaves a cycle: the transport, its dict, its socket. `proxy.collector` makes full
collections rare, so on a proxy that sees many short-lived connections these cycles would pile up (about 2 KiB
a connection) between them. `let_go` breaks the cycle once the transport has finished closing (its socket is
gone); it is called for every client connection hypercorn closes (`proxy.lost_connection`) and every upstream
connection (`proxy.upstream_conn`). On a transport built otherwise it does nothing.
"""

from __future__ import annotations

import asyncio
from typing import Any


def let_go(transport: asyncio.BaseTransport | None) -> None:
    inner: Any = transport
    ssl_protocol = getattr(transport, "_ssl_protocol", None)  # TLS: the socket transport is beneath the SSL one
    if ssl_protocol is not None:
        inner = getattr(ssl_protocol, "_transport", None)
    if inner is not None and getattr(inner, "_sock", True) is None and hasattr(inner, "_read_ready_cb"):
        inner._read_ready_cb = None  # closed (`_call_connection_lost` ran): nothing will read from it again
