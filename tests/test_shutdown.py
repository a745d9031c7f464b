"""Shutdown as clients and the operator see it: streams that can finish within the grace period finish; the rest
end with their dialect's in-stream error and a proper end (never a silent cut); a new request while draining is
refused with 503; every request leaves its ledger record."""

from __future__ import annotations

import concurrent.futures
import os
import pathlib
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import anthropic
import httpx
import pytest

from tests.servers import CLIENT_KEY, UPSTREAM_KEY_ENV, UPSTREAM_SECRET, Script, Stack, free_port, start_stack

AUTH = {"authorization": f"Bearer {CLIENT_KEY}"}
REQUEST = {"model": "gpt-4o-mini", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
CHUNK = b'data: {"id":"c","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"content":"x"}}]}\n\n'
ROOT = pathlib.Path(__file__).resolve().parent.parent


@pytest.fixture
def stack(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Stack]:
    monkeypatch.setenv(UPSTREAM_KEY_ENV, UPSTREAM_SECRET)
    yield from start_stack(tmp_path)


def begin_drain(stack: Stack, grace_s: float) -> None:
    state = stack.proxy.app.state
    stack.loop.loop.call_soon_threadsafe(state.drain.begin, grace_s)


def test_streams_past_the_grace_period_end_with_an_error_event_and_a_record(stack: Stack) -> None:
    # 20 chunks, 0.2 s apart: 4 s per stream, far past a 0.5 s grace period.
    stack.upstream.script = Script(body=CHUNK * 20 + b"data: [DONE]\n\n", chunk_sizes=[len(CHUNK)], pause_s=0.2)

    def one() -> bytes:
        with httpx.stream("POST", stack.url + "/v1/chat/completions", json=REQUEST, headers=AUTH, timeout=20) as r:
            return b"".join(r.iter_raw())  # a clean end: httpx raises on a cut chunked body

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(one) for _ in range(4)]
        deadline = time.monotonic() + 5
        while len(stack.upstream.requests) < 4 and time.monotonic() < deadline:
            time.sleep(0.01)
        begin_drain(stack, 0.5)
        bodies = [f.result() for f in futures]
    for body in bodies:
        assert body.startswith(CHUNK)
        assert body.endswith(
            b'data: {"error":{"message":"The proxy shut down before the response was complete.",'
            b'"type":"server_error","param":null,"code":"shutting_down"}}\n\ndata: [DONE]\n\n'
        )
    records = stack.records(at_least=4)
    assert [r.outcome for r in records] == ["shutdown"] * 4


def test_a_stream_that_finishes_within_the_grace_period_completes(stack: Stack) -> None:
    body = CHUNK * 5 + b"data: [DONE]\n\n"
    stack.upstream.script = Script(body=body, chunk_sizes=[len(CHUNK)], pause_s=0.1)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        future = pool.submit(
            lambda: httpx.post(stack.url + "/v1/chat/completions", json=REQUEST, headers=AUTH, timeout=20).content
        )
        while not stack.upstream.requests:
            time.sleep(0.01)
        begin_drain(stack, 5.0)
        assert future.result() == body
    [record] = stack.records()
    assert record.outcome == "completed"


def test_anthropic_sdk_raises_on_the_shutdown_event(stack: Stack, shared_fixtures: pathlib.Path) -> None:
    messages = (shared_fixtures / "anthropic/messages_tool_use.sse").read_bytes()
    frames = [len(f) + 2 for f in messages.split(b"\n\n")[:-1]]  # whole frames: the error event follows one
    stack.upstream.script = Script(body=messages, chunk_sizes=frames, pause_s=0.3)

    def run() -> None:
        with anthropic.Anthropic(base_url=stack.url, api_key=CLIENT_KEY, max_retries=0) as client:
            list(client.messages.create(model="claude-x", max_tokens=5, messages=[], stream=True))

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        future = pool.submit(run)
        while not stack.upstream.requests:
            time.sleep(0.01)
        begin_drain(stack, 0.2)
        with pytest.raises(anthropic.APIStatusError, match="shut down"):
            future.result()


