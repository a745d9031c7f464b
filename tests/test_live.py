"""The live view as an operator sees it: typed events on GET /admin/live from every worker, behind the admin
key, and the /admin/ page in a real headless Chromium showing numbers that move with the traffic and match
the ledger."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import pathlib
import queue
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from decimal import Decimal
from typing import Any

import httpx
import msgspec
import pytest

from proxy.access_log import access_line
from proxy.ledger import SQLiteBackend
from proxy.live import FLUSH_AFTER_S, FLUSH_EVENTS, POLL_INTERVAL_S, LivePublisher, LiveTail
from proxy.observe import Finished, Started
from tests.servers import CLIENT_KEY, UPSTREAM_KEY_ENV, UPSTREAM_SECRET, Script, Stack, start_stack
from tests.test_metrics import (
    ADMIN_KEY,
    ADMIN_SHA256,
    MESSAGES,
    STREAM,
    demo_request,
    live_events,
    record,
    serve_two_workers,
)

# --- the event files --------------------------------------------------------------------------------------


def sse(data: bytes) -> list[tuple[str, dict[str, Any]]]:
    events = []
    for frame in data.split(b"\n\n"):
        lines = dict(line.split(b": ", 1) for line in frame.split(b"\n") if b": " in line and not line.startswith(b":"))
        if b"event" in lines:
            events.append((lines[b"event"].decode(), json.loads(lines[b"data"])))
    return events


def subscribe(directory: pathlib.Path, since: float = 0) -> list[tuple[str, dict[str, Any]]]:
    """What a new subscriber gets first."""
    tail = LiveTail(str(directory), since)
    try:
        return sse(tail.poll())
    finally:
        tail.close()


def publish(publisher: LivePublisher, request_id: str, outcome: str = "completed") -> None:
    publisher.request_started(Started(request_id, "k", "p", "openai", "m", "/v1/chat/completions"))
    publisher.request_finished(Finished(record(request_id=request_id, outcome=outcome), "openai", 1, 0.01, None, True))


def test_each_request_publishes_typed_events_in_order(tmp_path: pathlib.Path) -> None:
    publisher = LivePublisher(str(tmp_path))
    tail = LiveTail(str(tmp_path), since=0)
    publish(publisher, "a")
    publish(publisher, "b", outcome="upstream_error")
    events = sse(tail.poll())
    assert [(kind, data["request_id"]) for kind, data in events] == [
        ("request_started", "a"),
        ("usage", "a"),
        ("request_finished", "a"),
        ("request_started", "b"),
        ("usage", "b"),
        ("error", "b"),
        ("request_finished", "b"),
    ]
    assert all(data["worker"] == os.getpid() and data["t"] > 0 for _, data in events)
    assert events[5][1]["outcome"] == "upstream_error"
    assert events[1][1]["cost_usd"] == "0.5" and events[1][1]["output_tokens"] == 1
    # request_finished is the access log's line, field for field, then worker and t.
    line = json.loads(msgspec.json.encode(access_line(Finished(record(request_id="a"), "openai", 1, 0.01, None, True))))
    assert list(events[2][1]) == [*line, "worker", "t"] and {k: events[2][1][k] for k in line} == line
    assert tail.poll() == b""  # nothing new
    tail.close()
    publisher.close()


def test_files_are_bounded_and_the_tail_follows_rotation(tmp_path: pathlib.Path) -> None:
    publisher = LivePublisher(str(tmp_path), max_file_bytes=4000)
    tail = LiveTail(str(tmp_path), since=0)
    seen: list[str] = []
    for i in range(60):  # about 1 KiB per request: a rotation every few requests
        publish(publisher, f"r{i}")
        if i % 2 == 0:  # polled at least once per rotation (a tail that sleeps through two loses the middle file)
            seen += [data["request_id"] for kind, data in sse(tail.poll()) if kind == "request_finished"]
    seen += [data["request_id"] for kind, data in sse(tail.poll()) if kind == "request_finished"]
    assert seen == [f"r{i}" for i in range(60)]
    files = sorted(os.listdir(tmp_path))
    assert files == [f"{os.getpid()}.jsonl", f"{os.getpid()}.jsonl.1"]
    assert all((tmp_path / name).stat().st_size <= 4000 for name in files)
    # A new subscriber gets what is still on file: the last few requests, in order, not all 60.
    late = [data["request_id"] for kind, data in subscribe(tmp_path) if kind == "usage"]
    assert 2 < len(late) < 12 and late == [f"r{i}" for i in range(60 - len(late), 60)]
    # ... and only those from `since` on.
    cut = float((tmp_path / files[0]).read_bytes().split(b" ", 1)[0])  # a line starts with its time
    recent = subscribe(tmp_path, since=cut)
    assert recent and all(data["t"] >= cut for _, data in recent)
    tail.close()
    publisher.close()


def test_in_the_event_loop_lines_are_written_together_soon_after(tmp_path: pathlib.Path) -> None:
    """A worker's lines wait in its buffer at most FLUSH_AFTER_S (a subscriber polls every POLL_INTERVAL_S),
    or until FLUSH_EVENTS wait, then go out in one write; closing the publisher writes what is left."""
    path = tmp_path / f"{os.getpid()}.jsonl"

    async def main() -> None:
        publisher = LivePublisher(str(tmp_path))
        for i in range(20):
            publish(publisher, f"r{i}")
        assert path.stat().st_size == 0  # buffered, not yet written
        await asyncio.sleep(FLUSH_AFTER_S * 4)
        assert path.read_bytes().count(b"\n") == 40  # a line when each started, one when it finished
        # A full buffer does not wait: FLUSH_EVENTS lines (a request's two each) go out at once.
        for i in range(FLUSH_EVENTS // 2):
            publish(publisher, f"b{i}")
        assert path.read_bytes().count(b"\n") == 40 + FLUSH_EVENTS
        publish(publisher, "last")
        publisher.close()
        assert path.read_bytes().count(b"\n") == 42 + FLUSH_EVENTS

    asyncio.run(main())
    assert FLUSH_AFTER_S < POLL_INTERVAL_S


def test_tail_sees_workers_that_start_later(tmp_path: pathlib.Path) -> None:
    tail = LiveTail(str(tmp_path), since=0)
    assert tail.poll() == b""
    publisher = LivePublisher(str(tmp_path))
    publish(publisher, "late")
    assert [kind for kind, _ in sse(tail.poll())] == ["request_started", "usage", "request_finished"]
    tail.close()
    publisher.close()


# --- GET /admin/live --------------------------------------------------------------------------------------


@pytest.fixture
def stack(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Stack]:
    monkeypatch.setenv(UPSTREAM_KEY_ENV, UPSTREAM_SECRET)
    yield from start_stack(tmp_path, extra=f'\n[admin]\nkey_sha256 = "{ADMIN_SHA256}"\n')


def test_live_needs_the_admin_key(stack: Stack) -> None:
    url = stack.url + "/admin/live"
    for headers in ({}, {"authorization": f"Bearer {CLIENT_KEY}"}, {"authorization": "Bearer wrong"}):
        response = httpx.get(url, headers=headers)
        assert response.status_code == 401 and response.json()["error"]["code"] == "invalid_api_key"
    # The page itself is code, not data: it loads without a key and asks for one.
    page = httpx.get(stack.url + "/admin/", follow_redirects=True)
    assert page.status_code == 200 and b'src="live.js"' in page.content
    assert httpx.get(stack.url + "/admin").status_code == 307
    assert httpx.get(stack.url + "/admin/live.js").headers["content-type"].startswith("text/javascript")
    assert httpx.get(stack.url + "/admin/nothing-here").status_code == 404


def test_live_streams_events_as_requests_happen(stack: Stack) -> None:
    """Subscribed first, then a request and a failing one: their events arrive, and agree with the ledger."""
    got: queue.Queue[tuple[str, dict[str, Any]]] = queue.Queue()
    connected = threading.Event()

    def listen() -> None:
        with httpx.stream(
            "GET", stack.url + "/admin/live", headers={"authorization": f"Bearer {ADMIN_KEY}"}, timeout=20
        ) as response:
            kind = ""
            for line in response.iter_lines():
                if line.startswith("event: "):
                    kind = line[7:]
                elif line.startswith("data: "):
                    got.put((kind, json.loads(line[6:])))
                    connected.set()
                    if kind == "request_finished" and json.loads(line[6:])["outcome"] != "completed":
                        return

    listener = threading.Thread(target=listen, daemon=True)
    listener.start()
    assert connected.wait(10)
    assert got.get(timeout=5)[0] == "hello"
    auth = {"authorization": f"Bearer {CLIENT_KEY}"}
    stack.upstream.script = Script(body=STREAM)
    httpx.post(stack.url + "/v1/chat/completions", json={"model": "gpt-4o-mini", "messages": MESSAGES}, headers=auth)
    stack.upstream.script = Script(body=STREAM, chunk_sizes=[50], cut_after=100)
    httpx.post(
        stack.url + "/v1/chat/completions",
        json={"model": "gpt-4o-mini", "messages": MESSAGES, "stream": True},
        headers=auth,
    )
    listener.join(15)
    events = [got.get_nowait() for _ in range(got.qsize())]
    records = {r.request_id: r for r in stack.records(at_least=2)}
    assert [kind for kind, _ in events] == [
        "request_started",
        "usage",
        "request_finished",
        "request_started",
        "usage",
        "error",
        "request_finished",
    ]
    for kind, data in events:
        rec = records[data["request_id"]]
        if kind == "usage":
            assert (data["input_tokens"], data["output_tokens"], data["cost_usd"]) == (
                rec.input_tokens,
                rec.output_tokens,
                rec.cost,
            )
        if kind in ("error", "request_finished"):
            assert (data["outcome"], data["http_status"]) == (rec.outcome, rec.http_status)
    assert events[5][1]["outcome"] == "upstream_error"


def test_live_streams_end_when_the_server_begins_to_stop(stack: Stack) -> None:
    """Ctrl-C must not wait out the graceful timeout for an open dashboard."""
    with httpx.stream(
        "GET", stack.url + "/admin/live", headers={"authorization": f"Bearer {ADMIN_KEY}"}, timeout=10
    ) as response:
        lines = response.iter_lines()
        assert next(lines).startswith("retry:")
        started = time.monotonic()
        stack.loop.loop.call_soon_threadsafe(stack.proxy.app.begin_shutdown)
        for _ in lines:
            pass
        assert time.monotonic() - started < 2


# --- the page, in headless Chromium -----------------------------------------------------------------------

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1280,1100",
    "--remote-debugging-pipe",
]


class Chromium:
    """Headless Chromium driven over the DevTools protocol on a pipe (fd 3 in, fd 4 out; NUL after each JSON
    message), so no port and no websocket library: the pipe is the only way in."""

    def __init__(self, profile: pathlib.Path, log: pathlib.Path) -> None:
        binary = shutil.which("chromium") or shutil.which("chromium-browser")
        assert binary is not None
        with open(log, "wb") as err:
            # bash moves our pipe ends to the fds Chromium reads and writes the protocol on.
            self.proc = subprocess.Popen(
                ["bash", "-c", 'exec "$@" 3<&0 4>&1 0</dev/null 1>&2', "chromium", binary, *CHROMIUM_FLAGS]
                + [f"--user-data-dir={profile}", "about:blank"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=err,
                start_new_session=True,
            )
        self._next_id = 0
        self._replies: dict[int, dict[str, Any]] = {}
        self._arrived = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        target = self.call("Target.createTarget", url="about:blank")["targetId"]
        self.session = self.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]

    def _read(self) -> None:
        assert self.proc.stdout is not None
        buffer = b""
        while chunk := os.read(self.proc.stdout.fileno(), 65536):
            buffer += chunk
            *messages, buffer = buffer.split(b"\0")
            for raw in messages:
                message = json.loads(raw)
                if "id" in message:
                    with self._arrived:
                        self._replies[message["id"]] = message
                        self._arrived.notify_all()

    def call(self, method: str, session: str | None = None, **params: Any) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self._next_id += 1
        ident = self._next_id
        message: dict[str, Any] = {"id": ident, "method": method, "params": params}
        if session is not None:
            message["sessionId"] = session
        self.proc.stdin.write(json.dumps(message).encode() + b"\0")
        self.proc.stdin.flush()
        with self._arrived:
            assert self._arrived.wait_for(lambda: ident in self._replies, timeout=30), f"no reply to {method}"
            reply = self._replies.pop(ident)
        assert "error" not in reply, reply
        result: dict[str, Any] = reply["result"]
        return result

    def page(self, method: str, **params: Any) -> dict[str, Any]:
        return self.call(method, self.session, **params)

    def js(self, expression: str) -> Any:
        result = self.page("Runtime.evaluate", expression=expression, returnByValue=True)
        assert "exceptionDetails" not in result, result
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout_s: float = 20.0) -> Any:
        """`expression`'s value once truthy (a page still loading may throw meanwhile)."""
        deadline = time.monotonic() + timeout_s
        while True:
            result = self.page("Runtime.evaluate", expression=expression, returnByValue=True)
            found = None if "exceptionDetails" in result else result["result"].get("value")
            if found:
                return found
            assert time.monotonic() < deadline, f"timed out waiting for: {expression}"
            time.sleep(0.1)

    def screenshot(self, path: pathlib.Path) -> None:
        path.write_bytes(base64.b64decode(self.page("Page.captureScreenshot", format="png")["data"]))

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.call("Browser.close")
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)
        self._reader.join(5)
        for pipe in (self.proc.stdin, self.proc.stdout):
            if pipe is not None:
                with contextlib.suppress(OSError):
                    pipe.close()


