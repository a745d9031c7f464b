"""Spend, for the people who pay: `GET /admin/usage` and `proxy.spend` on SQLite and a real PostgreSQL.

Every report is checked against totals worked out here in Python, record by record, with Decimal: the ledger's
grouping and exact sums must agree with them to the last digit (costs like 0.1 and 0.2 are there because a float
sum gets them wrong).
"""

from __future__ import annotations

import csv
import hashlib
import io
import pathlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.testclient import TestClient

from proxy.admin_spend import spend_routes
from proxy.config import Config, ConfigError, parse_config
from proxy.errors import Unauthorized
from proxy.ledger import Ledger, LedgerRecord, LedgerUnavailable, PostgresBackend, SQLiteBackend
from proxy.spend import SpendQuery, check_admin_key, make_filter, parse_group_by, plain_decimal, spend
from tests.pg import pg_bin, postgres_server

ADMIN_KEY = "tp-admin-secret"
CLIENT_KEY = "tp-client-key"
CONFIG = parse_config(
    f"""
[admin]
key_sha256 = "{hashlib.sha256(ADMIN_KEY.encode()).hexdigest()}"

[[keys]]
name = "alice"
sha256 = "{hashlib.sha256(CLIENT_KEY.encode()).hexdigest()}"
"""
)
KEYS = ["alice", "bob", "carol", None]
MODELS = [("gpt-4o-mini", "openai"), ("claude-haiku-4-5", "anthropic"), ("gemini-2.5-flash", "google")]
COSTS = ["0.1", "0.2", "0.0000045", "1.25", "0.000000000000000001", "3", None]


def make_records(count: int = 300) -> list[LedgerRecord]:
    records = []
    for i in range(count):
        model, provider = MODELS[i % 3]
        cost = COSTS[i % len(COSTS)]
        day, hour = 20 + i % 4, (i * 7) % 24
        records.append(
            LedgerRecord(
                request_id=f"req-{i}",
                time=f"2026-11-{day:02d}T{hour:02d}:{i % 60:02d}:00.000000+00:00",
                key_name=KEYS[i % 4],
                provider=provider,
                model=model,
                endpoint="/v1/chat/completions",
                outcome="completed",
                http_status=200,
                input_tokens=100 + i,
                cached_tokens=i % 10,
                cache_write_tokens=i % 3,
                output_tokens=20 + i % 50,
                reasoning_tokens=i % 5,
                usage_status="reported",
                cost=cost,
                cost_status="unpriced" if cost is None else "priced",
                raw_usage=None,
                ttfb_ms=10.0,
                duration_ms=100.0,
                bytes_to_client=1000,
            )
        )
    return records


RECORDS = make_records()


def label(record: LedgerRecord, group: str) -> str | None:
    if group == "key":
        return record.key_name
    if group == "day":
        return record.time[:10]
    if group == "hour":
        return record.time[:13] + ":00:00+00:00"
    value: str | None = getattr(record, group)
    return value


def expected_rows(group_by: tuple[str, ...], keep: Callable[[LedgerRecord], bool]) -> list[dict[str, Any]]:
    """The report worked out record by record, as the JSON rows should be."""
    totals: dict[tuple[str | None, ...], dict[str, Any]] = {}
    for r in filter(keep, RECORDS):
        labels = tuple(label(r, g) for g in group_by)
        t = totals.setdefault(labels, {"requests": 0, "cost": Decimal(0), "unpriced": 0} | dict.fromkeys(TOKENS, 0))
        t["requests"] += 1
        for name in TOKENS:
            t[name] += getattr(r, name)
        t["cost"] += Decimal(r.cost) if r.cost is not None else 0
        t["unpriced"] += r.cost is None
    rows = []
    for labels in sorted(totals, key=lambda ls: tuple((x is None, x or "") for x in ls)):
        t = totals[labels]
        rows.append(dict(zip(group_by, labels, strict=True)) | t | {"cost": plain_decimal(t["cost"])})
    return rows


TOKENS = ("input_tokens", "cached_tokens", "cache_write_tokens", "output_tokens", "reasoning_tokens")


@pytest.fixture(scope="module")
def sqlite_ledger(tmp_path_factory: pytest.TempPathFactory) -> SQLiteBackend:
    backend = SQLiteBackend(str(tmp_path_factory.mktemp("spend") / "ledger.db"))
    backend.open()
    backend.write(RECORDS)
    backend.close()
    return backend


