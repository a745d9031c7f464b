"""`/metrics` and the access log as an operator sees them: after real requests through a real hypercorn, the
figures agree with the ledger; with 2 worker processes, any scrape shows both workers' requests."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import hashlib
import json
import os
import pathlib
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import httpx
import openai
import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from proxy.demo import DEMO_TEXT
from proxy.ledger import Ledger, LedgerRecord, SQLiteBackend
from proxy.metrics import FLUSH_AFTER_S, FLUSH_EVENTS, MAX_MODELS, Metrics
from proxy.observe import Finished, Started
from tests.servers import CLIENT_KEY, UPSTREAM_KEY_ENV, UPSTREAM_SECRET, Script, Stack, free_port, start_stack
from tests.test_cli import ROOT, Served, wait_until_serving

ADMIN_KEY = "tp-admin-test-key"
ADMIN_SHA256 = hashlib.sha256(ADMIN_KEY.encode()).hexdigest()
MESSAGES = [{"role": "user", "content": "Hi"}]

STREAM = (
    b'data: {"id":"c1","object":"chat.completion.chunk","created":1,"model":"gpt-4o-mini","choices":[{"index":0,'
    b'"delta":{"role":"assistant","content":"Hello"},"finish_reason":null}]}\n\n'
    b'data: {"id":"c1","object":"chat.completion.chunk","created":1,"model":"gpt-4o-mini","choices":[{"index":0,'
    b'"delta":{},"finish_reason":"stop"}]}\n\n'
    b'data: {"id":"c1","object":"chat.completion.chunk","created":1,"model":"gpt-4o-mini","choices":[],'
    b'"usage":{"prompt_tokens":9,"completion_tokens":2,"total_tokens":11,'
    b'"prompt_tokens_details":{"cached_tokens":4}}}\n\n'
    b"data: [DONE]\n\n"
)
JSON_BODY = json.dumps(
    {
        "id": "c2",
        "object": "chat.completion",
        "created": 1,
        "model": "gpt-4o-mini",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hi"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8},
    }
).encode()

# Every family /metrics exposes (prometheus_client's names: counters without their `_total`).
FAMILIES = {
    "teeproxy_requests",
    "teeproxy_time_to_first_byte_seconds",
    "teeproxy_stream_duration_seconds",
    "teeproxy_stream_max_gap_seconds",
    "teeproxy_tokens",
    "teeproxy_cost_usd",
    "teeproxy_unpriced_requests",
    "teeproxy_active_requests",
    "teeproxy_upstream_attempts",
    "teeproxy_ledger_queue_depth",
    "teeproxy_ledger_write_failures",
    "teeproxy_gc_pause_seconds",
}


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """`{(sample name, labels): value}` from Prometheus exposition text."""
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return out


def value(text: str, name: str, **labels: str) -> float:
    """The sum of `name`'s samples whose labels include `labels` (0 when none)."""
    wanted = set(labels.items())
    return sum(v for (n, have), v in samples(text).items() if n == name and wanted <= have)


@pytest.fixture
def stack(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Stack]:
    monkeypatch.setenv(UPSTREAM_KEY_ENV, UPSTREAM_SECRET)
    extra = f'\n[log]\naccess = true\naccess_path = "{tmp_path / "access.jsonl"}"\n'
    yield from start_stack(tmp_path, extra=extra)


