"""Spend: requests, tokens and cost from the ledger, totalled by key, model, provider, day or hour.

One query per report, grouped in the database (`GROUP BY`), never by loading records: a million rows cost one
scan, or one index range when the report is narrowed to a key, a model or a time range (the indexes are made
with the table, in `proxy.ledger`). Both readers use it: `GET /admin/usage` (`proxy.admin_spend`) and
`teeproxy usage --group-by` (`proxy.usage_cli`), which print the same JSON and CSV.

Costs are summed exactly, never through a float. The ledger stores each cost as a plain decimal string
(`format(cost, "f")`). PostgreSQL's cost column is NUMERIC, and `sum(cost::numeric)` is exact. SQLite has no
decimal type and its `sum()` of text goes through a double, so the ledger's SQLite reader registers
`decimal_sum(cost)` (`proxy.ledger`), an aggregate function adding the strings as Decimals, while SQLite still
does the grouping: ~0.5 µs a row, exact for any string. Measured against it on a million rows
(bench/spend_query.py): cutting each cost, in SQL, into whole dollars and two 9-digit groups of decimals summed
as int64 is ~30 % faster, but exact only for plain strings of at most 18 decimals; with the per-row check that
would send other strings down a fallback path, it is no faster than decimal_sum. Rejected too: integer nano-dollars
in a new column (it rounds: a $0.01875/Mtok price is 18.75 nano-dollars a token; and it changes the schema).

Group labels: `key` is the client key's name, `day` is `2026-11-22` and `hour` `2026-11-22T10:00:00+00:00`,
both UTC, the ledger's own time zone. Rows are sorted by their labels, a missing label (a request without a
key name or model) last, the same on both backends.
"""

from __future__ import annotations

import csv
import hashlib
import hmac
import io
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from decimal import Context, Decimal
from typing import Any

import msgspec

from proxy.config import Config
from proxy.errors import Unauthorized
from proxy.ledger import Backend, PostgresBackend, RecordFilter, normalize_time

# What a report can be grouped by, and the SQL that gives each group's label. Times are stored as UTC text in
# one format (`proxy.ledger.utc_iso`), so a day and an hour are prefixes of it.
GROUPS: dict[str, str] = {
    "key": "key_name",
    "model": "model",
    "provider": "provider",
    "day": "substr(time, 1, 10)",
    "hour": "substr(time, 1, 13)",
}
TOTAL_FIELDS = (
    "requests",
    "input_tokens",
    "cached_tokens",
    "cache_write_tokens",
    "output_tokens",
    "reasoning_tokens",
    "cost",
    "unpriced",
)

# RecordFilter's field → the query parameter (and CLI option) that sets it.
_PARAM = {"key_name": "key"}
_COUNTS = (
    "count(*), sum(input_tokens), sum(cached_tokens), sum(cache_write_tokens), sum(output_tokens), "
    "sum(reasoning_tokens), sum(CASE WHEN cost_status = 'unpriced' THEN 1 ELSE 0 END)"
)
_POSTGRES_COST = "sum(cost::numeric)"
_SQLITE_COST = "decimal_sum(cost)"
# Enough digits that adding costs never rounds (a sum of a million 28-digit costs fits many times over).
_EXACT = Context(prec=100)


@dataclass(slots=True)
class Totals:
    requests: int = 0
    input_tokens: int = 0
    cached_tokens: int = 0
    cache_write_tokens: int = 0
    output_tokens: int = 0
    reasoning_tokens: int = 0
    cost: Decimal = field(default_factory=Decimal)  # USD, over the priced requests
    unpriced: int = 0  # requests with no price: their cost is not in `cost`

    def add(self, other: Totals) -> None:
        self.requests += other.requests
        self.input_tokens += other.input_tokens
        self.cached_tokens += other.cached_tokens
        self.cache_write_tokens += other.cache_write_tokens
        self.output_tokens += other.output_tokens
        self.reasoning_tokens += other.reasoning_tokens
        self.cost = _EXACT.add(self.cost, other.cost)
        self.unpriced += other.unpriced

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {name: getattr(self, name) for name in TOTAL_FIELDS}
        out["cost"] = plain_decimal(self.cost)
        return out


def plain_decimal(value: Decimal) -> str:
    """`0.000009`, never `9E-6` nor `0.000009000000000000`: the same figure from either backend."""
    return format(value.normalize(_EXACT), "f")


class SpendQuery(msgspec.Struct, frozen=True, kw_only=True):
    where: RecordFilter = RecordFilter()
    group_by: tuple[str, ...] = ()


@dataclass(slots=True)
class SpendReport:
    group_by: tuple[str, ...]
    rows: list[tuple[tuple[str | None, ...], Totals]]
    total: Totals
    where: RecordFilter = field(default_factory=RecordFilter)

    def row_dicts(self) -> list[dict[str, Any]]:
        return [dict(zip(self.group_by, labels, strict=True)) | totals.as_dict() for labels, totals in self.rows]

    def to_json(self) -> bytes:
        """`{"group_by": [...], "where": {...}, "rows": [{<labels>, <totals>}], "total": {<totals>}}`."""
        where = {_PARAM.get(name, name): value for name, value in msgspec.structs.asdict(self.where).items()}
        where = {name: value for name, value in where.items() if value is not None}
        document = {"group_by": list(self.group_by), "where": where, "rows": self.row_dicts()}
        document["total"] = self.total.as_dict()
        return msgspec.json.encode(document)

    def to_csv(self) -> str:
        """A header (the group columns, then the totals' names) and one line per group; no total line, which a
        spreadsheet would add to the groups."""
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\r\n")
        writer.writerow([*self.group_by, *TOTAL_FIELDS])
        for row in self.row_dicts():
            writer.writerow(["" if row[name] is None else row[name] for name in (*self.group_by, *TOTAL_FIELDS)])
        return out.getvalue()


