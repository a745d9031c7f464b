"""A SIGKILL loses no bill: requests answered in full keep their records, requests in flight are recovered as
`interrupted`, and `teeproxy usage` tells the operator what is on disk and not yet in the ledger."""

from __future__ import annotations

import asyncio
import os
import pathlib
import signal
import subprocess
import sys
import time

import httpx
import msgspec

from proxy.journal import Journal, orphaned_journals, read_journal
from proxy.ledger import LedgerRecord, SQLiteBackend, open_ledger
from tests.servers import free_port

ROOT = pathlib.Path(__file__).resolve().parent.parent


def record(i: int, outcome: str = "completed") -> LedgerRecord:
    return LedgerRecord(
        request_id=f"req-{i}",
        time=f"2026-11-25T10:00:{i:02d}.000000+00:00",
        key_name="k",
        provider="p",
        model="m",
        endpoint="/v1/chat/completions",
        outcome=outcome,
        http_status=200,
        input_tokens=i,
        cached_tokens=0,
        cache_write_tokens=0,
        output_tokens=i,
        reasoning_tokens=0,
        usage_status="reported",
        cost="0.001",
        cost_status="priced",
        raw_usage=None,
        ttfb_ms=1.0,
        duration_ms=2.0,
        bytes_to_client=10,
    )


def test_a_journal_gives_back_finished_records_and_interrupted_stubs(tmp_path: pathlib.Path) -> None:
    journal = Journal(str(tmp_path / "ledger.db"))
    for i in range(3):
        journal.started(record(i, outcome="in-flight"))
    journal.finished(record(0))
    journal.finished(record(1))
    with open(journal.path, "ab") as file:
        file.write(b'F{"request_id": "cut sho')  # the kill landed mid-line
    got = {r.request_id: r for r in read_journal(journal.path, LedgerRecord)}
    assert got["req-0"] == record(0) and got["req-1"] == record(1)
    assert (got["req-2"].outcome, got["req-2"].usage_status, got["req-2"].cost) == ("interrupted", "missing", None)
    journal.close(remove=False)


def test_a_journal_is_compacted_once_the_database_has_everything(tmp_path: pathlib.Path) -> None:
    from proxy import journal as module

    journal = Journal(str(tmp_path / "ledger.db"))
    journal.started(record(99, outcome="in-flight"))
    big = msgspec.structs.replace(record(1), raw_usage="x" * (module.COMPACT_AFTER_BYTES + 1))
    journal.finished(big)
    journal.committed(1)
    remaining = read_journal(journal.path, LedgerRecord)
    assert [r.request_id for r in remaining] == ["req-99"]  # the open request's stub was written back
    journal.close(remove=True)
    assert not os.path.exists(journal.path)


def test_the_next_start_recovers_what_a_killed_worker_left(tmp_path: pathlib.Path) -> None:
    path = str(tmp_path / "ledger.db")
    # A worker that died: its journal is named after a pid that no longer runs.
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(dead.stdout)
    stem = path
    with open(f"{stem}.journal.{pid}.jsonl", "wb") as file:
        encode = msgspec.json.encode
        file.write(b"S" + encode(record(1, "in-flight")) + b"\n" + b"F" + encode(record(1)) + b"\n")
        file.write(b"S" + encode(record(2, "in-flight")) + b"\n")
    assert orphaned_journals(stem) == [f"{stem}.journal.{pid}.jsonl"]

    async def start_and_stop() -> int:
        ledger = open_ledger(path, None)
        await ledger.start()
        recovered = ledger.recovered
        await ledger.aclose()
        return recovered

    assert asyncio.run(start_and_stop()) == 2
    rows = {r.request_id: r.outcome for r in SQLiteBackend(path).query(None, None)}
    assert rows == {"req-1": "completed", "req-2": "interrupted"}
    assert orphaned_journals(stem) == []
    assert asyncio.run(start_and_stop()) == 0  # nothing twice


def test_sigkill_loses_no_record(tmp_path: pathlib.Path) -> None:
    """`teeproxy serve` answers some requests in full and has others in flight; SIGKILL; the next start has a
    record for every one of them."""
    port = free_port()
    config = tmp_path / "teeproxy.toml"
    text = (ROOT / "config" / "teeproxy.toml").read_text().replace("tokens_per_s = 40", "tokens_per_s = 5")
    config.write_text(text.replace('path = "teeproxy-ledger.db"', 'path = "ledger.db"'))
    env = {k: v for k, v in os.environ.items() if not k.endswith("_API_KEY")}
    env["PYTHONPATH"] = str(ROOT)
    command = [sys.executable, "-m", "proxy", "serve", "--config", str(config), "--bind", f"127.0.0.1:{port}"]
    with open(tmp_path / "serve.log", "wb") as log:
        proc = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=log, stderr=log, start_new_session=True)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline and proc.poll() is None
                time.sleep(0.05)
        url = f"http://127.0.0.1:{port}/v1/chat/completions"
        auth = {"authorization": "Bearer tp-demo-key"}
        body = {"model": "gpt-4o-mini", "messages": [], "max_tokens": 1}
        for _ in range(5):  # answered in full, just before the kill (well inside one batch window)
            assert httpx.post(url, json=body, headers=auth, timeout=10).status_code == 200
        streams = [
            httpx.stream("POST", url, json={**body, "stream": True, "max_tokens": 50}, headers=auth) for _ in range(3)
        ]
        for s in streams:
            s.__enter__()
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
        for s in streams:
            try:
                s.__exit__(None, None, None)
            except httpx.HTTPError:
                pass
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    ledger = str(tmp_path / "ledger.db")
    # `teeproxy usage` says what is waiting, then --recover writes it.
    usage = [sys.executable, "-m", "proxy", "usage", "--config", str(config)]
    said = subprocess.run(usage, capture_output=True, text=True, env=env, cwd=tmp_path)
    assert "journal(s) of stopped workers" in said.stderr
    subprocess.run([*usage, "--recover"], capture_output=True, text=True, env=env, cwd=tmp_path, check=True)
    outcomes = sorted(r.outcome for r in SQLiteBackend(ledger).query(None, None))
    assert outcomes == ["completed"] * 5 + ["interrupted"] * 3


def test_a_ledger_that_cannot_be_opened_stops_start_up_with_one_line(tmp_path: pathlib.Path) -> None:
    config = tmp_path / "teeproxy.toml"
    text = (ROOT / "config" / "teeproxy.toml").read_text()
    config.write_text(text.replace('path = "teeproxy-ledger.db"', 'path = "/nonexistent/dir/ledger.db"'))
    env = {k: v for k, v in os.environ.items() if not k.endswith("_API_KEY")}
    env["PYTHONPATH"] = str(ROOT)
    for workers in ("1", "2"):
        command = [sys.executable, "-m", "proxy", "serve", "--config", str(config), "--workers", workers]
        done = subprocess.run(
            [*command, "--bind", f"127.0.0.1:{free_port()}"], capture_output=True, text=True, env=env, timeout=60
        )
        assert done.returncode == 1
        assert "cannot open the ledger at /nonexistent/dir/ledger.db" in done.stderr
        assert "Traceback" not in done.stderr
