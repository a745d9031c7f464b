"""How long the spend reports take on a big ledger: `python -m bench.spend_query [--rows N] [--postgres]`.

Fills a temporary SQLite ledger (made by the proxy's own `SQLiteBackend.open`, so with its indexes) with N rows
(1,000,000 by default; executemany in batches, one transaction each): 50 keys, 20 models over 5 providers, 90
days, one cost string and one raw_usage per request as the proxy writes them. Then times each report of
`proxy.spend` (median of 3 runs, after one warm-up), whole-ledger and narrowed, with SQLite's plan for each;
the exact cost sum against its alternatives; and the reports again without the indexes the narrowed ones use.
`--postgres` does the same on a throwaway PostgreSQL server (tests/pg.py; loaded by COPY).
"""

from __future__ import annotations

import argparse
import pathlib
import random
import sqlite3
import statistics
import tempfile
import time
from collections.abc import Callable
from decimal import Decimal
from typing import Any

from proxy.ledger import FIELDS, Backend, PostgresBackend, SQLiteBackend
from proxy.spend import SpendQuery, make_filter, parse_group_by, spend, spend_sql

BATCH = 50_000
KEYS = [f"key-{i:02d}" for i in range(50)]
MODELS = [(f"model-{i:02d}", f"provider-{i % 5}") for i in range(20)]
DAYS = 90


def rows(count: int, seed: int = 7) -> Any:
    rng = random.Random(seed)
    for i in range(count):
        model, provider = rng.choice(MODELS)
        day, second = divmod(rng.randrange(DAYS * 86_400), 86_400)
        moment = f"2026-09-{1 + day:02d}" if day < 30 else f"2026-{10 + (day - 30) // 30}-{1 + (day - 30) % 30:02d}"
        inp, out = rng.randrange(50, 5000), rng.randrange(1, 2000)
        priced = rng.random() > 0.02
        cost = format(Decimal(inp * 150 + out * 600) / Decimal(1_000_000_000), "f") if priced else None
        values = {
            "request_id": f"req-{i}",
            "time": f"{moment}T{second // 3600:02d}:{second % 3600 // 60:02d}:{second % 60:02d}.{i % 10**6:06d}+00:00",
            "key_name": rng.choice(KEYS),
            "provider": provider,
            "model": model,
            "endpoint": "/v1/chat/completions",
            "outcome": "completed",
            "http_status": 200,
            "input_tokens": inp,
            "cached_tokens": inp // 4,
            "cache_write_tokens": 0,
            "output_tokens": out,
            "reasoning_tokens": 0,
            "usage_status": "reported",
            "cost": cost,
            "cost_status": "priced" if priced else "unpriced",
            "raw_usage": f'{{"prompt_tokens":{inp},"completion_tokens":{out},"total_tokens":{inp + out},'
            f'"prompt_tokens_details":{{"cached_tokens":{inp // 4}}}}}',
            "ttfb_ms": 120.0,
            "duration_ms": 900.0,
            "bytes_to_client": 4000,
            "attempts": 1,
        }
        yield tuple(values.get(name) for name in FIELDS)


def fill_sqlite(path: str, count: int) -> None:
    backend = SQLiteBackend(path)
    backend.open()
    backend.close()
    conn = sqlite3.connect(path)
    marks = ", ".join("?" for _ in FIELDS)
    batch: list[tuple[Any, ...]] = []
    for row in rows(count):
        batch.append(row)
        if len(batch) == BATCH:
            with conn:
                conn.executemany(f"INSERT INTO usage_records ({', '.join(FIELDS)}) VALUES ({marks})", batch)
            batch = []
    if batch:
        with conn:
            conn.executemany(f"INSERT INTO usage_records ({', '.join(FIELDS)}) VALUES ({marks})", batch)
    conn.execute("ANALYZE")
    conn.close()


def fill_postgres(url: str, count: int) -> None:
    import psycopg

    PostgresBackend(url).open()
    with psycopg.connect(url) as conn, conn.cursor() as cursor:
        with cursor.copy(f"COPY usage_records ({', '.join(FIELDS)}) FROM STDIN") as copy:
            for row in rows(count):
                copy.write_row(row)
        conn.execute("ANALYZE usage_records")


REPORTS: list[tuple[str, dict[str, str], str]] = [
    ("total", {}, ""),
    ("by key", {}, "key"),
    ("by model", {}, "model"),
    ("by provider", {}, "provider"),
    ("by day", {}, "day"),
    ("by hour", {}, "hour"),
    ("by day,model", {}, "day,model"),
    ("one key, by model", {"key": "key-07"}, "model"),
    ("one model, last 7 days, by day", {"model": "model-03", "since": "2026-11-23"}, "day"),
    ("last 24 h, by hour", {"since": "2026-11-29"}, "hour"),
    ("one key, last 30 days, by day", {"key": "key-07", "since": "2026-10-31"}, "day"),
]


