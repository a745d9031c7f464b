"""The ledger: the only durable write of billing records.

One `LedgerRecord` per request that reached an upstream. `submit()` is what the hot path calls: it enqueues
and returns at once, never raises. One writer task drains the queue in batches (up to `MAX_BATCH` records,
whatever has gathered within `BATCH_LINGER_S` of the first) and writes each batch in a worker thread in one
transaction. A failed write is logged and retried with backoff, batch kept: records are never dropped.
`flush()` waits until everything submitted is durable; `aclose()` flushes, then closes. If the database
is still unreachable `FLUSH_TIMEOUT_S` into shutdown, or a record arrives after close (a request cancelled at
the end of the graceful timeout), the records go to a JSON-lines spill file instead, fsynced.

Backends share one schema (table `usage_records`, the record's field names as columns):
SQLite in WAL mode (the default, `[ledger] path`), PostgreSQL via psycopg 3 (`[ledger] url`), for fleets of
proxies writing to one place. Indexes serve the readers: `teeproxy usage`, and the spend totals of
`proxy.spend` (a time range, one key's or one model's spend over a time range). Readers never create a
database: a missing SQLite file is a `LedgerUnavailable` that names the path.
"""

from __future__ import annotations

import asyncio
import contextlib
import decimal
import logging
import os
import sqlite3
import time
import urllib.parse
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any, ClassVar, Protocol

import msgspec

from proxy import journal
from proxy.journal import Journal

log = logging.getLogger("teeproxy.ledger")

MAX_BATCH = 500
# After the first record of a batch arrives, wait this long for more: one transaction per 20 ms at most, not
# one per request, while a record still becomes durable within a few tens of milliseconds.
BATCH_LINGER_S = 0.02
RETRY_DELAYS_S = (0.05, 0.2, 1.0, 5.0)
# How long shutdown waits for an unreachable database before spilling the rest to a file.
FLUSH_TIMEOUT_S = 30.0


class LedgerRecord(msgspec.Struct):
    """Field names are a public contract: `teeproxy usage --json` prints exactly these. (Their order is how
    `proxy.forward._record` builds one.)"""

    request_id: str
    time: str  # ISO 8601, UTC, microseconds: the request's start
    key_name: str | None
    provider: str | None
    model: str | None
    endpoint: str
    outcome: str
    http_status: int | None
    input_tokens: int
    cached_tokens: int
    cache_write_tokens: int
    output_tokens: int
    reasoning_tokens: int
    usage_status: str
    cost: str | None  # USD, a plain decimal string
    cost_status: str
    raw_usage: str | None
    ttfb_ms: float | None
    duration_ms: float
    bytes_to_client: int
    # Added after the first release: upstream attempts this request took (failover and retries included).
    attempts: int = 1


FIELDS: tuple[str, ...] = LedgerRecord.__struct_fields__
_INT = {
    "http_status",
    "input_tokens",
    "cached_tokens",
    "cache_write_tokens",
    "output_tokens",
    "reasoning_tokens",
    "attempts",
}
# Columns added after a ledger may already exist: created on open when missing, with their default for old rows.
_ADDED_COLUMNS = {"attempts": "1"}
_REAL = {"ttfb_ms", "duration_ms"}


def _column_type(name: str, postgres: bool) -> str:
    if name in _INT or name == "bytes_to_client":
        return "BIGINT" if postgres else "INTEGER"
    if name in _REAL:
        return "DOUBLE PRECISION" if postgres else "REAL"
    if name == "cost" and postgres:
        return "NUMERIC"
    return "TEXT"


def _schema(postgres: bool) -> list[str]:
    columns = ", ".join(f"{name} {_column_type(name, postgres)}" for name in FIELDS)
    return [
        f"CREATE TABLE IF NOT EXISTS usage_records ({columns})",
        "CREATE INDEX IF NOT EXISTS usage_records_time ON usage_records (time)",
        "CREATE INDEX IF NOT EXISTS usage_records_request_id ON usage_records (request_id)",
        # One key's or one model's spend over a time range (`proxy.spend`, `teeproxy usage --key/--model`).
        "CREATE INDEX IF NOT EXISTS usage_records_key_time ON usage_records (key_name, time)",
        "CREATE INDEX IF NOT EXISTS usage_records_model_time ON usage_records (model, time)",
    ]


