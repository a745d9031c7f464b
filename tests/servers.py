"""Real servers for the tests: a replay upstream and the proxy under a real hypercorn, both on 127.0.0.1.

Both run on one event loop in a background thread, so the tests drive them with real, blocking clients (the
openai SDK, curl, raw sockets) from the main thread. The replay upstream serves captured provider bytes
exactly, cut into chosen write sizes with chosen pauses; it records every request it receives.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import socket
import ssl
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

import h11
from hypercorn.asyncio.run import worker_serve
from hypercorn.utils import wrap_app

from proxy.app import TeeProxy
from proxy.config import Config, parse_config
from proxy.demo import H11Server, Reply, Request
from proxy.serving import HypercornConfig, install_http11_trailers

T = TypeVar("T")

UPSTREAM_SECRET = "sk-upstream-SECRET-do-not-leak-42"
UPSTREAM_KEY_ENV = "TEEPROXY_TEST_UPSTREAM_KEY"
CLIENT_KEY = "tp-test-client-key"
CLIENT_KEY_SHA256 = hashlib.sha256(CLIENT_KEY.encode()).hexdigest()


@dataclass
class Script:
    """One scripted upstream response."""

    body: bytes
    status: int = 200
    content_type: bytes = b"text/event-stream; charset=utf-8"
    chunk_sizes: list[int] | None = None  # cycled; None = the whole body in one write
    pause_s: float = 0.0  # between writes
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    content_length: bool = False  # send Content-Length instead of chunked
    cut_after: int | None = None  # drop the connection after this many bytes (an upstream failure)
    end_pause_s: float = 0.0  # wait this long after the last byte before ending the body
    head_pause_s: float = 0.0  # wait this long before the response head (a slow or stalled upstream)


class ReplayUpstream:
    def __init__(self) -> None:
        self.requests: list[Request] = []
        self.script: Script | Callable[[Request], Script] = Script(body=b"data: [DONE]\n\n")
        self.server = H11Server(self._handle)
        self.writes: list[bytes] = []

    @property
    def base_url(self) -> str:
        return self.server.base_url

    async def _handle(self, request: Request, reply: Reply) -> None:
        self.requests.append(request)
        script = self.script(request) if callable(self.script) else self.script
        if script.head_pause_s:
            await asyncio.sleep(script.head_pause_s)
        headers = [(b"content-type", script.content_type), *script.headers]
        if script.content_length:
            headers.append((b"content-length", str(len(script.body)).encode()))
        await reply.start(script.status, headers)
        sizes = itertools.cycle(script.chunk_sizes or [len(script.body) or 1])
        sent = 0
        body = script.body
        while sent < len(body):
            if script.cut_after is not None and sent >= script.cut_after:
                raise ConnectionError("scripted upstream failure")
            size = next(sizes)
            piece = body[sent : sent + size]
            if sent and script.pause_s:
                await asyncio.sleep(script.pause_s)
            await reply.write(piece)
            self.writes.append(piece)
            sent += len(piece)
        if script.end_pause_s:
            await asyncio.sleep(script.end_pause_s)
        await reply.end()


class LoopThread:
    """An event loop in a daemon thread; `run(coro)` runs a coroutine there and returns its result."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 30.0) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()


def root_url(base_url: str) -> str:
    """The replay server's root: OpenAI's base_url carries /v1, the other dialects' do not."""
    return base_url.removesuffix("/v1")


