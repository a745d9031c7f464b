"""The client's connection, as a request's task may see it.

hypercorn gives an ASGI app no handle on the connection, and over ASGI 2.1 a `send()` after the client has gone
returns as if it had been written. `proxy.lost_connection` sets `CLIENT_TRANSPORT` for each connection hypercorn
serves, before any of its tasks start, so every request task on it inherits the value (asyncio copies the
context into each task it creates). The relay reads it to count only bytes the connection took while it was
open (`bytes_to_client`). None when the app runs under another server.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from contextvars import ContextVar
from typing import Protocol

from proxy.asgi_types import Send

CLIENT_TRANSPORT: ContextVar[asyncio.BaseTransport | None] = ContextVar("teeproxy_client_transport", default=None)


class DirectBodyWriter(Protocol):
    """A response's middle body chunks written to the client's socket without a coroutine: `ready()` says
    whether the next one may go this way now (the server would write it as is, and the socket's buffer is
    empty: no backpressure to wait for); then `write(body)` writes it. When not ready, the ASGI `send()` path
    is the one to take, and it waits for the socket as usual."""

    def ready(self) -> bool: ...

    def write(self, body: bytes) -> None: ...


def _none(send: Send) -> DirectBodyWriter | None:
    return None


# The direct writer for a response whose `http.response.start` has been sent, given the ASGI `send` it was
# sent with; None where there is none (HTTP/2, another server, a wrapped `send`). `proxy.h11_body_send` sets it
# when it is installed.
direct_body_writer: Callable[[Send], DirectBodyWriter | None] = _none


def _cannot(send: Send, callback: Callable[[], None]) -> Callable[[], None] | None:
    return None


# Call `callback` once, when the client has gone (when `receive()` would return `http.disconnect`), given the
# request's ASGI `send`; returns the function that stops listening, or None where the server cannot say (then
# wait on `receive()`). `proxy.disconnect_signal` sets it when it is installed.
on_disconnect: Callable[[Send, Callable[[], None]], Callable[[], None] | None] = _cannot
