"""The client's connection, as a request's task may see it.

hypercorn gives an ASGI app no handle on the connection, and over ASGI 2.1 a `send()` after the client has gone
returns as if it had been written. `proxy.lost_connection` sets `CLIENT_TRANSPORT` for each connection hypercorn
serves, before any of its tasks start, so every request task on it inherits the value (asyncio copies the
context into each task it creates). The relay reads it to count only bytes the connection took while it was
open (`bytes_to_client`). None when the app runs under another server.
"""

from __future__ import annotations

import asyncio
from contextvars import ContextVar

CLIENT_TRANSPORT: ContextVar[asyncio.BaseTransport | None] = ContextVar("teeproxy_client_transport", default=None)