def proxy_config_text(
    upstream_url: str,
    ledger_path: str,
    extra: str = "",
    provider_extra: str = "",
    ledger: str | None = None,
    server_extra: str = "",
) -> str:
    return f"""
[server]
bind = "127.0.0.1:0"
max_body_bytes = 1048576
{server_extra}

[ledger]
{ledger or f'path = "{ledger_path}"'}

[[providers]]
name = "replay"
dialect = "openai"
base_url = "{upstream_url}"
api_key_env = "{UPSTREAM_KEY_ENV}"
{provider_extra}

[[providers]]
name = "replay-anthropic"
dialect = "anthropic"
base_url = "{root_url(upstream_url)}"
api_key_env = "{UPSTREAM_KEY_ENV}"

[[providers]]
name = "replay-gemini"
dialect = "gemini"
base_url = "{root_url(upstream_url)}"
api_key_env = "{UPSTREAM_KEY_ENV}"

[[providers]]
name = "replay-bedrock"
dialect = "bedrock"
base_url = "{root_url(upstream_url)}"
api_key_env = "{UPSTREAM_KEY_ENV}"
region = "us-east-1"

[[routes]]
models = ["gpt-*", "o*", "babbage*", "text-embedding-*", "deepseek-*", "grok-*"]
providers = ["replay"]

[[routes]]
models = ["claude-*"]
providers = ["replay-anthropic"]

[[routes]]
models = ["gemini-*"]
providers = ["replay-gemini"]

[[routes]]
models = ["anthropic.*", "us.anthropic.*", "amazon.*", "meta.*", "arn:aws:bedrock:*"]
providers = ["replay-bedrock"]

[[keys]]
name = "tester"
sha256 = "{CLIENT_KEY_SHA256}"

[prices."gpt-4o-mini"]
input_per_mtok = "0.15"
cached_input_per_mtok = "0.075"
cache_write_per_mtok = "0"
output_per_mtok = "0.60"
{extra}
"""


async def serve_lifespan(receive: Any, send: Any) -> None:
    """An ASGI app's lifespan with nothing to start or stop: what the test apps served by hypercorn need."""
    while (await receive())["type"] != "lifespan.shutdown":
        await send({"type": "lifespan.startup.complete"})
    await send({"type": "lifespan.shutdown.complete"})


class HypercornServer:
    """An ASGI app under a real hypercorn (HTTP/1.1 + h2c) on 127.0.0.1:<ephemeral>, served from `loop`."""

    def __init__(
        self, loop: LoopThread, app: Any, tls: tuple[str, str] | None = None, keep_alive_timeout: float | None = None
    ) -> None:
        self._loop = loop
        self.app = app
        hc = HypercornConfig()
        hc.bind = ["127.0.0.1:0"]
        hc.accesslog = None
        hc.graceful_timeout = 5.0
        if keep_alive_timeout is not None:
            hc.keep_alive_timeout = keep_alive_timeout
        if tls is not None:
            hc.certfile, hc.keyfile = tls
        self.scheme = "https" if tls is not None else "http"
        self._sockets = hc.create_sockets()
        listening = (self._sockets.secure_sockets or self._sockets.insecure_sockets)[0]
        # Listen now, so a client that connects before hypercorn's accept loop starts waits in the backlog.
        listening.listen(128)
        self.port: int = listening.getsockname()[1]
        self._hc = hc
        self._stop: asyncio.Event | None = None
        self._done: asyncio.Future[None] | None = None

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"

    def start(self) -> None:
        async def _start() -> None:
            self._stop = asyncio.Event()
            app = wrap_app(self.app, self._hc.wsgi_max_body_size, "asgi")  # type: ignore[arg-type]

            async def _serve() -> None:
                assert self._stop is not None
                await worker_serve(app, self._hc, sockets=self._sockets, shutdown_trigger=self._stop.wait)

            self._done = asyncio.ensure_future(_serve())  # noqa: TID251 - kept in self._done and awaited in stop()
            for _ in range(2000):  # start-up is polled: the app has no "ready" event of its own
                if self.ready() or self._done.done():
                    break
                await asyncio.sleep(0.005)
            if self._done.done():
                self._done.result()

        self._loop.run(_start())

    def stop(self) -> None:
        async def _stop() -> None:
            assert self._stop is not None and self._done is not None
            self._stop.set()
            await self._done

        self._loop.run(_stop())

    def ready(self) -> bool:
        return True


class ProxyServer(HypercornServer):
    def __init__(self, loop: LoopThread, config: Config, tls: tuple[str, str] | None = None) -> None:
        super().__init__(loop, TeeProxy(config, http11_trailers=install_http11_trailers()), tls)

    def ready(self) -> bool:
        return self.app.state is not None


