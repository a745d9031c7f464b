"""The client's departure as a callback, for hypercorn 0.18: no task per request waiting on `receive()`.

Why: over ASGI 2.1 the app learns that the client has gone only from `receive()` returning `http.disconnect`, so
each request had a task of its own parked on `receive()` from the end of its body to the end of its response,
to cancel the request when that message came. Starting that task and cancelling it again cost ~13 µs of CPU a
request, 3.5 % of teeproxy's whole cost at c1 and at c50 (qb A/B, three runs each).

Theory of operation: `HTTPStream.handle` is wrapped, nothing of hypercorn's is copied. hypercorn puts
`http.disconnect` on the app's queue when its stream handles `StreamClosed` (the client closed or reset the
connection, HTTP/1.1 or an HTTP/2 stream): right after hypercorn has done so, the wrapper calls the callback a
request registered on that stream, once. So the callback runs exactly when `receive()` would have returned
`http.disconnect`; the message stays on the queue, unread, and goes with the stream. A stream closed before the
callback is registered is left to `receive()`, which already holds its `http.disconnect`. `listen(send,
callback)` finds the stream behind the ASGI `send` hypercorn gave the app; where there is none (another server,
a wrapped `send`) it returns None, and the caller waits on `receive()` as before.

`install()` checks the hypercorn version and the seam before patching, and refuses clearly otherwise.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from proxy import client_connection
from proxy.asgi_types import Send
from proxy.patch_versions import require

SUPPORTED_PREFIX = "0.18."
_MARK = "__teeproxy_disconnect_signal__"
_CALLBACK = "_teeproxy_on_disconnect"


def install() -> None:
    version = require(
        "disconnect_signal", {"hypercorn": SUPPORTED_PREFIX}, "check how its streams report a client that has gone"
    )["hypercorn"]
    from hypercorn.protocol import http_stream
    from hypercorn.protocol.events import StreamClosed

    stream_cls: Any = http_stream.HTTPStream
    if stream_cls.__dict__.get(_MARK, False):
        return
    if not callable(getattr(stream_cls, "handle", None)):
        raise RuntimeError(f"hypercorn {version} is not what proxy.disconnect_signal expects (no HTTPStream.handle)")
    original = stream_cls.handle

    async def handle(self: Any, event: Any) -> None:
        await original(self, event)
        if type(event) is StreamClosed:
            callback = self.__dict__.pop(_CALLBACK, None)
            if callback is not None:
                callback()

    def listen(send: Send, callback: Callable[[], None]) -> Callable[[], None] | None:
        stream = getattr(send, "__self__", None)
        if not isinstance(stream, stream_cls):
            return None
        if getattr(stream, "closed", False):  # gone already: `receive()` holds `http.disconnect`, let it say so
            return None
        stream.__dict__[_CALLBACK] = callback
        return lambda: stream.__dict__.pop(_CALLBACK, None)  # a stream serves one request: its callback is ours

    stream_cls.handle = handle
    setattr(stream_cls, _MARK, True)
    client_connection.on_disconnect = listen
