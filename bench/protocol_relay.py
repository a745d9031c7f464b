"""The Python floor: a bare asyncio Protocol TCP relay, the least a Python proxy on asyncio can do per byte.

Theory of operation. Each client connection gets one connection of its own to the upstream, opened when the
client connects; bytes go both ways as they arrive, with no HTTP parsing, no buffering of our own and no
per-request work (keep-alive requests ride the same pair of connections). What it does per read is what any
asyncio proxy must do at the least: one `data_received` call, one `transport.write`. Whatever teeproxy spends
above this row is HTTP, ASGI, metering and its own code, not Python or asyncio themselves.

Flow control is real, so the row is honest under load: when a side's write buffer passes the transport's
high-water mark, asyncio calls `pause_writing` on that side's protocol, which pauses reading on the other
side; `resume_writing` resumes it (asyncio's protocol flow-control contract, the one `asyncio.streams`
builds on). Client bytes that arrive before the upstream connection is up are impossible: the client side
is paused until then. An end of stream on one side is passed on as a half-close (`write_eof`), and a closed
connection closes its peer once the peer's buffered bytes are written.

    python -m bench.protocol_relay --port 8081 --upstream-port 9001
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
from collections.abc import Callable, Coroutine
from typing import Any


class Side(asyncio.Protocol):
    """One connection of a pair; `peer` is the other side once both exist."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.peer: Side | None = None
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        peer = self.peer
        if peer is not None and peer.transport is not None:
            peer.transport.write(data)

    def eof_received(self) -> bool:
        peer = self.peer
        if peer is not None and peer.transport is not None and not peer.closed:
            peer.transport.write_eof()
        return True  # keep our own write side open until the peer ends too

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        peer = self.peer
        if peer is not None and peer.transport is not None:
            peer.transport.close()  # after its buffered bytes are written

    # The other side reads only as fast as this side can write.
    def pause_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None and not self.peer.closed:
            self.peer.transport.resume_reading()


class Downstream(Side):
    """A client's connection: opens its upstream connection, reading nothing until that is up."""

    def __init__(self, upstream_port: int, tasks: set[asyncio.Task[None]]) -> None:
        super().__init__()
        self.upstream_port = upstream_port
        self.tasks = tasks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        assert self.transport is not None
        self.transport.pause_reading()
        task = asyncio.get_running_loop().create_task(self._connect())
        self.tasks.add(task)  # referenced until done: an unreferenced task can be garbage-collected
        task.add_done_callback(self.tasks.discard)

    async def _connect(self) -> None:
        assert self.transport is not None
        upstream = Side()
        upstream.peer = self
        try:
            await asyncio.get_running_loop().create_connection(lambda: upstream, "127.0.0.1", self.upstream_port)
        except OSError:
            self.transport.close()
            return
        if self.closed:
            assert upstream.transport is not None
            upstream.transport.close()
            return
        self.peer = upstream
        self.transport.resume_reading()


async def serve(port: int, upstream_port: int) -> None:
    loop = asyncio.get_running_loop()
    tasks: set[asyncio.Task[None]] = set()
    server = await loop.create_server(lambda: Downstream(upstream_port, tasks), "127.0.0.1", port, backlog=4096)
    stop = asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    async with server:
        await stop.wait()


def run_relay(
    serve: Callable[[int, int], Coroutine[Any, Any, None]], description: str | None, argv: list[str] | None
) -> None:
    """A relay target's command line (`--port`, `--upstream-port`), shared with bench.hypercorn_relay."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream-port", type=int, required=True)
    args = parser.parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(args.port, args.upstream_port))


def main(argv: list[str] | None = None) -> None:
    run_relay(serve, __doc__, argv)


if __name__ == "__main__":
    main()
