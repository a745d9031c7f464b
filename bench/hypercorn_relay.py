"""The floor for an ASGI proxy on hypercorn: the least teeproxy's own stack can do per request.

Theory of operation. A raw ASGI app under hypercorn, one worker, with the process's hypercorn extensions
installed as `teeproxy serve` installs them (`proxy.serving.install_http11_trailers`), relaying each request to
the mock upstream through teeproxy's own upstream client (`proxy.upstream`: the pool, the sans-I/O heads and
body reader): the request body read, sent upstream, the response head and every body read passed on as they
come. What it leaves out is everything that makes teeproxy a gateway: keys, routing, the dialects, the
sidecar meter and `include_usage`, failover, the disconnect watcher, the journal and the ledger, metrics,
the live view, trailers. Whatever teeproxy spends above this row is that work; whatever this row spends above
`protocol-relay` is HTTP and ASGI through hypercorn.

    python -m bench.hypercorn_relay --port 8082 --upstream-port 9001
"""

from __future__ import annotations

import asyncio
import signal
from typing import Any

from hypercorn.asyncio import serve as hypercorn_serve

from bench.protocol_relay import run_relay
from proxy.config import ProviderConfig
from proxy.providers.base import Outgoing
from proxy.serving import HypercornConfig, install_http11_trailers
from proxy.upstream import UpstreamClient, make_client, open_stream

_STREAM_HEADERS = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]


class Relay:
    def __init__(self, upstream_url: str) -> None:
        self.url = upstream_url + "/v1/chat/completions"
        self.provider = ProviderConfig(name="mock", base_url=upstream_url)
        self.client: UpstreamClient | None = None

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                self.client = make_client()
                await send({"type": "lifespan.startup.complete"})
            if self.client is not None:
                await self.client.aclose()
            await send({"type": "lifespan.shutdown.complete"})
            return
        assert self.client is not None
        parts = []
        while True:
            message = await receive()
            parts.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        outgoing = Outgoing("POST", self.url, [(b"content-type", b"application/json")], b"".join(parts))
        response = await open_stream(self.client, outgoing, self.provider)
        try:
            await send({"type": "http.response.start", "status": response.status_code, "headers": _STREAM_HEADERS})
            while chunk := await response.read():
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            response.close()


async def serve(port: int, upstream_port: int) -> None:
    install_http11_trailers()
    config = HypercornConfig()
    config.bind = [f"127.0.0.1:{port}"]
    config.accesslog = None
    config.backlog = 4096
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    await hypercorn_serve(Relay(f"http://127.0.0.1:{upstream_port}"), config, shutdown_trigger=stop.wait)  # type: ignore[arg-type]


def main(argv: list[str] | None = None) -> None:
    run_relay(serve, __doc__, argv)


if __name__ == "__main__":
    main()