@pytest.fixture(scope="module")
def postgres_ledger() -> Iterator[PostgresBackend]:
    if pg_bin() is None:
        pytest.skip("PostgreSQL server binaries are not installed (tests/install-system-deps.sh installs them)")
    with postgres_server() as url:
        backend = PostgresBackend(url)
        backend.open()
        backend.write(RECORDS)
        backend.close()
        yield backend


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def backend(request: pytest.FixtureRequest) -> SQLiteBackend | PostgresBackend:
    fixture: SQLiteBackend | PostgresBackend = request.getfixturevalue(f"{request.param}_ledger")
    return fixture


@dataclass
class State:
    config: Config
    ledger: Ledger


def client_for(backend: SQLiteBackend | PostgresBackend | None, config: Config = CONFIG) -> TestClient:
    state = None if backend is None else State(config, Ledger(backend))
    return TestClient(Starlette(routes=spend_routes(lambda: state)))


ADMIN = {"authorization": f"Bearer {ADMIN_KEY}"}

# (query string, group_by, which records)
CASES: list[tuple[str, tuple[str, ...], Callable[[LedgerRecord], bool]]] = [
    ("group_by=key", ("key",), lambda r: True),
    ("group_by=model&since=2026-11-21", ("model",), lambda r: r.time >= "2026-11-21"),
    ("group_by=provider&key=bob", ("provider",), lambda r: r.key_name == "bob"),
    (
        "group_by=day&model=gpt-4o-mini&until=2026-11-23T00:00:00Z",
        ("day",),
        lambda r: r.model == "gpt-4o-mini" and r.time < "2026-11-23",
    ),
    (
        "group_by=hour&since=2026-11-22T06:00:00%2B01:00&until=2026-11-22T18:00:00Z&provider=anthropic",
        ("hour",),
        lambda r: "2026-11-22T05" <= r.time < "2026-11-22T18" and r.provider == "anthropic",
    ),
    ("group_by=day,model&key=alice", ("day", "model"), lambda r: r.key_name == "alice"),
    ("group_by=key&group_by=provider", ("key", "provider"), lambda r: True),
    ("", (), lambda r: True),
    ("key=nobody", (), lambda r: False),
]


@pytest.mark.parametrize(("params", "group_by", "keep"), CASES, ids=[c[0] or "total" for c in CASES])
def test_usage_json_matches_the_records(
    backend: SQLiteBackend | PostgresBackend,
    params: str,
    group_by: tuple[str, ...],
    keep: Callable[[LedgerRecord], bool],
) -> None:
    response = client_for(backend).get(f"/admin/usage?{params}", headers=ADMIN)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    want = expected_rows(group_by, keep)
    assert body["group_by"] == list(group_by)
    if group_by:
        assert body["rows"] == want
    else:  # one row of totals, zeros when nothing matched
        zero = {"requests": 0, "cost": "0", "unpriced": 0} | dict.fromkeys(TOKENS, 0)
        assert body["rows"] == (want or [zero])
    assert body["total"]["requests"] == sum(row["requests"] for row in want)
    assert Decimal(body["total"]["cost"]) == sum((Decimal(row["cost"]) for row in want), Decimal(0))


def test_usage_csv(backend: SQLiteBackend | PostgresBackend) -> None:
    response = client_for(backend).get("/admin/usage?group_by=model&key=carol&format=csv", headers=ADMIN)
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/csv; charset=utf-8"
    lines = list(csv.reader(io.StringIO(response.text)))
    assert lines[0] == ["model", "requests", *TOKENS, "cost", "unpriced"]
    want = expected_rows(("model",), lambda r: r.key_name == "carol")
    assert lines[1:] == [[str(row[name]) for name in lines[0]] for row in want]


def test_costs_sum_exactly_where_a_float_would_not(backend: SQLiteBackend | PostgresBackend) -> None:
    """0.1 and 0.2, and an 18th-decimal attodollar: the sums are exact decimal strings on both backends."""
    report = spend(backend, SpendQuery(where=make_filter(key="alice"), group_by=parse_group_by(["model"])))
    floats = sum(float(r.cost) for r in RECORDS if r.key_name == "alice" and r.cost is not None)
    exact = sum((Decimal(r.cost) for r in RECORDS if r.key_name == "alice" and r.cost is not None), Decimal(0))
    assert report.total.cost == exact
    assert Decimal(repr(floats)) != exact  # what the float sum of the same strings gives
    assert "E" not in plain_decimal(report.total.cost)
    null_key = spend(backend, SpendQuery(group_by=("key",))).rows[-1]
    assert null_key[0] == (None,)  # a record without a key name groups as null, last


