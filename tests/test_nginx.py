"""nginx in front of teeproxy, with the shipped config/nginx/teeproxy.conf, as a user would run it.

A real nginx (Debian's package; `tests/install-system-deps.sh` installs it) runs the shipped file as written
but for two addresses (its `listen` and the upstream `server`, replaced here by free ports), from its own
prefix directory, in front of a real teeproxy under hypercorn, itself in front of the replay upstream. What a
user would notice is checked: the config passes `nginx -t`; chunks reach the client one by one as teeproxy
writes them; the OpenAI SDK and curl stream through it; no client is promised trailers that never come; a
client that leaves, mid-stream or while the model is silent, ends the upstream request at once; a 2 MB request
passes; the request body is forwarded while the client is still sending it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import pathlib
import re
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import h11
import httpx
import openai
import pytest

from bench.targets import free_port, nginx_binary
from proxy.config import ServerConfig, parse_config
from proxy.demo import Reply, Request
from tests.servers import (
    CLIENT_KEY,
    LoopThread,
    ProxyServer,
    ReplayUpstream,
    Script,
    Stack,
    proxy_config_text,
)

ROOT = pathlib.Path(__file__).resolve().parent.parent
NGINX_DIR = ROOT / "config" / "nginx"
SHIPPED = NGINX_DIR / "teeproxy.conf"
SNIPPETS = ("no-trailers.conf", "pass-trailers.conf")
SHIPPED_LISTEN = "listen 127.0.0.1:8000;"
SHIPPED_UPSTREAM = "server 127.0.0.1:8080;"
DEFAULT_INCLUDE = "include no-trailers.conf;"
NGINX = nginx_binary()
MESSAGES = [{"role": "user", "content": "Hello"}]
AUTH = {"authorization": f"Bearer {CLIENT_KEY}"}

pytestmark = [
    pytest.mark.nginx,
    pytest.mark.skipif(NGINX is None, reason="nginx is not installed (tests/install-system-deps.sh installs it)"),
]


def nginx_version() -> tuple[int, ...]:
    assert NGINX is not None
    out = subprocess.run([NGINX, "-v"], capture_output=True, text=True, check=True).stderr
    found = re.search(r"nginx/(\d+)\.(\d+)\.(\d+)", out)
    assert found, out
    return tuple(int(part) for part in found.groups())


def chat_frame(text: str) -> bytes:
    chunk = {
        "id": "chatcmpl-nginx",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "gpt-4o-mini",
        "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": None}],
    }
    return b"data: " + json.dumps(chunk).encode() + b"\n\n"


def chat_stream(words: list[str]) -> tuple[bytes, list[int]]:
    """An OpenAI stream of one frame per word, and the frame sizes (one upstream write each)."""
    frames = [chat_frame(word) for word in words] + [b"data: [DONE]\n\n"]
    return b"".join(frames), [len(frame) for frame in frames]


class Nginx:
    """The shipped config in a prefix directory of its own, with `listen` and the upstream `server` on the given
    ports and the trailer snippets beside it (relative includes resolve against the config file's directory)."""

    def __init__(self, prefix: pathlib.Path, upstream_port: int, include: str = DEFAULT_INCLUDE) -> None:
        assert NGINX is not None
        self.prefix = prefix
        self.port = free_port()
        prefix.mkdir(parents=True, exist_ok=True)
        text = SHIPPED.read_text()
        for old, new in [
            (SHIPPED_LISTEN, f"listen 127.0.0.1:{self.port};"),
            (SHIPPED_UPSTREAM, f"server 127.0.0.1:{upstream_port};"),
            (DEFAULT_INCLUDE, include),
        ]:
            assert text.count(old) == 1, f"the shipped config no longer has exactly one {old!r}"
            text = text.replace(old, new)
        self.conf = prefix / "teeproxy.conf"
        self.conf.write_text(text)
        for name in SNIPPETS:
            shutil.copy(NGINX_DIR / name, prefix / name)
        self.proc: subprocess.Popen[bytes] | None = None

    def command(self, *extra: str) -> list[str]:
        assert NGINX is not None
        return [NGINX, "-p", str(self.prefix), "-c", str(self.conf), "-e", "stderr", *extra]

    def start(self) -> None:
        with (self.prefix / "stderr.log").open("wb") as log:
            self.proc = subprocess.Popen(
                self.command("-g", "daemon off;"), stdout=subprocess.DEVNULL, stderr=log, start_new_session=True
            )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, (self.prefix / "stderr.log").read_text()
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            time.sleep(0.02)
        raise AssertionError("nginx did not start listening")

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()  # nginx's fast shutdown; its master stops its own workers
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@contextlib.contextmanager
def running(nginx: Nginx) -> Iterator[Nginx]:
    nginx.start()
    try:
        yield nginx
    finally:
        nginx.stop()


class WatchedUpstream(ReplayUpstream):
    """The replay upstream, noting when a response could not be written because the proxy had gone."""

    def __init__(self) -> None:
        super().__init__()
        self.lost: list[tuple[Request, float]] = []

    async def _handle(self, request: Request, reply: Reply) -> None:
        try:
            await super()._handle(request, reply)
        except ConnectionError:
            self.lost.append((request, time.monotonic()))
            raise

    def lost_at(self, request: Request) -> float | None:
        return next((at for seen, at in self.lost if seen is request), None)


@dataclass
class Behind:
    stack: Stack
    upstream: WatchedUpstream
    nginx: Nginx  # in front of teeproxy
    bare: Nginx  # the same config straight in front of the replay upstream: what nginx does on its own


@pytest.fixture(scope="module")
def behind(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Behind]:
    """teeproxy (with its default 10 MiB body limit) behind the shipped nginx config."""
    tmp = tmp_path_factory.mktemp("nginx")
    loop = LoopThread()
    upstream = WatchedUpstream()
    loop.run(upstream.server.start())
    ledger_path = str(tmp / "ledger.db")
    text = proxy_config_text(upstream.base_url, ledger_path)
    default_limit = ServerConfig().max_body_bytes
    assert text.count("max_body_bytes = 1048576") == 1
    text = text.replace("max_body_bytes = 1048576", f"max_body_bytes = {default_limit}")
    proxy = ProxyServer(loop, parse_config(text, "test-config"))
    proxy.start()
    try:
        with (
            running(Nginx(tmp / "prefix", proxy.port)) as nginx,
            running(Nginx(tmp / "bare", upstream.server.port)) as bare,
        ):
            yield Behind(Stack(loop, upstream, proxy, ledger_path), upstream, nginx, bare)
    finally:
        proxy.stop()
        loop.run(upstream.server.aclose())
        loop.close()


@pytest.fixture
def fresh(behind: Behind) -> Behind:
    behind.upstream.requests.clear()
    behind.upstream.writes.clear()
    return behind


# --- the files as shipped ----------------------------------------------------------------------------------


def test_shipped_config_passes_nginx_t_as_written(tmp_path: pathlib.Path) -> None:
    assert NGINX is not None
    done = subprocess.run(
        [NGINX, "-t", "-p", str(tmp_path), "-c", str(SHIPPED), "-e", "stderr"], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert "test is successful" in done.stderr


def test_body_limit_matches_teeproxy_default() -> None:
    """nginx's own 413 must not come first: its limit is teeproxy's default max_body_bytes."""
    [size] = re.findall(r"^\s*client_max_body_size\s+(\d+)m;", SHIPPED.read_text(), re.M)
    assert int(size) * 1024 * 1024 == ServerConfig().max_body_bytes


def test_pass_trailers_snippet(tmp_path: pathlib.Path) -> None:
    """On nginx >= 1.27.2 the trailer-forwarding variant passes `nginx -t`; on older ones (Debian 12's 1.22), the
    one thing it lacks is proxy_pass_trailers, which is why no-trailers.conf is the default."""
    nginx = Nginx(tmp_path, upstream_port=free_port(), include="include pass-trailers.conf;")
    done = subprocess.run(nginx.command("-t"), capture_output=True, text=True)
    if nginx_version() >= (1, 27, 2):
        assert done.returncode == 0, done.stderr
    else:
        assert done.returncode != 0
        assert 'unknown directive "proxy_pass_trailers"' in done.stderr, done.stderr


# --- streaming through nginx -------------------------------------------------------------------------------


@pytest.mark.parametrize("via", ["teeproxy", "nginx alone"])
def test_chunks_arrive_one_by_one_through_the_openai_sdk(fresh: Behind, via: str) -> None:
    """A pausing upstream: the SDK reads each chunk about when it was written, the first long before the last.
    Through teeproxy, and with nginx straight in front of the upstream (teeproxy's `X-Accel-Buffering: no` turns
    nginx's buffering off too, so the second shows this config streams even when an upstream does not ask)."""
    words = ["Each", " word", " arrives", " on", " its", " own"]
    pause_s = 0.4
    body, sizes = chat_stream(words)
    fresh.upstream.script = Script(body=body, chunk_sizes=sizes, pause_s=pause_s)
    nginx = fresh.nginx if via == "teeproxy" else fresh.bare
    client = openai.OpenAI(base_url=nginx.url + "/v1", api_key=CLIENT_KEY, max_retries=0)
    started = time.monotonic()
    arrivals: list[float] = []
    texts: list[str] = []
    with client:
        for chunk in client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True):  # type: ignore[arg-type]
            arrivals.append(time.monotonic() - started)
            texts.append(chunk.choices[0].delta.content or "")
    assert texts == words
    assert arrivals[0] < pause_s, arrivals  # the first word did not wait for the second
    gaps = [later - earlier for earlier, later in zip(arrivals, arrivals[1:], strict=False)]
    assert min(gaps) > pause_s / 4, arrivals  # no two words were held back and delivered together
    assert arrivals[-1] - arrivals[0] > (len(words) - 1) * pause_s * 0.8, arrivals


def test_curl_streams_and_is_not_promised_trailers(fresh: Behind) -> None:
    """Debian's nginx drops trailers, so a client sending `TE: trailers` gets no `Trailer` header through it;
    straight to teeproxy the same request gets both the header and the fields (the control)."""
    body, sizes = chat_stream(["Hello", " there"])
    fresh.upstream.script = Script(body=body, chunk_sizes=sizes, pause_s=0.05)
    request = [
        "-H",
        "TE: trailers",
        "-H",
        f"Authorization: Bearer {CLIENT_KEY}",
        "-H",
        "Content-Type: application/json",
        "-d",
        json.dumps({"model": "gpt-4o-mini", "stream": True, "messages": MESSAGES}),
    ]

    def curl(base: str) -> tuple[str, str]:
        done = subprocess.run(
            ["curl", "-sSiN", "--max-time", "10", *request, base + "/v1/chat/completions"], capture_output=True
        )
        assert done.returncode == 0, done.stderr
        head, _, rest = done.stdout.decode().partition("\r\n\r\n")
        return head.lower(), rest

    head, rest = curl(fresh.nginx.url)
    assert head.startswith("http/1.1 200"), head
    assert "\ntrailer:" not in head
    assert "text/event-stream" in head
    assert rest.startswith(body.decode())  # every byte, in order
    assert "x-teeproxy-cost-usd" not in rest.lower()

    direct_head, direct_rest = curl(fresh.stack.url)
    assert "\ntrailer: x-teeproxy-input-tokens" in direct_head
    assert "x-teeproxy-input-tokens:" in direct_rest.lower()


def test_the_bill_still_reaches_the_client_inline_and_the_ledger(fresh: Behind) -> None:
    """Where nginx drops trailers, `x-teeproxy-usage: inline` still brings the bill, as an SSE comment, and the
    ledger has it."""
    words, _ = chat_stream(["Hi"])
    usage = {"id": "chatcmpl-nginx", "object": "chat.completion.chunk", "created": 1, "model": "gpt-4o-mini"}
    usage |= {"choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}}
    done = b"data: [DONE]\n\n"
    body = words.removesuffix(done) + b"data: " + json.dumps(usage).encode() + b"\n\n" + done
    fresh.upstream.script = Script(body=body)
    response = httpx.post(
        fresh.nginx.url + "/v1/chat/completions",
        json={"model": "gpt-4o-mini", "stream": True, "messages": MESSAGES},
        headers={**AUTH, "x-teeproxy-usage": "inline", "x-teeproxy-request-id": "nginx-inline-bill"},
        timeout=10,
    )
    assert response.status_code == 200
    _, marker, after = response.content.partition(b": x-teeproxy-usage ")
    assert marker and after.endswith(done)
    bill = json.loads(after[: after.index(b"\n")])
    assert (bill["input_tokens"], bill["output_tokens"]) == (5, 2)
    record = record_of(fresh.stack, "nginx-inline-bill")
    assert (record.input_tokens, record.output_tokens, record.cost) == (5, 2, bill["cost_usd"])


def test_no_trailer_header_even_from_an_upstream_that_declares_one(fresh: Behind) -> None:
    """The snippet's own work, seen with nginx straight in front of an upstream: the client's TE does not go on,
    and a `Trailer` header from upstream does not come back."""
    body, _ = chat_stream(["Hi"])
    fresh.upstream.script = Script(body=body, headers=[(b"trailer", b"x-teeproxy-cost-usd")])
    response = httpx.post(
        fresh.bare.url + "/v1/chat/completions",
        json={"model": "gpt-4o-mini", "stream": True, "messages": MESSAGES},
        headers={**AUTH, "te": "trailers"},
        timeout=10,
    )
    assert response.status_code == 200 and response.content == body
    assert "trailer" not in response.headers
    [request] = fresh.upstream.requests
    assert request.header(b"te") is None


def open_stream_then_leave(port: int, request_id: str, frames: int) -> tuple[float, float]:
    """A raw client through nginx: send a streaming request, read `frames` frames, close the socket.
    Returns (sent_at, left_at) on the monotonic clock."""
    payload = json.dumps({"model": "gpt-4o-mini", "stream": True, "messages": MESSAGES}).encode()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sent_at = time.monotonic()
        sock.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: teeproxy\r\n"
            + f"Authorization: Bearer {CLIENT_KEY}\r\nx-teeproxy-request-id: {request_id}\r\n".encode()
            + f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n".encode()
            + payload
        )
        received = b""
        while received.count(b"data: ") < frames:
            data = sock.recv(65536)
            assert data, received
            received += data
    return sent_at, time.monotonic()


def record_of(stack: Stack, request_id: str, timeout_s: float = 10.0) -> Any:
    """The ledger record of one request, once teeproxy has written it."""
    deadline = time.monotonic() + timeout_s
    while True:
        stack.flush_ledger()
        state = stack.proxy.app.state
        assert state is not None
        found = [r for r in state.ledger.query(None, None) if r.request_id == request_id]
        if found or time.monotonic() > deadline:
            assert len(found) == 1, f"no single record for {request_id}: {found}"
            return found[0]
        time.sleep(0.02)


def test_client_leaving_mid_stream_closes_the_upstream_quickly(fresh: Behind) -> None:
    """A client that disconnects mid-stream: nginx closes its connection to teeproxy, and teeproxy its upstream
    request (the provider stops generating) within about a second; the ledger says so."""
    body, sizes = chat_stream([f" w{i}" for i in range(400)])
    fresh.upstream.script = Script(body=body, chunk_sizes=sizes, pause_s=0.05)  # 20 s if nobody leaves
    _, left_at = open_stream_then_leave(fresh.nginx.port, "nginx-leaves-mid-stream", frames=3)
    deadline = left_at + 5
    while not fresh.upstream.lost and time.monotonic() < deadline:
        time.sleep(0.01)
    [request] = fresh.upstream.requests
    lost_at = fresh.upstream.lost_at(request)
    assert lost_at is not None, "the upstream kept streaming after the client left"
    assert lost_at - left_at < 1.0
    assert len(fresh.upstream.writes) < 100
    record = record_of(fresh.stack, "nginx-leaves-mid-stream")
    assert (record.outcome, record.usage_status) == ("client_disconnected", "missing")


def test_client_leaving_while_the_model_is_silent_ends_the_request_quickly(fresh: Behind) -> None:
    """The client gives up while nothing is being written (a model thinking): nginx notices the closed
    connection by itself rather than on its next write, so teeproxy ends the request (and closes the upstream)
    at once, not when the next token comes 4 s later."""
    body, sizes = chat_stream(["Thinking", " done"])
    fresh.upstream.script = Script(body=body, chunk_sizes=sizes, pause_s=4.0)
    sent_at, left_at = open_stream_then_leave(fresh.nginx.port, "nginx-leaves-in-silence", frames=1)
    record = record_of(fresh.stack, "nginx-leaves-in-silence")
    assert record.outcome == "client_disconnected"
    assert record.duration_ms / 1000 < (left_at - sent_at) + 1.0, record.duration_ms


def test_a_2mb_chat_request_reaches_teeproxy(fresh: Behind) -> None:
    """nginx's default 1 MiB limit would answer with an HTML 413; the shipped one lets teeproxy's 10 MiB rule."""
    body, _ = chat_stream(["ok"])
    fresh.upstream.script = Script(body=body)
    big = "x" * (2 * 1000 * 1000)
    response = httpx.post(
        fresh.nginx.url + "/v1/chat/completions",
        json={"model": "gpt-4o-mini", "stream": True, "messages": [{"role": "user", "content": big}]},
        headers=AUTH,
        timeout=10,
    )
    assert response.status_code == 200, response.text[:300]
    assert response.text.endswith("data: [DONE]\n\n")
    [request] = fresh.upstream.requests
    assert len(request.body) > 2 * 1000 * 1000


# --- the request body is not buffered ----------------------------------------------------------------------


class BodyWatcher:
    """A tiny HTTP/1.1 server that notes when the first request body bytes arrive, and answers once the body has
    ended. nginx points straight at it, so what it sees is what nginx forwarded, and when."""

    def __init__(self) -> None:
        self.first_body_at: float | None = None
        self.body = b""
        self._server: asyncio.Server | None = None

    @property
    def port(self) -> int:
        assert self._server is not None
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)

    async def aclose(self) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = h11.Connection(h11.SERVER)
        try:
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    data = await reader.read(65536)
                    if not data:
                        return
                    conn.receive_data(data)
                elif isinstance(event, h11.Data):
                    if self.first_body_at is None:
                        self.first_body_at = time.monotonic()
                    self.body += bytes(event.data)
                elif isinstance(event, h11.EndOfMessage):
                    answer = b"received %d bytes" % len(self.body)
                    head = h11.Response(status_code=200, headers=[(b"content-length", str(len(answer)).encode())])
                    writer.write(conn.send(head) + conn.send(h11.Data(data=answer)) + conn.send(h11.EndOfMessage()))
                    await writer.drain()
                    return
                elif isinstance(event, h11.ConnectionClosed):
                    return
        finally:
            writer.close()