def test_metrics_agree_with_the_ledger(stack: Stack, tmp_path: pathlib.Path) -> None:
    """Two streams with a pause between chunks, one JSON response, a stream the upstream cuts, an upstream 500:
    requests by outcome, tokens by kind, cost, timings and attempts on /metrics all say what the ledger says."""
    client = openai.OpenAI(base_url=stack.url + "/v1", api_key=CLIENT_KEY, max_retries=0)
    stack.upstream.script = Script(body=STREAM, chunk_sizes=[len(STREAM) // 3], pause_s=0.15)
    for _ in range(2):
        for _chunk in client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True):
            pass
    stack.upstream.script = Script(body=JSON_BODY, content_type=b"application/json", content_length=True)
    client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    stack.upstream.script = Script(body=STREAM, chunk_sizes=[50], cut_after=100)  # fails mid-stream
    chat = {"model": "gpt-4o-mini", "messages": MESSAGES, "stream": True}
    auth = {"authorization": f"Bearer {CLIENT_KEY}"}
    assert b'"error"' in httpx.post(stack.url + "/v1/chat/completions", json=chat, headers=auth).content
    stack.upstream.script = Script(body=b'{"error": {"message": "overloaded"}}', status=500)
    assert httpx.post(stack.url + "/v1/chat/completions", json=chat, headers=auth).status_code == 500
    records = stack.records(at_least=5)
    assert len(records) == 5

    response = httpx.get(stack.url + "/metrics")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    text = response.text
    assert {family.name for family in text_string_to_metric_families(text)} == FAMILIES

    by = {"provider": "replay", "model": "gpt-4o-mini"}
    endpoint = "/v1/chat/completions"
    assert value(text, "teeproxy_requests_total", **by, endpoint=endpoint, outcome="completed") == 4
    assert value(text, "teeproxy_requests_total", **by, endpoint=endpoint, outcome="upstream_error") == 1
    for kind, field in [
        ("input", "input_tokens"),
        ("output", "output_tokens"),
        ("cached", "cached_tokens"),
        ("cache_write", "cache_write_tokens"),
        ("reasoning", "reasoning_tokens"),
    ]:
        assert value(text, "teeproxy_tokens_total", **by, kind=kind) == sum(getattr(r, field) for r in records)
    assert value(text, "teeproxy_tokens_total", kind="cached") == 8  # the streams' cached prompt tokens
    ledger_cost = sum(Decimal(r.cost) for r in records if r.cost is not None)
    assert ledger_cost > 0
    assert value(text, "teeproxy_cost_usd_total", **by) == pytest.approx(float(ledger_cost), rel=1e-9)

    with_ttfb = [r for r in records if r.ttfb_ms is not None]
    assert value(text, "teeproxy_time_to_first_byte_seconds_count", **by) == len(with_ttfb) == 5
    assert value(text, "teeproxy_time_to_first_byte_seconds_sum", **by) == pytest.approx(
        sum(r.ttfb_ms for r in with_ttfb) / 1000, rel=1e-6
    )
    assert value(text, "teeproxy_stream_duration_seconds_count", **by) == 3
    assert value(text, "teeproxy_stream_max_gap_seconds_count", **by) == 3
    # The upstream paused 0.15 s between writes: each stream's largest gap is at least that, and in its bucket.
    assert value(text, "teeproxy_stream_max_gap_seconds_bucket", **by, le="0.1") == 1  # the cut stream
    assert value(text, "teeproxy_stream_max_gap_seconds_bucket", **by, le="0.5") == 3
    assert value(text, "teeproxy_time_to_first_byte_seconds_bucket", **by, le="300.0") == 5
    assert value(text, "teeproxy_upstream_attempts_total", provider="replay", result="ok") == 3
    assert value(text, "teeproxy_upstream_attempts_total", provider="replay", result="error") == 1
    assert value(text, "teeproxy_upstream_attempts_total", provider="replay", result="http_5xx") == 1
    assert value(text, "teeproxy_active_requests") == 0
    assert value(text, "teeproxy_ledger_queue_depth") == 0
    assert value(text, "teeproxy_ledger_write_failures_total") == 0


def test_collector_pauses_are_timed(stack: Stack) -> None:
    """Every collection of Python's cyclic collector stops the worker: each one is in the histogram, by
    generation, with its duration (the app shares this test's process, so a collection here is one there)."""
    before = value(httpx.get(stack.url + "/metrics").text, "teeproxy_gc_pause_seconds_count", generation="2")
    started = time.perf_counter()
    gc.collect()
    took = time.perf_counter() - started
    text = httpx.get(stack.url + "/metrics").text
    assert value(text, "teeproxy_gc_pause_seconds_count", generation="2") >= before + 1
    assert 0 < value(text, "teeproxy_gc_pause_seconds_sum", generation="2") <= took * 100


def test_access_log_has_one_line_per_request_and_no_secret(stack: Stack, tmp_path: pathlib.Path) -> None:
    stack.upstream.script = Script(body=STREAM)
    for stream in (True, False):
        httpx.post(
            stack.url + "/v1/chat/completions",
            json={"model": "gpt-4o-mini", "messages": MESSAGES, "stream": stream},
            headers={"authorization": f"Bearer {CLIENT_KEY}"},
        )
    stack.upstream.script = Script(body=STREAM, chunk_sizes=[50], cut_after=100)
    httpx.post(
        stack.url + "/v1/chat/completions",
        json={"model": "gpt-4o-mini", "messages": MESSAGES, "stream": True},
        headers={"authorization": f"Bearer {CLIENT_KEY}"},
    )
    records = {r.request_id: r for r in stack.records(at_least=3)}
    raw = (tmp_path / "access.jsonl").read_bytes()
    assert CLIENT_KEY.encode() not in raw and UPSTREAM_SECRET.encode() not in raw
    lines = [json.loads(line) for line in raw.splitlines()]
    assert len(lines) == 3 and {line["request_id"] for line in lines} == set(records)
    for line in lines:
        record = records[line["request_id"]]
        assert (line["outcome"], line["http_status"], line["attempts"]) == (record.outcome, record.http_status, 1)
        assert (line["input_tokens"], line["output_tokens"]) == (record.input_tokens, record.output_tokens)
        assert line["cost_usd"] == record.cost and line["key_name"] == "tester" and line["dialect"] == "openai"
    assert sorted(line["outcome"] for line in lines) == ["completed", "completed", "upstream_error"]


@pytest.mark.parametrize("need_key", [False, True])
def test_metrics_key(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch, need_key: bool) -> None:
    """Open by default, like other gateways; `metrics_need_key` puts it behind the admin key, never a client's."""
    monkeypatch.setenv(UPSTREAM_KEY_ENV, UPSTREAM_SECRET)
    extra = f'\n[admin]\nkey_sha256 = "{ADMIN_SHA256}"\nmetrics_need_key = {str(need_key).lower()}\n'
    for stack in start_stack(tmp_path, extra=extra):
        url = stack.url + "/metrics"
        statuses = [
            httpx.get(url).status_code,
            httpx.get(url, headers={"authorization": f"Bearer {CLIENT_KEY}"}).status_code,
            httpx.get(url, headers={"authorization": f"Bearer {ADMIN_KEY}"}).status_code,
        ]
        assert statuses == ([401, 401, 200] if need_key else [200, 200, 200])
        if need_key:
            refused = httpx.get(url, headers={"authorization": f"Bearer {CLIENT_KEY}"})
            assert refused.json()["error"]["code"] == "invalid_api_key"
            assert refused.headers["www-authenticate"] == "Bearer"
            assert b"teeproxy_" not in refused.content


def record(model: str = "m", **fields: Any) -> LedgerRecord:
    base: dict[str, Any] = dict(
        request_id="r",
        time="2026-01-01T00:00:00.000000+00:00",
        key_name="k",
        provider="p",
        model=model,
        endpoint=f"/v1beta/models/{model}:streamGenerateContent",
        outcome="completed",
        http_status=200,
        input_tokens=1,
        cached_tokens=0,
        cache_write_tokens=0,
        output_tokens=1,
        reasoning_tokens=0,
        usage_status="reported",
        cost="0.5",
        cost_status="priced",
        raw_usage=None,
        ttfb_ms=1.0,
        duration_ms=2.0,
        bytes_to_client=10,
    )
    base.update(fields)
    return LedgerRecord(**base)


def test_labels_are_bounded_and_paths_do_not_repeat_the_model() -> None:
    metrics = Metrics()
    for i in range(MAX_MODELS + 50):
        rec = record(model=f"gemini-x-{i}")
        metrics.request_started(Started("r", "k", "p", "gemini", rec.model or "", rec.endpoint))
        metrics.request_finished(Finished(rec, "gemini", 2, 0.001, 0.002, True))
    text = metrics.render().decode()
    models = {dict(labels).get("model") for (name, labels) in samples(text) if name == "teeproxy_requests_total"}
    assert len(models) == MAX_MODELS + 1 and "other" in models
    endpoints = {dict(labels)["endpoint"] for (name, labels) in samples(text) if name == "teeproxy_requests_total"}
    assert endpoints == {"/v1beta/models/{model}:streamGenerateContent"}
    # Two attempts each: one that failed over (its provider unknown to the seam), one that answered.
    assert value(text, "teeproxy_upstream_attempts_total", result="failed_over") == MAX_MODELS + 50
    assert value(text, "teeproxy_upstream_attempts_total", provider="p", result="ok") == MAX_MODELS + 50
    assert value(text, "teeproxy_cost_usd_total") == pytest.approx(0.5 * (MAX_MODELS + 50))
    assert value(text, "teeproxy_active_requests") == 0


def test_requests_are_counted_together_soon_after_and_before_every_scrape() -> None:
    """In the event loop a request is noted, and counted with the others within FLUSH_AFTER_S (or FLUSH_EVENTS),
    always before a scrape is rendered; the batch's sums are the requests' own."""

    def counted(metrics: Metrics) -> tuple[float, float, float, float]:
        assert metrics.registry is not None
        text = generate_latest(metrics.registry).decode()  # what a scrape elsewhere would see: no flush first
        return (
            value(text, "teeproxy_requests_total"),
            value(text, "teeproxy_tokens_total", kind="output"),
            value(text, "teeproxy_time_to_first_byte_seconds_count"),
            value(text, "teeproxy_active_requests"),
        )

    def one(metrics: Metrics, finish: bool = True) -> None:
        rec = record(output_tokens=7)
        metrics.request_started(Started("r", "k", "p", "openai", rec.model or "", rec.endpoint))
        if finish:
            metrics.request_finished(Finished(rec, "openai", 1, 0.001, 0.002, True))

    async def main() -> None:
        metrics = Metrics()
        for _ in range(3):
            one(metrics)
        one(metrics, finish=False)
        assert counted(metrics) == (0, 0, 0, 0)  # noted, not yet counted
        await asyncio.sleep(2 * FLUSH_AFTER_S)
        assert counted(metrics) == (3, 21, 3, 1)
        one(metrics)
        text = metrics.render().decode()  # a scrape this worker serves counts what it noted first
        assert value(text, "teeproxy_requests_total") == 4 and value(text, "teeproxy_active_requests") == 1
        for _ in range(FLUSH_EVENTS):
            one(metrics)
        assert counted(metrics)[0] == 4 + FLUSH_EVENTS  # a full batch is counted at once
        metrics.close()

    asyncio.run(main())


class FlakyBackend(SQLiteBackend):
    """A real SQLite ledger whose writes fail until `heal` is set."""

    def __init__(self, path: str) -> None:
        super().__init__(path)
        self.heal = threading.Event()

    def write(self, records: list[LedgerRecord]) -> None:
        if not self.heal.is_set():
            raise OSError("disk on fire")
        super().write(records)


def test_ledger_queue_depth_and_write_failures(tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture) -> None:
    async def run() -> list[tuple[float, float]]:
        backend = FlakyBackend(str(tmp_path / "ledger.db"))
        ledger = Ledger(backend, str(tmp_path / "spill.jsonl"))
        await ledger.start()
        metrics = Metrics()
        seen = []
        try:
            for i in range(3):
                ledger.submit(record(request_id=f"r{i}"))
            deadline = time.monotonic() + 10
            while ledger.write_failures < 2 and time.monotonic() < deadline:  # noqa: ASYNC110 - no event to await
                await asyncio.sleep(0.01)
            for _ in range(2):  # sampling twice counts each failure once
                metrics.sample(ledger)
            text = metrics.render().decode()
            seen.append(
                (value(text, "teeproxy_ledger_queue_depth"), value(text, "teeproxy_ledger_write_failures_total"))
            )
            backend.heal.set()
            await ledger.flush()
            metrics.sample(ledger)
            text = metrics.render().decode()
            seen.append(
                (value(text, "teeproxy_ledger_queue_depth"), value(text, "teeproxy_ledger_write_failures_total"))
            )
        finally:
            backend.heal.set()
            await ledger.aclose()
        return seen

    (stuck_depth, failures), (depth_after, failures_after) = asyncio.run(run())
    assert stuck_depth == 3 and failures >= 2
    assert depth_after == 0 and failures_after >= failures


# --- N worker processes -----------------------------------------------------------------------------------


@contextlib.contextmanager
def serve_two_workers(tmp_path: pathlib.Path, tokens_per_s: int = 400, extra: str = "") -> Iterator[Served]:
    """`python -m proxy serve --workers 2` with the shipped config, the demo upstream and an admin key."""
    port = free_port()
    config = tmp_path / "teeproxy.toml"
    text = (ROOT / "config" / "teeproxy.toml").read_text()
    text = text.replace('path = "teeproxy-ledger.db"', f'path = "{tmp_path / "ledger.db"}"')
    text = text.replace("tokens_per_s = 40", f"tokens_per_s = {tokens_per_s}")
    text += f'\n[admin]\nkey_sha256 = "{ADMIN_SHA256}"\n{extra}'
    config.write_text(text)
    env = {k: v for k, v in os.environ.items() if not k.endswith("_API_KEY") and k != "PROMETHEUS_MULTIPROC_DIR"}
    env["TEEPROXY_CONFIG"] = str(config)
    with open(tmp_path / "serve.log", "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "proxy", "serve", "--bind", f"127.0.0.1:{port}", "--workers", "2"],
            cwd=tmp_path,
            env=env,
            stdout=log,
            stderr=log,
            start_new_session=True,
        )
    served = Served(proc, port, tmp_path)
    try:
        wait_until_serving(port, proc)
        yield served
    finally:
        served.stop()


def live_events(port: int, count: int, kind: str, timeout_s: float = 15.0) -> list[dict[str, Any]]:
    """The first `count` events of `kind` on GET /admin/live (history first, so already-finished requests)."""
    found: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout_s
    with httpx.stream(
        "GET",
        f"http://127.0.0.1:{port}/admin/live",
        headers={"authorization": f"Bearer {ADMIN_KEY}"},
        timeout=timeout_s,
    ) as response:
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("text/event-stream")
        event = None
        for line in response.iter_lines():
            if line.startswith("event: "):
                event = line[7:]
            elif line.startswith("data: ") and event == kind:
                found.append(json.loads(line[6:]))
                if len(found) == count:
                    return found
            assert time.monotonic() < deadline, f"only {len(found)} {kind} events"
    return found


def demo_request(port: int) -> None:
    """One streamed chat completion on a connection of its own (so the kernel may give it to either worker)."""
    with openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="tp-demo-key", max_retries=0) as client:
        stream = client.chat.completions.create(
            model="gpt-4o-mini",
            stream=True,
            messages=[{"role": "user", "content": "Hello"}],
        )
        assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices).startswith("Hello")