def parse_group_by(values: Iterable[str]) -> tuple[str, ...]:
    """`["day,model"]` or `["day", "model"]` → `("day", "model")`; ValueError names what is wrong."""
    chosen: list[str] = []
    for value in values:
        for name in (part.strip() for part in value.split(",")):
            if not name:
                continue
            if name not in GROUPS:
                raise ValueError(f"group_by: unknown group {name!r}; choose from {', '.join(GROUPS)}")
            if name in chosen:
                raise ValueError(f"group_by: {name!r} given twice")
            chosen.append(name)
    return tuple(chosen)


def make_filter(
    *,
    key: str | None = None,
    model: str | None = None,
    provider: str | None = None,
    since: str | None = None,
    until: str | None = None,
    request_id: str | None = None,
) -> RecordFilter:
    """The records a report covers; times are checked and put in the ledger's format (ValueError if not ISO
    8601: `2026-11-22`, `2026-11-22T10:00:00Z`, `2026-11-22T11:00+01:00`)."""
    times: dict[str, str | None] = {}
    for name, value in (("since", since), ("until", until)):
        try:
            times[name] = None if value is None else normalize_time(value)
        except ValueError:
            raise ValueError(f"{name}: not an ISO 8601 time: {value!r}") from None
    return RecordFilter(request_id=request_id, key_name=key, model=model, provider=provider, **times)


def spend_sql(query: SpendQuery, postgres: bool) -> str:
    labels = [GROUPS[name] for name in query.group_by]
    if not postgres:
        # `+key_name` is key_name, but keeps SQLite from walking the (key_name, time) index to get the groups in
        # order: a lookup into the table per row, twice as slow over a whole ledger as a scan and a sort.
        labels = [label if label.startswith("substr") else "+" + label for label in labels]
    where, _ = query.where.where("%s" if postgres else "?")
    select = ", ".join([*labels, _COUNTS, _POSTGRES_COST if postgres else _SQLITE_COST])
    grouped = " GROUP BY " + ", ".join(str(i + 1) for i in range(len(labels))) if labels else ""
    return f"SELECT {select} FROM usage_records{where}{grouped}"


def spend(backend: Backend, query: SpendQuery) -> SpendReport:
    """The report for `query`, in one database query. Raises proxy.ledger.LedgerUnavailable."""
    postgres = isinstance(backend, PostgresBackend)
    _, params = query.where.where(backend.mark)
    width = len(query.group_by)
    rows: list[tuple[tuple[str | None, ...], Totals]] = []
    total = Totals()
    for row in backend.fetch(spend_sql(query, postgres), params):
        # Without group_by, the one row of an aggregate over no records is zeros (NULL sums), and is kept.
        labels = tuple(_label(name, value) for name, value in zip(query.group_by, row[:width], strict=True))
        totals = _totals(row[width:])
        rows.append((labels, totals))
        total.add(totals)
    rows.sort(key=lambda item: tuple((label is None, label or "") for label in item[0]))
    return SpendReport(query.group_by, rows, total, query.where)


def _label(group: str, value: Any) -> str | None:
    if value is None:
        return None
    return f"{value}:00:00+00:00" if group == "hour" else str(value)


def _totals(values: tuple[Any, ...]) -> Totals:
    requests, input_tokens, cached, cache_write, output, reasoning, unpriced, cost = values
    return Totals(
        requests=int(requests),
        input_tokens=int(input_tokens or 0),
        cached_tokens=int(cached or 0),
        cache_write_tokens=int(cache_write or 0),
        output_tokens=int(output or 0),
        reasoning_tokens=int(reasoning or 0),
        cost=Decimal(0) if cost is None else Decimal(cost),  # NUMERIC, or decimal_sum's text
        unpriced=int(unpriced or 0),
    )


Headers = Mapping[str, str] | Iterable[tuple[bytes, bytes]]


def check_admin_key(headers: Headers, config: Config) -> None:
    """Return if `Authorization: Bearer` carries the admin key (`[admin] key_sha256`); else Unauthorized, whose
    message says what to do. A client key never opens /admin/, and with no admin key configured nothing does.

    `headers`: starlette's (case-insensitive) Headers, or an ASGI scope's raw `[(name, value), ...]`.
    """
    digest = config.admin.key_sha256
    if digest is None:
        raise Unauthorized(
            "The admin endpoints need an admin key, and none is configured: set [admin] key_sha256 in the config "
            "(`teeproxy keys new --admin` prints a key and the block to paste)."
        )
    token = _bearer(headers)
    if not token:
        raise Unauthorized("Missing admin key. Send it as 'Authorization: Bearer <admin key>'.")
    presented = hashlib.sha256(token).hexdigest()
    if hmac.compare_digest(presented, digest.lower()):
        return
    if any(hmac.compare_digest(presented, key.sha256.lower()) for key in config.keys):
        raise Unauthorized("A client key does not open the admin endpoints: send the admin key ([admin] key_sha256).")
    raise Unauthorized("Incorrect admin key.")


def _bearer(headers: Headers) -> bytes | None:
    if isinstance(headers, Mapping):
        value = headers.get("authorization")
        raw = None if value is None else value.encode("latin-1")
    else:
        raw = next((v for n, v in headers if n.lower() == b"authorization"), None)
    if raw is None:
        return None
    scheme, _, token = raw.partition(b" ")
    return token.strip() if scheme.lower() == b"bearer" else None
