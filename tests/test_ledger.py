"""The ledger: records survive, in WAL-mode SQLite and in a real PostgreSQL; `teeproxy usage` reads them."""

from __future__ import annotations

import argparse
import asyncio
import json
import pathlib
import sqlite3
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

from proxy.__main__ import main
from proxy.ledger import FIELDS, Ledger, LedgerRecord, SQLiteBackend, open_ledger, utc_iso, utc_now_iso
from proxy.usage_cli import run
from tests.pg import pg_bin, postgres_server


def record(i: int, time: str = "2026-11-22T10:00:00.000000+00:00", **extra: object) -> LedgerRecord:
    values: dict[str, object] = {
        "request_id": f"req-{i}",
        "time": time,
        "key_name": "dev",
        "provider": "openai",
        "model": "gpt-4o-mini",
        "endpoint": "/v1/chat/completions",
        "outcome": "completed",
        "http_status": 200,
        "input_tokens": 10 + i,
        "cached_tokens": 2,
        "cache_write_tokens": 0,
        "output_tokens": 5,
        "reasoning_tokens": 1,
        "usage_status": "reported",
        "cost": "0.0000045",
        "cost_status": "priced",
        "raw_usage": '{"prompt_tokens": 10}',
        "ttfb_ms": 12.5,
        "duration_ms": 250.0,
        "bytes_to_client": 1234,
    }
    values.update(extra)
    return LedgerRecord(**values)  # type: ignore[arg-type]


def roundtrip(path: str | None, url: str | None, records: list[LedgerRecord]) -> list[LedgerRecord]:
    async def go() -> None:
        ledger = open_ledger(path, url)
        await ledger.start()
        for r in records:
            ledger.submit(r)
        await ledger.aclose()  # submitted just before close: still written

    asyncio.run(go())
    return open_ledger(path, url).query()


def test_sqlite_roundtrip_in_wal_mode(tmp_path: pathlib.Path) -> None:
    path = str(tmp_path / "ledger.db")
    records = [record(i) for i in range(1200)] + [record(9999, cost=None, cost_status="unpriced", ttfb_ms=None)]
    assert roundtrip(path, None, records) == records
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    conn.close()


def test_query_filters(tmp_path: pathlib.Path) -> None:
    path = str(tmp_path / "ledger.db")
    early = record(1, time="2026-11-22T09:00:00.000000+00:00")
    late = record(2, time="2026-11-22T11:00:00.000000+00:00")
    roundtrip(path, None, [early, late])
    backend = SQLiteBackend(path)
    assert backend.query("req-2", None) == [late]
    assert backend.query(None, "2026-11-22T10:00:00Z") == [late]
    assert backend.query(None, "2026-11-22T11:30:00+01:00") == [late]  # 10:30 UTC
    assert backend.query(None, None) == [early, late]


def test_a_failing_write_is_retried_not_dropped(tmp_path: pathlib.Path) -> None:
    class Flaky(SQLiteBackend):
        failures = 2

        def write(self, records: list[LedgerRecord]) -> None:
            if self.failures:
                self.failures -= 1
                raise sqlite3.OperationalError("disk I/O error")
            super().write(records)

    backend = Flaky(str(tmp_path / "ledger.db"))

    async def go() -> None:
        ledger = Ledger(backend)
        await ledger.start()
        ledger.submit(record(1))
        await ledger.aclose()

    asyncio.run(go())
    assert backend.query(None, None) == [record(1)]