@pytest.mark.parametrize(
    ("headers", "config", "says"),
    [
        ({}, CONFIG, "Missing admin key"),
        ({"authorization": f"Bearer {CLIENT_KEY}"}, CONFIG, "client key"),
        ({"authorization": "Bearer tp-guess"}, CONFIG, "Incorrect admin key"),
        ({"authorization": f"Basic {ADMIN_KEY}"}, CONFIG, "Missing admin key"),
        (ADMIN, parse_config(""), "set [admin] key_sha256"),
    ],
    ids=["no key", "client key", "wrong key", "not bearer", "no admin key configured"],
)
def test_admin_key_is_required(
    sqlite_ledger: SQLiteBackend, headers: dict[str, str], config: Config, says: str
) -> None:
    response = client_for(sqlite_ledger, config).get("/admin/usage", headers=headers)
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"
    assert says in response.json()["error"]["message"]
    assert ADMIN_KEY not in response.text and CLIENT_KEY not in response.text


def test_check_admin_key_takes_raw_asgi_headers() -> None:
    check_admin_key([(b"authorization", f"Bearer {ADMIN_KEY}".encode())], CONFIG)
    with pytest.raises(Unauthorized, match="client key"):
        check_admin_key([(b"authorization", f"Bearer {CLIENT_KEY}".encode())], CONFIG)


def test_admin_key_must_not_be_a_client_key() -> None:
    digest = hashlib.sha256(CLIENT_KEY.encode()).hexdigest()
    with pytest.raises(ConfigError, match="admin.key_sha256 is also a client key"):
        parse_config(f'[admin]\nkey_sha256 = "{digest}"\n[[keys]]\nname = "a"\nsha256 = "{digest}"\n')
    with pytest.raises(ConfigError, match="admin.key_sha256 is not a SHA-256"):
        parse_config('[admin]\nkey_sha256 = "secret"\n')


@pytest.mark.parametrize(
    ("params", "says"),
    [
        ("group_by=week", "unknown group 'week'"),
        ("group_by=day,day", "'day' given twice"),
        ("since=yesterday", "since: not an ISO 8601 time"),
        ("until=2026-13-01", "until: not an ISO 8601 time"),
        ("modle=gpt-4o", "Unknown parameter 'modle'"),
        ("key=a&key=b", "Give 'key' once"),
        ("format=xml", "format must be"),
    ],
)
def test_bad_parameters_are_400_naming_them(sqlite_ledger: SQLiteBackend, params: str, says: str) -> None:
    response = client_for(sqlite_ledger).get(f"/admin/usage?{params}", headers=ADMIN)
    assert response.status_code == 400
    assert says in response.json()["error"]["message"]


def test_unavailable_ledger_and_stopped_proxy_are_503(tmp_path: pathlib.Path) -> None:
    missing = SQLiteBackend(str(tmp_path / "nowhere.db"))
    response = client_for(missing).get("/admin/usage", headers=ADMIN)
    assert response.status_code == 503
    assert "no ledger at" in response.json()["error"]["message"]
    assert not (tmp_path / "nowhere.db").exists()
    assert client_for(None).get("/admin/usage", headers=ADMIN).status_code == 503


def test_readers_never_create_a_database(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "typo.db"
    with pytest.raises(LedgerUnavailable, match="no ledger at .*typo.db"):
        SQLiteBackend(str(path)).query(None, None)
    assert not path.exists()
    path.write_bytes(b"")  # what an older `teeproxy usage` left behind
    with pytest.raises(LedgerUnavailable, match="not a teeproxy ledger"):
        SQLiteBackend(str(path)).query(None, None)


def test_the_spend_indexes_exist_and_serve_narrowed_reports(sqlite_ledger: SQLiteBackend) -> None:
    import sqlite3

    from proxy.spend import spend_sql

    conn = sqlite3.connect(sqlite_ledger.path)
    names = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
    assert {"usage_records_time", "usage_records_key_time", "usage_records_model_time"} <= names
    for where, index in [
        (make_filter(key="bob", since="2026-11-21"), "usage_records_key_time"),
        (make_filter(model="gpt-4o-mini"), "usage_records_model_time"),
        (make_filter(since="2026-11-22"), "usage_records_time"),
    ]:
        query = SpendQuery(where=where, group_by=("day",))
        conn.create_function("decimal_sum", 1, lambda v: v)  # only planned, never run
        plan = conn.execute("EXPLAIN QUERY PLAN " + spend_sql(query, postgres=False), where.where("?")[1]).fetchall()
        assert any(index in step[-1] for step in plan), plan
    conn.close()
