"""`bytes_to_client` counts what the client's connection took while it was open, not what the relay handed to
the server after the client had gone (hypercorn's `send()` returns as if it had written it: ASGI 2.1)."""

from __future__ import annotations

import asyncio
from typing import Any

from proxy.client_connection import CLIENT_TRANSPORT
from proxy.exchange import Exchange
from proxy.relay import ClientStream


class Transport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.closing = False

    def is_closing(self) -> bool:
        return self.closing


def test_writes_to_a_closed_connection_are_not_counted() -> None:
    sent: list[Any] = []

    async def send(message: Any) -> None:
        sent.append(message)

    async def main() -> int:
        transport = Transport()
        CLIENT_TRANSPORT.set(transport)  # as proxy.lost_connection sets it for each connection hypercorn serves
        ex = Exchange(request_id="r", started_at=0.0, started_time="", endpoint_path="/")
        sink = ClientStream(ex, send, b": ping\n\n")
        await sink.write(b"data: 1\n\n")
        await sink.ping()
        transport.closing = True  # the client left
        await sink.write(b"data: 2\n\n")
        await sink.ping()
        return ex.bytes_to_client

    assert asyncio.run(main()) == len(b"data: 1\n\n") + len(b": ping\n\n")
    assert len(sent) == 4  # the writes still go to the server, which drops them (proxy.lost_connection)