def test_usage_cli_json_has_exactly_the_field_names(tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = str(tmp_path / "ledger.db")
    roundtrip(path, None, [record(1), record(2)])
    args = argparse.Namespace(request_id=None, since=None, json=True)
    assert run(args, path, None) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2
    for line in lines:
        obj = json.loads(line)
        assert tuple(obj) == FIELDS
    assert FIELDS == (
        "request_id",
        "time",
        "key_name",
        "provider",
        "model",
        "endpoint",
        "outcome",
        "http_status",
        "input_tokens",
        "cached_tokens",
        "cache_write_tokens",
        "output_tokens",
        "reasoning_tokens",
        "usage_status",
        "cost",
        "cost_status",
        "raw_usage",
        "ttfb_ms",
        "duration_ms",
        "bytes_to_client",
        "attempts",  # added with failover; an older ledger gains the column when opened
    )


def test_teeproxy_usage_command(tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "ledger.db"
    roundtrip(str(path), None, [record(1), record(2)])
    config = tmp_path / "c.toml"
    config.write_text(f'[ledger]\npath = "{path}"\n')
    assert main(["usage", "--config", str(config), "--request-id", "req-2", "--json"]) == 0
    [line] = capsys.readouterr().out.splitlines()
    assert json.loads(line)["input_tokens"] == 12
    assert main(["usage", "--config", str(config)]) == 0
    table = capsys.readouterr().out
    assert "req-1" in table and "req-2" in table
    assert "2 requests, 23 input tokens (4 cached), 10 output tokens, $0.0000090 (0 unpriced)" in table


@pytest.fixture(scope="module")
def postgres_url() -> Iterator[str]:
    if pg_bin() is None:
        pytest.skip("PostgreSQL server binaries are not installed (tests/install-system-deps.sh installs them)")
    with postgres_server() as url:
        yield url


@pytest.mark.postgres
def test_postgres_roundtrip(postgres_url: str) -> None:
    records = [record(i) for i in range(50)] + [record(99, cost=None, cost_status="unpriced", http_status=None)]
    got = roundtrip(None, postgres_url, records)
    assert got == records
    assert open_ledger(None, postgres_url).query("req-7") == [record(7)]


@pytest.mark.postgres
def test_proxy_writes_to_postgres(postgres_url: str, tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A proxy of a fleet: `[ledger] url` sends its records to PostgreSQL."""
    import httpx

    from tests.servers import CLIENT_KEY, UPSTREAM_KEY_ENV, Script, start_stack

    monkeypatch.setenv(UPSTREAM_KEY_ENV, "sk-upstream")
    stream = (
        b'data: {"choices":[{"index":0,"delta":{"content":"hi"}}]}\n\n'
        b'data: {"choices":[],"usage":{"prompt_tokens":7,"completion_tokens":3}}\n\ndata: [DONE]\n\n'
    )
    for stack in start_stack(tmp_path, ledger=f'url = "{postgres_url}"'):
        stack.upstream.script = Script(body=stream)
        response = httpx.post(
            stack.url + "/v1/chat/completions",
            json={"model": "gpt-4o-mini", "stream": True, "messages": []},
            headers={"authorization": f"Bearer {CLIENT_KEY}", "x-teeproxy-request-id": "pg-1"},
        )
        assert response.status_code == 200
        got = None
        for _ in range(500):  # the record trails the response's last byte by a moment
            stack.flush_ledger()
            found = open_ledger(None, postgres_url).query("pg-1")
            if found:
                [got] = found
                break
            time.sleep(0.02)
    assert got is not None
    assert (got.input_tokens, got.output_tokens, got.cost) == (7, 3, "0.00000285")


def test_unreachable_database_at_shutdown_spills_every_record(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    class Down(SQLiteBackend):
        def write(self, records: list[LedgerRecord]) -> None:
            raise sqlite3.OperationalError("database is locked")

    monkeypatch.setattr("proxy.ledger.FLUSH_TIMEOUT_S", 0.3)
    spill = tmp_path / "spill.jsonl"

    async def go() -> Ledger:
        ledger = Ledger(Down(str(tmp_path / "ledger.db")), str(spill))
        await ledger.start()
        for i in range(3):
            ledger.submit(record(i))
        await ledger.aclose()
        ledger.submit(record(99))  # after close: straight to the spill file
        return ledger

    asyncio.run(go())
    lines = [json.loads(line) for line in spill.read_text().splitlines()]
    assert [line["request_id"] for line in lines] == ["req-0", "req-1", "req-2", "req-99"]
    assert all(tuple(line) == FIELDS for line in lines)


def test_a_ledger_from_before_attempts_gains_the_column(tmp_path: pathlib.Path) -> None:
    """An existing SQLite ledger without the `attempts` column keeps its rows and gains the column (1)."""
    import sqlite3

    path = str(tmp_path / "old.db")
    old_fields = [f for f in FIELDS if f != "attempts"]
    conn = sqlite3.connect(path)
    conn.execute(f"CREATE TABLE usage_records ({', '.join(old_fields)})")
    old = record(1)
    conn.execute(
        f"INSERT INTO usage_records ({', '.join(old_fields)}) VALUES ({', '.join('?' for _ in old_fields)})",
        [getattr(old, f) for f in old_fields],
    )
    conn.commit()
    conn.close()
    roundtrip(path, None, [record(2)])
    rows = SQLiteBackend(path).query(None, None)
    assert [r.attempts for r in rows] == [1, 1]
    assert rows[0].request_id == old.request_id


def test_a_requests_start_time_is_now_in_the_ledgers_one_format() -> None:
    """`time` is formatted once a second plus the microseconds: the same text `utc_iso` gives, and the same
    moment (a clock read as a float may be a microsecond behind datetime's)."""
    for _ in range(3):
        before = datetime.now(UTC)
        stamp = utc_now_iso()
        after = datetime.now(UTC)
        moment = datetime.fromisoformat(stamp)
        assert utc_iso(moment) == stamp and stamp.endswith("+00:00") and len(stamp) == 32
        assert before - timedelta(microseconds=2) <= moment <= after
        time.sleep(0.4)  # across a second's turn, once in a while
