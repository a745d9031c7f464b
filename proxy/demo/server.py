"""`H11Server`: the small HTTP/1.1 server under the demo upstream (asyncio streams + h11).

The test suite's replay upstream uses it too, because it gives exact control over the bytes and their timing
on the wire: every `Reply.write` reaches the socket before it returns. One connection serves its requests one
after another (keep-alive); a request's body is read whole before the handler sees it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs

import h11

READ_SIZE = 65536


@dataclass(slots=True)
class Request:
    method: str
    target: str
    headers: list[tuple[bytes, bytes]]
    body: bytes

    @property
    def path(self) -> str:
        return self.target.split("?", 1)[0]

    @property
    def query(self) -> dict[str, list[str]]:
        return parse_qs(self.target.partition("?")[2])

    def header(self, name: bytes) -> bytes | None:
        for key, value in self.headers:
            if key == name:
                return value
        return None


class Reply:
    """Writes one response on an h11 connection; every `write` reaches the socket before it returns."""

    def __init__(self, conn: h11.Connection, writer: asyncio.StreamWriter) -> None:
        self._conn = conn
        self._writer = writer

    async def _emit(self, event: Any) -> None:
        data = self._conn.send(event)
        if data:
            self._writer.write(data)
            await self._writer.drain()

    async def start(self, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        await self._emit(h11.Response(status_code=status, headers=headers))

    async def write(self, data: bytes) -> None:
        if data:
            await self._emit(h11.Data(data=data))

    async def end(self) -> None:
        await self._emit(h11.EndOfMessage())

    async def send_json(self, status: int, body: bytes, headers: list[tuple[bytes, bytes]] | None = None) -> None:
        head = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        await self.start(status, head + (headers or []))
        await self.write(body)
        await self.end()


Handler = Callable[[Request, Reply], Awaitable[None]]


class H11Server:
    """A minimal keep-alive HTTP/1.1 server on 127.0.0.1 that hands each request to `handler`."""

    def __init__(self, handler: Handler, host: str = "127.0.0.1", port: int = 0) -> None:
        self._handler = handler
        self._host = host
        self._port = port
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()  # one per connection: its requests' handler

    @property
    def port(self) -> int:
        assert self._server is not None
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    @property
    def root_url(self) -> str:
        """The server's origin, no path: the base URL of the Anthropic, Gemini and Bedrock dialects."""
        return f"http://{self._host}:{self.port}"

    @property
    def base_url(self) -> str:
        """The OpenAI dialect's base URL (`root_url` + "/v1")."""
        return f"{self.root_url}/v1"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, self._host, self._port)

    async def aclose(self) -> None:
        if self._server is not None:
            self._server.close()
            for writer in list(self._connections):
                writer.close()
            # A handler still answering (a stream the client left) ends now, not when its loop is gone.
            tasks = list(self._tasks)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = h11.Connection(h11.SERVER)
        self._connections.add(writer)
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        try:
            while True:
                request = await self._read_request(conn, reader)
                if request is None:
                    return
                await self._handler(request, Reply(conn, writer))
                if conn.our_state is h11.MUST_CLOSE or conn.their_state is h11.MUST_CLOSE:
                    return
                conn.start_next_cycle()
        except (ConnectionError, h11.ProtocolError, asyncio.IncompleteReadError):
            return
        except asyncio.CancelledError:  # the server is shutting down mid-response
            return
        finally:
            self._connections.discard(writer)
            if task is not None:
                self._tasks.discard(task)
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    @staticmethod
    async def _read_request(conn: h11.Connection, reader: asyncio.StreamReader) -> Request | None:
        head: h11.Request | None = None
        body: list[bytes] = []
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                data = await reader.read(READ_SIZE)
                conn.receive_data(data)
                continue
            if isinstance(event, h11.Request):
                head = event
            elif isinstance(event, h11.Data):
                body.append(bytes(event.data))
            elif isinstance(event, h11.EndOfMessage):
                assert head is not None
                return Request(
                    method=head.method.decode(),
                    target=head.target.decode(),
                    headers=[(k.lower(), v) for k, v in head.headers],
                    body=b"".join(body),
                )
            elif isinstance(event, h11.ConnectionClosed) or event is h11.PAUSED:
                return None
