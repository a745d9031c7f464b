"""No writes to a lost connection in hypercorn 0.18's asyncio server: what used to flood the log with asyncio's
"socket.send() raised exception." (about 46,000 lines in a 100,000-stream soak).

Why: hypercorn speaks ASGI 2.1, so an app's `send()` does not raise after the client has gone, and the app
learns of it only from `receive()` returning `http.disconnect`. Until it does, its body keeps coming, and
hypercorn keeps writing it: `HTTPStream.app_send` does not look at its `closed` flag, so each
`http.response.body` still becomes a `Body` event, h11 frames it (`H11Protocol.stream_send`; over HTTP/2 the
headers and trailers of open streams are still flushed), and `TCPServer.protocol_send` hands the bytes to
`StreamWriter.write` unconditionally. asyncio drops a write to a transport whose connection is lost, and from
the sixth such write on (`LOG_THRESHOLD_FOR_CONNLOST_WRITES`) logs a warning for each one (over TLS, "SSL
connection is closed"). A relay reading a fast upstream sends dozens of chunks before it learns of the
disconnect: tens of warnings per stream the client abandoned, none of them news.

Theory of operation: `TCPServer.protocol_send` is wrapped, nothing of hypercorn's is copied. Raw data for a
transport that is already closing (`is_closing()`: the connection was lost, reset or closed) is not written;
instead the protocol is told `Closed`, exactly as hypercorn tells it when a write fails, so the streams and the
app see what they saw before (an `http.disconnect`), minus the doomed write and its log line. Every other event,
and every write to a live transport, goes to hypercorn unchanged. The check is on the transport, not on the
stream's `closed` flag, on purpose: that flag is also set when a client half-closes (sends its FIN and waits for
the response), and such a client still gets what the app sends.

Each connection's transport is in `proxy.client_connection.CLIENT_TRANSPORT` for its request tasks (the relay
counts only the bytes an open connection took).

A finished connection leaves no reference cycle. `TCPServer` holds its protocol, and the protocol holds the
server's bound `protocol_send`: a cycle that keeps each closed connection's server, protocol, h11 state, task
group, stream reader and writer and socket (about 10 KiB) alive until a full collection of the cyclic garbage
collector finds it, which `proxy.collector` makes rare. `TCPServer.run` is wrapped to drop the protocol once the
connection's task group (every task of the connection, the app's included) has finished, so reference counting
frees the whole connection at once.

A connection the client has closed is let go at once. hypercorn's connection task waits, after the client's
FIN, for the keep-alive timer it started when the last response ended (`keep_alive_timeout`, 5 s), and only
then closes its socket: a load of short-lived connections kept that many closed ones open (1,000 paced streams
a wave: 2,000 sockets in CLOSE_WAIT, their servers, protocols and buffers, ~13 MiB of RSS a wave). When the
read loop ends, the timer is stopped.

`install()` checks the hypercorn version and the seam before patching, and refuses clearly otherwise.
"""

from __future__ import annotations

from typing import Any

from proxy.patch_versions import require

SUPPORTED_PREFIX = "0.18."
_MARK = "__teeproxy_lost_connection__"


def install() -> None:
    """Stop hypercorn writing to connections that are gone. Idempotent; raises RuntimeError if hypercorn does not
    fit."""
    version = require(
        "lost_connection", {"hypercorn": SUPPORTED_PREFIX}, "check whether it still writes to a lost connection"
    )["hypercorn"]
    from hypercorn.asyncio import tcp_server
    from hypercorn.events import Closed, Event, RawData

    from proxy import transport_cycles
    from proxy.client_connection import CLIENT_TRANSPORT

    server_cls: Any = tcp_server.TCPServer
    if getattr(server_cls.protocol_send, _MARK, False):
        return
    names = server_cls.protocol_send.__code__.co_names
    if not all(name in names for name in ("writer", "write", "drain", "protocol", "handle", "Closed")):
        raise RuntimeError(f"hypercorn {version}'s TCPServer.protocol_send is not what proxy.lost_connection expects")

    original = server_cls.protocol_send

    async def protocol_send(self: tcp_server.TCPServer, event: Event) -> None:
        if isinstance(event, RawData) and self.writer.is_closing():
            await self.protocol.handle(Closed())  # what a failed write does, without the write
            return
        await original(self, event)

    setattr(protocol_send, _MARK, True)
    server_cls.protocol_send = protocol_send

    run = server_cls.run
    if "protocol" not in run.__code__.co_names:
        raise RuntimeError(f"hypercorn {version}'s TCPServer.run is not what proxy.lost_connection expects")

    async def run_then_let_go(self: tcp_server.TCPServer) -> None:
        CLIENT_TRANSPORT.set(self.writer.transport)  # this task's context: every request task copies it
        try:
            await run(self)
        finally:
            # Every task of the connection has ended (its task group has exited): nothing sends through the
            # protocol any more, and without it the server is no longer in a reference cycle.
            self.__dict__.pop("protocol", None)
            transport_cycles.let_go(self.writer.transport)

    server_cls.run = run_then_let_go

    read_data = server_cls._read_data
    if "idle_task" not in server_cls._close.__code__.co_names:
        raise RuntimeError(f"hypercorn {version}'s TCPServer._close is not what proxy.lost_connection expects")

    async def read_data_then_stop_idling(self: tcp_server.TCPServer) -> None:
        await read_data(self)
        # The client's side has ended (its FIN, a reset, the read timeout): the keep-alive timer has nothing
        # left to time. Stopped now, the connection's task group ends with its last request instead of waiting
        # out keep_alive_timeout with the socket open.
        await self.idle_task.stop()

    server_cls._read_data = read_data_then_stop_idling
