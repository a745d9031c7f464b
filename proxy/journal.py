"""The ledger's write-ahead journal: what a SIGKILL cannot take.

The ledger batches records off the hot path (one transaction per `BATCH_LINGER_S` at most), so a process killed
outright would lose the records of requests that had already been answered but not yet written, and every
request still in flight would leave no trace at all. The journal closes both gaps:

* `started(stub)`: when a request is first sent upstream, one JSON line with what is known then (id, time, key,
  provider, model, endpoint). A request that reached an upstream is on disk from that moment.
* `finished(record)`: when the request ends, its full record, before it is queued for the database.

Lines go out with one `os.write` on an `O_APPEND` descriptor: a few microseconds, no fsync. The kernel keeps
them through the death of the process (SIGKILL, OOM kill, a crash); a power cut is another matter and is the
database's (and the disk's) business. The file is one per worker process, `<stem>.journal.<pid>.jsonl`, and
is emptied once everything in it is in the database (rewriting the stubs of requests still in flight), so it
stays small.

Recovery (`recover`): on start-up, each journal left by a process that no longer runs is read. Records that are
not yet in the database are written; a request that started but never finished becomes a record with
`outcome = "interrupted"` and `usage_status = "missing"` (it reached an upstream; what it cost is unknown, and
the ledger says so rather than forget it). Then the file is removed.
"""

from __future__ import annotations

import glob
import os
import re
from collections.abc import Callable
from typing import Protocol, TypeVar

import msgspec

# Past this many bytes the journal is emptied as soon as nothing in it is waiting for the database.
COMPACT_AFTER_BYTES = 1024 * 1024
# Each line is a tag and a record: the journal knows records only as msgspec Structs with these fields.
_STARTED, _FINISHED = b"S", b"F"


class Record(Protocol):
    request_id: str
    time: str


R = TypeVar("R", bound=msgspec.Struct)

_encode = msgspec.json.Encoder().encode


def journal_path(stem: str, pid: int) -> str:
    return f"{stem}.journal.{pid}.jsonl"


class Journal:
    def __init__(self, stem: str) -> None:
        self.path = journal_path(stem, os.getpid())
        self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        self._open: dict[tuple[str, str], bytes] = {}  # started, not finished: their lines
        self._pending = 0  # finished records not yet in the database
        self._size = os.fstat(self._fd).st_size

    def started(self, stub: Record) -> None:
        line = _STARTED + _encode(stub) + b"\n"
        self._open[(stub.request_id, stub.time)] = line
        self._write(line)

    def finished(self, record: Record) -> None:
        self._open.pop((record.request_id, record.time), None)
        self._pending += 1
        self._write(_FINISHED + _encode(record) + b"\n")

    def committed(self, count: int) -> None:
        """`count` finished records are now in the database."""
        self._pending -= count
        if self._pending == 0 and self._size > COMPACT_AFTER_BYTES:
            os.ftruncate(self._fd, 0)
            self._size = 0
            for line in self._open.values():
                self._write(line)

    def close(self, remove: bool) -> None:
        os.close(self._fd)
        if remove:
            os.unlink(self.path)

    def _write(self, line: bytes) -> None:
        os.write(self._fd, line)
        self._size += len(line)


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def read_journal(path: str, record_type: type[R]) -> list[R]:
    """The records a journal holds: each finished one, and each started one that never finished, marked
    `outcome = "interrupted"`, `usage_status = "missing"`, unpriced. A last line cut short by the kill is ignored."""
    decode = msgspec.json.Decoder(record_type).decode
    started: dict[tuple[str, str], R] = {}
    finished: dict[tuple[str, str], R] = {}
    with open(path, "rb") as file:
        for raw in file:
            tag, body = raw[:1], raw[1:]
            try:
                record = decode(body)
            except (ValueError, RecursionError):
                continue
            key = (getattr(record, "request_id"), getattr(record, "time"))  # noqa: B009 - R is any record Struct
            if tag == _FINISHED:
                finished[key] = record
            elif tag == _STARTED:
                started[key] = record
    out = list(finished.values())
    for key, stub in started.items():
        if key not in finished:
            out.append(
                msgspec.structs.replace(
                    stub, outcome="interrupted", usage_status="missing", cost=None, cost_status="unpriced"
                )
            )
    return out


_PID = re.compile(r"\.journal\.(\d+)\.jsonl$")


def orphaned_journals(stem: str) -> list[str]:
    """Journals beside `stem` whose process is gone."""
    paths = []
    for path in sorted(glob.glob(glob.escape(stem) + ".journal.*.jsonl")):
        match = _PID.search(path)
        if match is not None and not _alive(int(match.group(1))):
            paths.append(path)
    return paths


def recover(stem: str, record_type: type[R], known: Callable[[R], bool], write: Callable[[list[R]], None]) -> int:
    """Write what orphaned journals hold and the database lacks; remove them. Returns the records recovered."""
    recovered = 0
    for path in orphaned_journals(stem):
        records = [r for r in read_journal(path, record_type) if not known(r)]
        if records:
            write(records)
            recovered += len(records)
        os.unlink(path)
    return recovered