def test_a_new_request_while_draining_is_refused_with_503(stack: Stack) -> None:
    stack.upstream.script = Script(body=CHUNK * 30, chunk_sizes=[len(CHUNK)], pause_s=0.2)
    with httpx.Client(timeout=20) as client, concurrent.futures.ThreadPoolExecutor(1) as pool:
        # One kept-alive connection for the second request; a long stream keeps the drain going meanwhile.
        pool.submit(lambda: httpx.post(stack.url + "/v1/chat/completions", json=REQUEST, headers=AUTH, timeout=20))
        assert client.get(stack.url + "/healthz").status_code == 200
        while not stack.upstream.requests:
            time.sleep(0.01)
        begin_drain(stack, 10.0)
        time.sleep(0.1)
        reply = client.post(stack.url + "/v1/chat/completions", json=REQUEST, headers=AUTH)
        assert reply.status_code == 503
        assert reply.json()["error"]["code"] == "shutting_down"
        assert reply.headers["connection"] == "close"
        begin_drain(stack, 10.0)  # a second signal: end the rest now
    assert len(stack.upstream.requests) == 1


# --- the real server: signals -------------------------------------------------------------------------------------


def serve(tmp_path: pathlib.Path, workers: int, grace_s: float) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    text = (ROOT / "config" / "teeproxy.toml").read_text()
    text = text.replace('path = "teeproxy-ledger.db"', f'path = "{tmp_path / "ledger.db"}"')
    text = text.replace("tokens_per_s = 40", "tokens_per_s = 5")
    text = text.replace("[server]\n", f"[server]\ngraceful_timeout_s = {grace_s}\n", 1)
    (tmp_path / "teeproxy.toml").write_text(text)
    env = {k: v for k, v in os.environ.items() if not k.endswith("_API_KEY")}
    env["PYTHONPATH"] = str(ROOT)
    command = [sys.executable, "-m", "proxy", "serve", "--config", str(tmp_path / "teeproxy.toml")]
    command += ["--bind", f"127.0.0.1:{port}", "--workers", str(workers)]
    with open(tmp_path / "serve.log", "wb") as log:
        proc = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=log, stderr=log, start_new_session=True)
    deadline = time.monotonic() + 20
    while True:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return proc, port
        except httpx.TransportError:
            assert time.monotonic() < deadline and proc.poll() is None, (tmp_path / "serve.log").read_text()
            time.sleep(0.05)


def stream(port: int, words: int, started: threading.Semaphore) -> tuple[str, bytes]:
    body = {**REQUEST, "max_tokens": words}
    url = f"http://127.0.0.1:{port}/v1/chat/completions"
    try:
        with httpx.stream("POST", url, json=body, headers={"authorization": "Bearer tp-demo-key"}, timeout=30) as r:
            started.release()  # the response head arrived: the request is in flight
            return "ok", b"".join(r.iter_raw())
    except httpx.HTTPError as exc:
        started.release()
        return type(exc).__name__, b""


@pytest.mark.parametrize("workers", [1, 2])
def test_sigterm_drains_refuses_new_connections_and_loses_no_record(tmp_path: pathlib.Path, workers: int) -> None:
    proc, port = serve(tmp_path, workers, grace_s=2.5)
    try:
        with concurrent.futures.ThreadPoolExecutor(24) as pool:
            # 12 streams that outlive the grace period (the demo's whole text at 5 tokens/s), 12 that end within it.
            started = threading.Semaphore(0)
            futures = [pool.submit(stream, port, 1000 if i % 2 else 2, started) for i in range(24)]
            for _ in range(24):
                assert started.acquire(timeout=20)
            os.kill(proc.pid, signal.SIGTERM)
            time.sleep(0.3)
            with pytest.raises(OSError):  # refused at once, not queued behind the drain
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
            results = [f.result() for f in futures]
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    log = (tmp_path / "serve.log").read_text()
    assert "Traceback" not in log and "CancelledError" not in log, log
    long_ones = [body for i, (how, body) in enumerate(results) if i % 2]
    short_ones = [body for i, (how, body) in enumerate(results) if not i % 2]
    assert all(how == "ok" for how, _ in results)  # every stream ended properly, none was cut
    assert all(body.endswith(b"data: [DONE]\n\n") for body in short_ones)
    assert all(b'"code":"shutting_down"' in body for body in long_ones)
    from proxy.ledger import SQLiteBackend

    records = SQLiteBackend(str(tmp_path / "ledger.db")).query(None, None)
    assert len(records) == 24
    assert sorted(r.outcome for r in records) == ["completed"] * 12 + ["shutdown"] * 12