def drive_until_both_workers(port: int, batch: int = 6, max_batches: int = 6) -> list[dict[str, Any]]:
    """Concurrent requests in batches until both workers have served some; their request_finished events."""
    sent = 0
    for _ in range(max_batches):
        threads = [threading.Thread(target=demo_request, args=(port,)) for _ in range(batch)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        sent += batch
        finished = live_events(port, sent, "request_finished")
        if len({event["worker"] for event in finished}) == 2:
            return finished
    raise AssertionError(f"all {sent} requests went to one worker")


def test_two_workers_metrics_merge_both_workers(tmp_path: pathlib.Path) -> None:
    """Every scrape, whichever worker answers it, counts the requests of both."""
    with serve_two_workers(tmp_path) as served:
        finished = drive_until_both_workers(served.port)
        total = len(finished)
        per_worker = {w: sum(e["worker"] == w for e in finished) for w in {e["worker"] for e in finished}}
        assert len(per_worker) == 2 and max(per_worker.values()) < total
        words = len(DEMO_TEXT.split(" "))
        time.sleep(2 * FLUSH_AFTER_S)  # a worker counts what it noted within FLUSH_AFTER_S
        for _ in range(6):  # fresh connections: scrapes land on either worker
            text = httpx.get(f"http://127.0.0.1:{served.port}/metrics", headers={"connection": "close"}).text
            by = {"provider": "demo", "model": "gpt-4o-mini"}
            assert value(text, "teeproxy_requests_total", **by, outcome="completed") == total
            assert value(text, "teeproxy_tokens_total", **by, kind="output") == total * words
            assert value(text, "teeproxy_time_to_first_byte_seconds_count", **by) == total
            assert value(text, "teeproxy_active_requests") == 0
        cost = value(text, "teeproxy_cost_usd_total", **by)
        served.stop()
    records = SQLiteBackend(str(tmp_path / "ledger.db")).query(None, None)
    assert len(records) == total
    assert cost == pytest.approx(float(sum(Decimal(r.cost or "0") for r in records)), rel=1e-9)
