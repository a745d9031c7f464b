"""One HTTP/1.1 body chunk from the app to the socket in one step, for hypercorn 0.18's asyncio server.

Why: a streamed chunk goes, in hypercorn, from `HTTPStream.app_send` to a `Body` event, `H11Protocol.stream_send`,
an `h11.Data` event through h11's state machine and chunked writer, a `RawData` event, `TCPServer.protocol_send`,
its send lock, `StreamWriter.write` and `drain`: eight coroutine levels and five objects for what ends as one
`transport.write(b"%x\\r\\n" + data + b"\\r\\n")`. Profiled on 1,000 paced streams (`bench`), that path was a third
of the proxy's CPU per chunk, more than the socket write itself.

Theory of operation: `HTTPStream.app_send` is wrapped, nothing of hypercorn's is copied. A message takes the
short path only when it is a middle chunk of a chunked HTTP/1.1 response that hypercorn would write as is:
`http.response.body` with `more_body`, a non-empty body, the stream in its RESPONSE state, an h11 connection
whose own state is SEND_BODY with h11's chunked writer (so h11 would only frame it: a Data event changes no h11
state), served by hypercorn's asyncio `TCPServer` whose send lock is free and whose transport is open. Then the
framed chunk is written to the transport directly, and if the transport could not take it all (its buffer is not
empty), the writer is drained under the server's send lock, as `protocol_send` does: backpressure is kept.
Anything else (the first and last messages, HTTP/2, trailers, a closing connection, a held lock) goes through
hypercorn unchanged, and so through `proxy.http11_trailers` and `proxy.lost_connection`. (Holding the response
head to write it with the first chunk was tried and measured no better at c1: left out.)

`install()` checks the hypercorn and h11 versions and the seams before patching, and refuses otherwise.
"""

from __future__ import annotations

from typing import Any

from proxy import client_connection
from proxy.patch_versions import require

SUPPORTED_PREFIX = "0.18."
H11_PREFIX = "0.16."
_MARK = "__teeproxy_h11_body_send__"
_PATH = "_teeproxy_body_path"


def install() -> None:
    versions = require("h11_body_send", {"hypercorn": SUPPORTED_PREFIX, "h11": H11_PREFIX}, "check the body path")
    version = versions["hypercorn"]
    import h11
    from h11._writers import ChunkedWriter
    from hypercorn.asyncio.tcp_server import TCPServer
    from hypercorn.events import Closed
    from hypercorn.protocol import http_stream
    from hypercorn.protocol.h11 import H11Protocol

    stream_cls: Any = http_stream.HTTPStream
    if stream_cls.__dict__.get(_MARK, False):  # on the class: other patches may wrap app_send over this one
        return
    original = stream_cls.app_send
    response_state = getattr(getattr(http_stream, "ASGIHTTPState", None), "RESPONSE", None)
    if response_state is None:
        raise RuntimeError(f"hypercorn {version} is not what proxy.h11_body_send expects (no ASGIHTTPState)")
    # What the short path needs is found once per response, on its first body message, and kept on the stream:
    # the h11 connection, the server's send lock and writer, the transport, the server; False where the stream does not
    # qualify (HTTP/2, a WebSocket, another server class, a writer that is not h11's chunked one). The
    # instance attributes are looked up with a default: where one is missing, hypercorn's own path is taken.
    send_body = h11.SEND_BODY

    def body_path(stream: Any) -> tuple[Any, Any, Any, Any, Any] | bool:
        protocol: Any = getattr(stream.send, "__self__", None)
        if type(protocol) is not H11Protocol:
            return False
        connection = protocol.connection
        server = getattr(protocol.send, "__self__", None)
        lock = getattr(server, "send_lock", None)
        writer = getattr(server, "writer", None)
        if (
            type(server) is not TCPServer
            or type(getattr(connection, "_writer", None)) is not ChunkedWriter
            or lock is None
            or writer is None
        ):
            return False
        return connection, lock, writer, writer.transport, server

    async def app_send(self: Any, message: Any) -> None:
        if (
            message is not None
            and message["type"] == "http.response.body"
            and self.state is response_state
            and message.get("more_body", False)
        ):
            body = message.get("body", b"")
            path = self.__dict__.get(_PATH)
            if path is None:
                path = self.__dict__[_PATH] = body_path(self)
            if body and path:
                connection, lock, writer, transport, server = path
                if connection.our_state is send_body and not lock.locked() and not transport.is_closing():
                    transport.write(b"%x\r\n%b\r\n" % (len(body), body))
                    if transport.get_write_buffer_size():
                        async with lock:
                            try:
                                await writer.drain()
                            except (ConnectionError, RuntimeError):
                                await server.protocol.handle(Closed())  # as protocol_send does
                    return
        await original(self, message)

    class DirectWriter:
        """`proxy.client_connection.DirectBodyWriter` on the short path's conditions, with an empty socket
        buffer besides: what `app_send` would write without waiting, written without a coroutine."""

        __slots__ = ("_stream", "_connection", "_lock", "_transport")

        def __init__(self, stream: Any, connection: Any, lock: Any, transport: Any) -> None:
            self._stream = stream
            self._connection = connection
            self._lock = lock
            self._transport = transport

        def ready(self) -> bool:
            transport = self._transport
            return (
                self._stream.state is response_state
                and self._connection.our_state is send_body
                and not self._lock.locked()
                and not transport.is_closing()
                and not transport.get_write_buffer_size()
            )

        def write(self, body: bytes) -> None:
            if body:
                self._transport.write(b"%x\r\n%b\r\n" % (len(body), body))

    def direct_writer(send: Any) -> DirectWriter | None:
        stream = getattr(send, "__self__", None)
        if not isinstance(stream, stream_cls) or getattr(send, "__func__", None) is not app_send:
            return None
        path = stream.__dict__.get(_PATH)
        if path is None:
            path = stream.__dict__[_PATH] = body_path(stream)
        if not path:
            return None
        connection, lock, _, transport, _ = path
        return DirectWriter(stream, connection, lock, transport)

    stream_cls.app_send = app_send
    setattr(stream_cls, _MARK, True)
    client_connection.direct_body_writer = direct_writer