@pytest.mark.parametrize("framing", ["chunked", "content-length"])
def test_request_body_is_forwarded_while_the_client_is_still_sending(tmp_path: pathlib.Path, framing: str) -> None:
    first, rest = b'{"model": "gpt-4o-mini", "messages": ', b'[{"role": "user", "content": "Hello"}]}'
    if framing == "chunked":
        head = b"Transfer-Encoding: chunked\r\n"
        parts = [b"%x\r\n%s\r\n" % (len(first), first), b"%x\r\n%s\r\n0\r\n\r\n" % (len(rest), rest)]
    else:
        head = b"Content-Length: %d\r\n" % (len(first) + len(rest))
        parts = [first, rest]
    loop = LoopThread()
    watcher = BodyWatcher()
    loop.run(watcher.start())
    try:
        with (
            running(Nginx(tmp_path, watcher.port)) as nginx,
            socket.create_connection(("127.0.0.1", nginx.port), timeout=10) as sock,
        ):
            sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: teeproxy\r\n" + head + b"\r\n" + parts[0])
            deadline = time.monotonic() + 5
            while watcher.first_body_at is None and time.monotonic() < deadline:
                time.sleep(0.01)
            # Only now does the client send the rest: a buffering nginx would still be waiting for it.
            sent_last_at = time.monotonic()
            sock.sendall(parts[1])
            reply = b""
            while not reply.endswith(b"bytes"):
                data = sock.recv(65536)
                assert data, reply
                reply += data
    finally:
        loop.run(watcher.aclose())
        loop.close()
    assert watcher.first_body_at is not None, "nginx held the body until the client had sent all of it"
    assert watcher.first_body_at < sent_last_at
    assert watcher.body == first + rest
    assert reply.startswith(b"HTTP/1.1 200") and reply.endswith(b"received %d bytes" % len(first + rest))