def utc_iso(moment: datetime) -> str:
    """The one time format in the ledger: it sorts as text."""
    return moment.astimezone(UTC).isoformat(timespec="microseconds")


_second_formatted: tuple[int, str] = (-1, "")


def utc_now_iso() -> str:
    """Now as `ledger.utc_iso` writes it (`2026-01-02T03:04:05.678901+00:00`); the date and time of day are
    formatted once a second, not for every request."""
    global _second_formatted
    now = time.time()
    second = int(now)
    if _second_formatted[0] != second:
        _second_formatted = (second, datetime.fromtimestamp(second, UTC).isoformat()[:19])
    return f"{_second_formatted[1]}.{int((now - second) * 1_000_000):06d}+00:00"


def normalize_time(value: str) -> str:
    """An ISO 8601 time (a bare date is its midnight; no offset is UTC) in the ledger's format; ValueError if
    it is not one."""
    moment = datetime.fromisoformat(value)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return utc_iso(moment)


class LedgerUnavailable(Exception):
    """A reader cannot read the ledger: no SQLite file at the path, not a ledger, or the database unreachable."""


class RecordFilter(msgspec.Struct, frozen=True, kw_only=True):
    """Which records a reader wants; each field given narrows it. `since` is inclusive, `until` exclusive."""

    request_id: str | None = None
    key_name: str | None = None
    model: str | None = None
    provider: str | None = None
    since: str | None = None
    until: str | None = None

    def where(self, mark: str) -> tuple[str, list[str]]:
        """` WHERE ...` (or "") and its parameters, `mark` being the backend's placeholder."""
        clauses, params = [], []
        for column in ("request_id", "key_name", "model", "provider"):
            value = getattr(self, column)
            if value is not None:
                clauses.append(f"{column} = {mark}")
                params.append(value)
        if self.since is not None:
            clauses.append(f"time >= {mark}")
            params.append(normalize_time(self.since))
        if self.until is not None:
            clauses.append(f"time < {mark}")
            params.append(normalize_time(self.until))
        return (" WHERE " + " AND ".join(clauses) if clauses else ""), params


def _row(record: LedgerRecord) -> tuple[Any, ...]:
    return msgspec.structs.astuple(record)  # FIELDS' order: they are the Struct's fields


def _record(row: tuple[Any, ...]) -> LedgerRecord:
    values = dict(zip(FIELDS, row, strict=True))
    if values["cost"] is not None:
        values["cost"] = str(values["cost"])
    return LedgerRecord(**values)


class Backend(Protocol):
    mark: ClassVar[str]  # the SQL parameter placeholder

    def open(self) -> None: ...
    def write(self, records: list[LedgerRecord]) -> None: ...
    def query(self, request_id: str | None, since: str | None) -> list[LedgerRecord]: ...
    def records(self, where: RecordFilter) -> list[LedgerRecord]: ...
    def fetch(self, sql: str, params: Sequence[Any]) -> list[tuple[Any, ...]]: ...
    def close(self) -> None: ...


def _select(where: RecordFilter, mark: str) -> tuple[str, list[str]]:
    clause, params = where.where(mark)
    return f"SELECT {', '.join(FIELDS)} FROM usage_records{clause} ORDER BY time", params