@pytest.fixture
def chromium(tmp_path: pathlib.Path) -> Iterator[Chromium]:
    if shutil.which("chromium") is None and shutil.which("chromium-browser") is None:
        pytest.skip("chromium is not installed (tests/install-system-deps.sh installs it)")
    browser = Chromium(tmp_path / "chromium-profile", tmp_path / "chromium.log")
    try:
        yield browser
    finally:
        browser.close()


TILES = "['active', 'tokens-per-s', 'spend-per-min', 'spend-hour', 'requests-hour', 'errors-hour']"
READ_TILES = f"Object.fromEntries({TILES}.map(id => [id, Number(document.getElementById(id).dataset.value)]))"
READ_ROWS = (
    "[...document.querySelectorAll('#latest tbody tr')].map(tr => "
    "({id: tr.dataset.requestId, cost: tr.dataset.cost, out: Number(tr.dataset.outputTokens), "
    "worker: Number(tr.dataset.worker), outcome: tr.querySelector('.outcome').textContent}))"
)
READ_BARS = (
    "[...document.querySelectorAll('#chart rect')].map(r => ({model: r.dataset.model, cost: Number(r.dataset.cost)}))"
)


def in_threads(target: Callable[[], None], count: int) -> list[threading.Thread]:
    threads = [threading.Thread(target=target) for _ in range(count)]
    for thread in threads:
        thread.start()
    return threads