def median_s(run: Callable[[], object], repeat: int = 3) -> float:
    run()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def time_reports(backend: Backend, label: str, plan: sqlite3.Connection | None) -> dict[str, float]:
    print(f"\n{label}")
    out = {}
    for name, narrow, group in REPORTS:
        query = SpendQuery(where=make_filter(**narrow), group_by=parse_group_by([group]))
        seconds = median_s(lambda q=query: spend(backend, q))  # type: ignore[misc]
        out[name] = seconds
        _, params = query.where.where(backend.mark)
        if plan is not None:
            steps = plan.execute("EXPLAIN QUERY PLAN " + spend_sql(query, postgres=False), params).fetchall()
            used = " | ".join(step[-1] for step in steps)
        else:  # PostgreSQL: its scans, from EXPLAIN
            steps = backend.fetch("EXPLAIN " + spend_sql(query, postgres=True), params)
            used = " | ".join(s[0].strip(" ->").split("  (")[0] for s in steps if "Scan" in s[0])
        print(f"  {name:34} {seconds * 1000:9.1f} ms   {used}")
    return out


# The alternative exact sum for SQLite: each cost cut, in SQL, into whole dollars and two 9-digit groups of
# decimals, summed as integers (exact only for plain strings of up to 18 decimals, which the proxy writes).
_D = "instr(cost || '.', '.')"
_Z = "'000000000000000000'"
SPLIT_SUM = (
    f"sum(CAST(cost AS INTEGER)), sum(CAST(substr(cost || {_Z}, {_D} + 1, 9) AS INTEGER)), "
    f"sum(CAST(substr(cost || {_Z}, {_D} + 10, 9) AS INTEGER))"
)
# What makes it exact for any string: count the costs of another shape, to add those apart.
SHAPE = f"sum(cost GLOB '*[^0-9.]*' OR cost GLOB '*.*.*' OR length(cost) - {_D} > 18)"


def time_cost_sums(path: str) -> None:
    backend = SQLiteBackend(path)
    for label, group in (("whole ledger", ""), ("by day", "substr(time, 1, 10), ")):
        grouped = " GROUP BY 1" if group else ""
        sums = {
            "decimal_sum (ours, exact)": f"SELECT {group}count(*), decimal_sum(cost) FROM usage_records{grouped}",
            "integer parts in SQL (plain only)": f"SELECT {group}count(*), {SPLIT_SUM} FROM usage_records{grouped}",
            "integer parts + shape check": f"SELECT {group}count(*), {SPLIT_SUM}, {SHAPE} FROM usage_records{grouped}",
            "float sum() (wrong)": f"SELECT {group}count(*), sum(cost) FROM usage_records{grouped}",
            "no cost at all": f"SELECT {group}count(*) FROM usage_records{grouped}",
        }
        for name, sql in sums.items():
            seconds = median_s(lambda s=sql: backend.fetch(s, ()))  # type: ignore[misc]
            print(f"  {label:12} {name:34} {seconds * 1000:7.0f} ms")


def drop_spend_indexes(path: str) -> None:
    conn = sqlite3.connect(path)
    for index in ("usage_records_key_time", "usage_records_model_time", "usage_records_time"):
        conn.execute(f"DROP INDEX {index}")
    conn.commit()
    conn.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--postgres", action="store_true", help="also on a throwaway PostgreSQL (tests/pg.py)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="teeproxy-spend-") as folder:
        path = str(pathlib.Path(folder) / "ledger.db")
        start = time.perf_counter()
        fill_sqlite(path, args.rows)
        fill_s, size_mib = time.perf_counter() - start, pathlib.Path(path).stat().st_size / 2**20
        print(f"SQLite {sqlite3.sqlite_version}: {args.rows:,} rows in {fill_s:.1f} s, {size_mib:.0f} MiB")
        plan = sqlite3.connect(path)
        plan.create_aggregate("decimal_sum", 1, type("Planned", (), {"step": None, "finalize": None}))
        time_reports(SQLiteBackend(path), "SQLite, with the ledger's indexes", plan)
        plan.close()
        print("\nSQLite, the cost sum")
        time_cost_sums(path)
        drop_spend_indexes(path)
        plan = sqlite3.connect(path)
        plan.create_aggregate("decimal_sum", 1, type("Planned", (), {"step": None, "finalize": None}))
        time_reports(SQLiteBackend(path), "SQLite, without the time, key+time and model+time indexes", plan)
        plan.close()
    if args.postgres:
        from tests.pg import postgres_server

        with postgres_server() as url:
            start = time.perf_counter()
            fill_postgres(url, args.rows)
            print(f"\nPostgreSQL: {args.rows:,} rows in {time.perf_counter() - start:.1f} s")
            time_reports(PostgresBackend(url), "PostgreSQL, with the ledger's indexes", None)


if __name__ == "__main__":
    main()