class SQLiteBackend:
    mark: ClassVar[str] = "?"

    def __init__(self, path: str) -> None:
        self.path = path
        self._conn: sqlite3.Connection | None = None
        self._inode = 0

    def _reopen_if_replaced(self) -> None:
        """A ledger file deleted (or moved away) at run time: SQLite would write on into the unlinked file and
        every later record would be lost where no one looks. Start a new file at the configured path instead."""
        try:
            same = os.stat(self.path).st_ino == self._inode
        except FileNotFoundError:
            same = False
        if not same:
            log.error("the ledger file %s was deleted or replaced at run time; starting a new one there", self.path)
            assert self._conn is not None
            self._conn.close()
            self.open()

    def open(self) -> None:
        # The writer uses one connection from worker threads, one batch at a time.
        conn = sqlite3.connect(self.path, check_same_thread=False)
        # First: N workers open a new ledger at once, and switching it to WAL waits for the others' locks.
        conn.execute("PRAGMA busy_timeout=5000")
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        for statement in _schema(postgres=False):
            conn.execute(statement)
        have = {row[1] for row in conn.execute("PRAGMA table_info(usage_records)")}
        for name, default in _ADDED_COLUMNS.items():
            if name not in have:
                conn.execute(
                    f"ALTER TABLE usage_records ADD COLUMN {name} {_column_type(name, False)} DEFAULT {default}"
                )
        conn.commit()
        self._conn = conn
        self._inode = os.stat(self.path).st_ino

    def write(self, records: list[LedgerRecord]) -> None:
        assert self._conn is not None
        self._reopen_if_replaced()
        marks = ", ".join("?" for _ in FIELDS)
        with self._conn:
            self._conn.executemany(
                f"INSERT INTO usage_records ({', '.join(FIELDS)}) VALUES ({marks})", [_row(r) for r in records]
            )

    def query(self, request_id: str | None, since: str | None) -> list[LedgerRecord]:
        return self.records(RecordFilter(request_id=request_id, since=since))

    def records(self, where: RecordFilter) -> list[LedgerRecord]:
        return [_record(row) for row in self.fetch(*_select(where, self.mark))]

    def fetch(self, sql: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
        """Run one read on a connection of its own (WAL: readers never wait for the writer). The SQL may use
        `decimal_sum(cost)`, an exact sum of decimal strings, as text."""
        conn = self._connect_existing()
        try:
            conn.create_aggregate("decimal_sum", 1, _DecimalSum)  # type: ignore[arg-type]  # typeshed: ints only
            with decimal.localcontext(_EXACT_SUM):  # the context decimal_sum adds in (the same thread)
                return conn.execute(sql, params).fetchall()
        finally:
            conn.close()

    def _connect_existing(self) -> sqlite3.Connection:
        # sqlite3.connect(path) would create an empty database where a reader merely mistyped the path, and
        # the next query would fail on the missing table: mode=rw opens only a file that exists.
        where = os.path.abspath(self.path)
        if not os.path.isfile(where):
            raise LedgerUnavailable(
                f"no ledger at {where}: the file does not exist (the proxy makes it when it starts; check "
                "[ledger] path, which is relative to the config file)"
            )
        conn = sqlite3.connect("file:" + urllib.parse.quote(where) + "?mode=rw", uri=True)
        try:
            conn.execute("PRAGMA busy_timeout=5000")
            table = "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'usage_records'"
            found = conn.execute(table).fetchone()
        except sqlite3.Error as exc:  # not a database at all, or unreadable
            conn.close()
            raise LedgerUnavailable(f"cannot read the ledger {where}: {exc}") from None
        if found is None:
            conn.close()
            raise LedgerUnavailable(f"{where} is not a teeproxy ledger: it has no usage_records table")
        return conn

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


# Enough digits that adding costs never rounds: a million 28-digit costs fit many times over.
_EXACT_SUM = decimal.Context(prec=100)


class _DecimalSum:
    """SQLite's sum() of text goes through a double (0.1 + 0.2 is not 0.3); this adds the decimal strings as
    Decimals, exact for any string, at about half a microsecond a row (bench/spend_query.py)."""

    def __init__(self) -> None:
        self.total: decimal.Decimal | None = None

    def step(self, value: str | None) -> None:
        if value is not None:
            self.total = decimal.Decimal(value) if self.total is None else self.total + decimal.Decimal(value)

    def finalize(self) -> str | None:
        return None if self.total is None else format(self.total, "f")


class PostgresBackend:
    mark: ClassVar[str] = "%s"

    def __init__(self, url: str) -> None:
        self.url = url
        self._conn: Any = None

    def open(self) -> None:
        import psycopg

        self._conn = psycopg.connect(self.url)
        with self._conn.transaction():
            for statement in _schema(postgres=True):
                self._conn.execute(statement)
            for name, default in _ADDED_COLUMNS.items():
                column = f"{name} {_column_type(name, True)} DEFAULT {default}"
                self._conn.execute(f"ALTER TABLE usage_records ADD COLUMN IF NOT EXISTS {column}")

    def write(self, records: list[LedgerRecord]) -> None:
        marks = ", ".join("%s" for _ in FIELDS)
        with self._conn.transaction(), self._conn.cursor() as cursor:
            cursor.executemany(
                f"INSERT INTO usage_records ({', '.join(FIELDS)}) VALUES ({marks})", [_row(r) for r in records]
            )

    def query(self, request_id: str | None, since: str | None) -> list[LedgerRecord]:
        return self.records(RecordFilter(request_id=request_id, since=since))

    def records(self, where: RecordFilter) -> list[LedgerRecord]:
        return [_record(row) for row in self.fetch(*_select(where, self.mark))]

    def fetch(self, sql: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
        """Run one read on a connection of its own."""
        import psycopg

        try:
            with psycopg.connect(self.url, connect_timeout=10) as conn:
                return [tuple(row) for row in conn.execute(sql, params)]
        except (psycopg.OperationalError, psycopg.errors.UndefinedTable) as exc:
            # The message names the host and the failure; psycopg leaves the password out.
            raise LedgerUnavailable(f"cannot read the ledger database: {str(exc).strip()}") from None

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def open_backend(path: str | None, url: str | None) -> Backend:
    if url is not None:
        if not url.startswith(("postgresql://", "postgres://")):
            raise ValueError(f"[ledger] url must be a postgresql:// URL, got scheme {url.split(':', 1)[0]!r}")
        return PostgresBackend(url)
    return SQLiteBackend(path or "teeproxy-ledger.db")


class Ledger:
    """Records in, durably: each one first goes to this worker's journal (proxy.journal: a SIGKILL loses none),
    then to the database in batches off the hot path, retried until written; at shutdown whatever the database
    still refuses goes to the fsynced spill file."""

    def __init__(self, backend: Backend, spill_path: str = "teeproxy-ledger.spill.jsonl") -> None:
        self.backend = backend
        self.spill_path = spill_path
        self.journal_stem = spill_path.removesuffix(".spill.jsonl")
        self._journal: Journal | None = None
        self.recovered = 0  # records recovered from the journals of processes that died
        self._queue: asyncio.Queue[LedgerRecord] = asyncio.Queue()
        self._writer: asyncio.Task[None] | None = None
        self._inflight: list[LedgerRecord] = []
        self._closed = False
        self.write_failures = 0  # failed batch writes (each retried), for metrics

    @property
    def queue_depth(self) -> int:
        """Records submitted and not yet durable (queued, or in the batch being written)."""
        return self._queue.qsize() + len(self._inflight)

    async def start(self) -> None:
        await asyncio.to_thread(self.backend.open)
        self.recovered = await asyncio.to_thread(recover_files, self.backend, self.spill_path)
        if self.recovered:
            log.warning(
                "recovered %d ledger records from journals of stopped processes and spill files", self.recovered
            )
        self._journal = journal.Journal(self.journal_stem)
        self._writer = asyncio.get_running_loop().create_task(self._write_forever(), name="ledger-writer")

    def started(self, stub: LedgerRecord) -> None:
        """A request was sent upstream: from now on it leaves a record even if the process is killed."""
        if self._journal is not None:
            self._journal.started(stub)

    def submit(self, record: LedgerRecord) -> None:
        if self._closed:  # a request that outlived shutdown (cancelled after the graceful timeout)
            self._spill([record])
            return
        if self._journal is not None:
            self._journal.finished(record)
        self._queue.put_nowait(record)  # unbounded: a slow disk delays records, it never drops them

    async def flush(self) -> None:
        await self._queue.join()

    async def aclose(self) -> None:
        """Flush; if the database still refuses after FLUSH_TIMEOUT_S, spill what is left to a file."""
        if self._writer is None:
            return
        try:
            await asyncio.wait_for(self.flush(), FLUSH_TIMEOUT_S)
        except TimeoutError:
            log.error("ledger database unreachable at shutdown; spilling unwritten records to %s", self.spill_path)
        self._closed = True
        self._writer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._writer
        self._writer = None
        left = self._inflight + [self._queue.get_nowait() for _ in range(self._queue.qsize())]
        if left:
            self._spill(left)
        if self._journal is not None:
            self._journal.close(remove=True)  # everything it held is in the database or the spill file
            self._journal = None
        await asyncio.to_thread(self.backend.close)

    def _spill(self, records: list[LedgerRecord]) -> None:
        """The last resort: append records as JSON lines (the `teeproxy usage --json` shape) and fsync.

        A batch the database was still writing when shutdown cut it may land in both places: at least once,
        never zero times; `request_id` tells duplicates apart.
        """
        encode = msgspec.json.Encoder().encode
        with open(self.spill_path, "ab") as file:
            file.write(b"".join(encode(r) + b"\n" for r in records))
            file.flush()
            os.fsync(file.fileno())
        log.error("spilled %d ledger records to %s", len(records), self.spill_path)

    def query(self, request_id: str | None = None, since: str | None = None) -> list[LedgerRecord]:
        return self.backend.query(request_id, since)

    async def _write_forever(self) -> None:
        while True:
            batch = [await self._queue.get()]
            await asyncio.sleep(BATCH_LINGER_S)
            while len(batch) < MAX_BATCH and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            self._inflight = batch
            await self._write(batch)
            self._inflight = []
            if self._journal is not None:
                self._journal.committed(len(batch))
            for _ in batch:
                self._queue.task_done()

    async def _write(self, batch: list[LedgerRecord]) -> None:
        attempt = 0
        while True:
            try:
                await asyncio.to_thread(self.backend.write, batch)
                return
            except Exception:
                self.write_failures += 1
                delay = RETRY_DELAYS_S[min(attempt, len(RETRY_DELAYS_S) - 1)]
                log.exception("ledger write of %d records failed; retrying in %.2fs", len(batch), delay)
                attempt += 1
                await asyncio.sleep(delay)


def _known_to(backend: Backend) -> Callable[[LedgerRecord], bool]:
    def known(record: LedgerRecord) -> bool:
        return any(r.time == record.time for r in backend.query(record.request_id, None))

    return known


def recover_files(backend: Backend, spill_path: str) -> int:
    """Write to the database what is only on disk beside it: the journals of processes that stopped without
    closing the ledger (killed, crashed) and the spill file. Records already in the database are skipped (same
    request id and time); the files are removed (the spill file renamed `.recovered`). Returns the records
    written."""
    known = _known_to(backend)
    count = journal.recover(spill_path.removesuffix(".spill.jsonl"), LedgerRecord, known, backend.write)
    if os.path.exists(spill_path):
        decode = msgspec.json.Decoder(LedgerRecord).decode
        with open(spill_path, "rb") as file:
            spilled = []
            for line in file:
                try:
                    spilled.append(decode(line))
                except (ValueError, RecursionError):
                    continue
        fresh = [r for r in spilled if not known(r)]
        if fresh:
            backend.write(fresh)
            count += len(fresh)
        os.replace(spill_path, spill_path + ".recovered")
    return count


def unrecovered(spill_path: str) -> tuple[int, int]:
    """(journals of stopped processes, records in the spill file): what is on disk and not yet in the database."""
    journals = len(journal.orphaned_journals(spill_path.removesuffix(".spill.jsonl")))
    spilled = 0
    if os.path.exists(spill_path):
        with open(spill_path, "rb") as file:
            spilled = sum(1 for line in file if line.strip())
    return journals, spilled


def spill_path_for(path: str | None, url: str | None) -> str:
    return (path or "teeproxy-ledger.db") + ".spill.jsonl" if url is None else "teeproxy-ledger.spill.jsonl"


def open_ledger(path: str | None, url: str | None, spill_path: str | None = None) -> Ledger:
    """The ledger for `[ledger]`; unwritten records spill next to the SQLite file, or to ./ for PostgreSQL."""
    return Ledger(open_backend(path, url), spill_path or spill_path_for(path, url))