def test_live_page_in_chromium(tmp_path: pathlib.Path, chromium: Chromium) -> None:
    """Two workers, the demo upstream at 10 tokens/s (each answer takes ~4 s): the page shows streams in flight
    while they run, then requests, tokens per second, spend per minute and the chart exactly as in the ledger,
    from both workers, including a stream the client abandoned (an error)."""
    with serve_two_workers(tmp_path, tokens_per_s=10) as served:
        base = f"http://127.0.0.1:{served.port}"
        chromium.page("Page.navigate", url=f"{base}/admin/#key={ADMIN_KEY}")
        chromium.wait_for("document.getElementById('status').dataset.state === 'live'")
        assert chromium.js("location.hash") == ""  # the key left the URL
        before = chromium.js(READ_TILES)
        assert before == {name: 0 for name in before}

        threads = in_threads(lambda: demo_request(served.port), 6)
        active = chromium.wait_for("Number(document.getElementById('active').dataset.value) >= 2 && " + READ_TILES)
        assert active["requests-hour"] == 0  # in flight, not finished yet
        chromium.screenshot(tmp_path / "admin-live-streaming.png")

        def abandon() -> None:  # a client that leaves mid-stream: outcome client_disconnected
            with httpx.stream(
                "POST",
                f"{base}/v1/chat/completions",
                json={"model": "gpt-4o-mini", "stream": True, "messages": [{"role": "user", "content": "Hi"}]},
                headers={"authorization": "Bearer tp-demo-key"},
            ) as response:
                next(response.iter_raw())

        abandon()
        for thread in threads:
            thread.join(30)
        finished = live_events(served.port, 7, "request_finished")
        total = len(finished)
        workers = {event["worker"] for event in finished}
        chromium.wait_for(f"{READ_TILES}['requests-hour'] === {total} && {READ_TILES}['active'] === 0")
        after = chromium.js(READ_TILES)
        rows = chromium.js(READ_ROWS)
        workers_shown = chromium.js("Number(document.getElementById('workers').dataset.value)")
        form_shown = chromium.js("getComputedStyle(document.getElementById('key-form')).display !== 'none'")
        bars = chromium.js(READ_BARS)
        shot = tmp_path / "admin-live.png"
        chromium.screenshot(shot)
        print(f"\nscreenshot of /admin/: {shot}")
        served.stop()

    records = SQLiteBackend(str(tmp_path / "ledger.db")).query(None, None)
    assert len(records) == total == 7
    by_id = {r.request_id: r for r in records}
    ledger_cost = sum(Decimal(r.cost) for r in records if r.cost is not None)
    assert ledger_cost > 0
    assert after["requests-hour"] == len(records)
    assert after["errors-hour"] == sum(r.outcome != "completed" for r in records) == 1
    assert after["spend-hour"] == pytest.approx(float(ledger_cost), rel=1e-9)
    assert after["spend-per-min"] == pytest.approx(float(ledger_cost), rel=1e-9)  # all within the minute
    assert after["tokens-per-s"] == pytest.approx(sum(r.output_tokens for r in records) / 60, rel=1e-9)
    assert after != before
    assert {row["id"] for row in rows} == set(by_id)
    for row in rows:
        rec = by_id[row["id"]]
        assert (row["cost"], row["out"], row["outcome"]) == (rec.cost or "", rec.output_tokens, rec.outcome)
    assert {row["worker"] for row in rows} == workers and workers_shown == len(workers)
    assert not form_shown  # connected: no key asked for
    assert {bar["model"] for bar in bars} == {"gpt-4o-mini"}
    assert sum(bar["cost"] for bar in bars) == pytest.approx(float(ledger_cost), rel=1e-9)