@dataclass
class Stack:
    loop: LoopThread
    upstream: ReplayUpstream
    proxy: ProxyServer
    ledger_path: str

    @property
    def url(self) -> str:
        return self.proxy.url

    def flush_ledger(self) -> None:
        state = self.proxy.app.state
        assert state is not None
        self.loop.run(state.ledger.flush())

    def records(self, at_least: int = 1, timeout_s: float = 10.0) -> list[Any]:
        """The ledger's records, once at least `at_least` are there (the server finishes a request after the
        client has read its last byte, so a record can trail the response by a moment)."""
        state = self.proxy.app.state
        assert state is not None
        deadline = time.monotonic() + timeout_s
        while True:
            self.flush_ledger()
            records = state.ledger.query(None, None)
            if len(records) >= at_least or time.monotonic() > deadline:
                return records
            time.sleep(0.02)


def start_stack(
    tmp_path: Any,
    extra: str | Callable[[str], str] = "",
    provider_extra: str = "",
    ledger: str | None = None,
    tls: tuple[str, str] | None = None,
    server_extra: str = "",
) -> Iterator[Stack]:
    loop = LoopThread()
    upstream = ReplayUpstream()
    loop.run(upstream.server.start())
    ledger_path = str(tmp_path / "ledger.db")
    if callable(extra):  # config that names the replay upstream's address, known only now
        extra = extra(upstream.base_url)
    config = parse_config(
        proxy_config_text(upstream.base_url, ledger_path, extra, provider_extra, ledger, server_extra), "test-config"
    )
    proxy = ProxyServer(loop, config, tls)
    proxy.start()
    try:
        yield Stack(loop, upstream, proxy, ledger_path)
    finally:
        proxy.stop()
        loop.run(upstream.server.aclose())
        loop.close()


# --- raw clients: the exact bytes on the wire -------------------------------------------------------------------


def free_port() -> int:
    """A loopback port nobody listens on (at the moment of asking)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def send_raw(port: int, data: bytes, read_s: float = 3.0) -> bytes:
    """Send `data` as is and return everything the server writes until it closes or `read_s` passes."""
    with socket.create_connection(("127.0.0.1", port), timeout=read_s) as sock:
        sock.sendall(data)
        sock.settimeout(min(1.0, read_s))
        out = b""
        deadline = time.monotonic() + read_s
        while time.monotonic() < deadline:
            try:
                received = sock.recv(65536)
            except TimeoutError:
                break
            if not received:
                break
            out += received
        return out


def h11_post(
    port: int, target: str, body: bytes, headers: list[tuple[str, str]], ca: str | None = None
) -> tuple[h11.Response, bytes, dict[bytes, bytes]]:
    """One POST over HTTP/1.1 with raw h11 (over TLS when `ca` is given): the response head, the body bytes
    exactly, and the trailer fields. The caller's headers come after host, content-type and content-length."""
    conn = h11.Connection(h11.CLIENT)
    all_headers = [
        ("host", f"127.0.0.1:{port}"),
        ("content-type", "application/json"),
        ("content-length", str(len(body))),
        *headers,
    ]
    sock: socket.socket = socket.create_connection(("127.0.0.1", port), timeout=10)
    if ca is not None:
        context = ssl.create_default_context(cafile=ca)
        context.set_alpn_protocols(["http/1.1"])
        sock = context.wrap_socket(sock, server_hostname="127.0.0.1")
    with sock:
        sock.sendall(conn.send(h11.Request(method="POST", target=target, headers=all_headers)))
        sock.sendall(conn.send(h11.Data(data=body)) + conn.send(h11.EndOfMessage()))
        response: h11.Response | None = None
        data: list[bytes] = []
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(sock.recv(65536))
            elif isinstance(event, h11.Response):
                response = event
            elif isinstance(event, h11.Data):
                data.append(bytes(event.data))
            elif isinstance(event, h11.EndOfMessage):
                assert response is not None
                return response, b"".join(data), {bytes(k): bytes(v) for k, v in event.headers}
