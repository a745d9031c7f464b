"""The live view's events, across every worker process: published by each, tailed by whichever serves them.

`GET /admin/live` is a server-sent event stream of typed events, one JSON object each:

    request_started    a request was sent upstream: request_id, time, key_name, provider, dialect, model, endpoint
    usage              it ended, with its usage and cost (the ledger record's figures)
    error              it ended with an outcome other than "completed"
    request_finished   it ended: the access log's line (proxy.access_log.AccessLine)

Each carries `worker` (the process id) and `t` (Unix seconds, when it happened). A new subscriber first gets
`hello` (`{"t": <the server's time>}`, so a browser with a skewed clock still draws the right minute), then the
events of the last hour that are still on file (`?since=T` for those from T on, as the page asks when it
reconnects), then every new one as it is written.

Mechanism: a directory per server run (`$TEEPROXY_LIVE_DIR`, made by `proxy.serving` for N workers, or by the
app for itself), in which each worker appends its events to `<pid>.jsonl`, and a subscriber's stream tails
every file there, polling every `POLL_INTERVAL_S`. Why files rather than datagrams between workers or a broker:
it needs no other service and no worker has to know its peers; the recent past is kept for free, so the page
opens with the last hour's requests and spend instead of a blank chart; a subscriber that stalls costs the
publishers nothing (a socket fan-out would have to buffer for it or drop); and publishing notes the event in a
buffer, whose lines are encoded and written to the page cache at most `FLUSH_AFTER_S` later (subscribers poll
every `POLL_INTERVAL_S`, so no one sees the wait), in one `write()` for every request in that time: under load
one system call serves hundreds of requests instead of two each. No subscriber bookkeeping on the hot path. Each file
is bounded: past `MAX_FILE_BYTES` it is renamed to `<pid>.jsonl.1` (replacing the previous one) and a fresh one
started, so a worker keeps at most twice that, and the history a new subscriber sees is the last hour or the last
few thousand requests per worker, whichever is shorter. A tail that slept through two rotations of one file would
miss the middle one: at one poll per `POLL_INTERVAL_S` that takes some 8,000 requests per second from a single
worker. The live view is a view: the ledger is the record.

A line on file is `<t> S <json>\\n` for a request that started and `<t> F <json>\\n` for one that finished: the
observer seam's own event (`proxy.observe.Started`, `Finished`), encoded as it is, in one call. The tail makes the
typed events of it (`request_started`; `usage`, `error`, `request_finished`), with `worker` from the file's name
and `t` from the line: the publisher, on every request of every worker, does the least work, and the tail, for
the few who watch, the rest. It reads only `t` to filter the history.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import AsyncIterator
from typing import BinaryIO

import msgspec

from proxy.access_log import access_line
from proxy.flush_soon import FlushSoon
from proxy.observe import Finished, Started

log = logging.getLogger("teeproxy")

LIVE_DIR_ENV = "TEEPROXY_LIVE_DIR"
# Per worker file, before it rotates: ~1 KiB per request, so about 2,000 requests in each of two files.
MAX_FILE_BYTES = 2 * 1024 * 1024
POLL_INTERVAL_S = 0.2
# A publisher's events wait at most this long in its buffer (or until it holds FLUSH_EVENTS), then one write().
FLUSH_AFTER_S = 0.05
FLUSH_EVENTS = 200  # about a hundred requests: some 100 KiB of lines
HISTORY_S = 3600.0
# An SSE comment this often while nothing happens, so idle connections stay open through other proxies.
KEEPALIVE_S = 15.0
# How long a browser waits before reconnecting (the SSE `retry:` field).
RETRY_MS = 1000
SUFFIX = ".jsonl"

_encode = msgspec.json.Encoder().encode


# The events' fields, in the order they are written, `worker` and `t` last (a Struct encodes faster than a dict).
class _Started(msgspec.Struct, gc=False):
    request_id: str
    key_name: str | None
    provider: str
    dialect: str
    model: str
    endpoint: str
    worker: int
    t: float


class _Usage(msgspec.Struct, gc=False):
    request_id: str
    time: str
    key_name: str | None
    provider: str | None
    model: str | None
    input_tokens: int
    cached_tokens: int
    cache_write_tokens: int
    output_tokens: int
    reasoning_tokens: int
    usage_status: str
    cost_usd: str | None
    cost_status: str
    worker: int
    t: float


class _Error(msgspec.Struct, gc=False):
    request_id: str
    time: str
    provider: str | None
    model: str | None
    endpoint: str
    outcome: str
    http_status: int | None
    worker: int
    t: float


class LivePublisher:
    """An `Observer` appending this worker's events to its file in the run's live directory.

    An event is only noted when it happens (its time and the observer's own immutable event); its lines are
    encoded when the buffer is written, all of them in one pass. The same work either way, but done for a
    batch of requests at a time it runs in warm caches instead of between every request's other work."""

    def __init__(self, directory: str, max_file_bytes: int = MAX_FILE_BYTES) -> None:
        self.worker = os.getpid()
        self.path = os.path.join(directory, f"{self.worker}{SUFFIX}")
        self.max_file_bytes = max_file_bytes
        self._fd = self._open()
        self._size = os.fstat(self._fd).st_size
        self._failed = False
        self._pending: list[tuple[float, Started | Finished]] = []
        self._soon = FlushSoon(self.flush, FLUSH_AFTER_S, FLUSH_EVENTS)

    def _open(self) -> int:
        return os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)

    def request_started(self, event: Started) -> None:
        self._note(event)

    def request_finished(self, event: Finished) -> None:
        self._note(event)

    def _note(self, event: Started | Finished) -> None:
        self._pending.append((time.time(), event))
        self._soon.noted(len(self._pending))

    def flush(self) -> None:
        """The buffered events to the file, now."""
        self._soon.ran()
        if self._pending:
            pending, self._pending = self._pending, []
            self._append(b"".join([self._lines(now, event) for now, event in pending]))

    def _lines(self, when: float, event: Started | Finished) -> bytes:
        return b"%.3f %s %s\n" % (when, b"S" if type(event) is Started else b"F", _encode(event))

    def _append(self, data: bytes) -> None:
        try:
            if self._size and self._size + len(data) > self.max_file_bytes:
                self._rotate()
            os.write(self._fd, data)
            self._size += len(data)
        except OSError as exc:
            if not self._failed:  # once, not once per request
                log.error("live view: cannot write %s: %s", self.path, exc)
                self._failed = True

    def _rotate(self) -> None:
        os.replace(self.path, self.path + ".1")
        os.close(self._fd)
        self._fd = self._open()
        self._size = 0

    def close(self) -> None:
        self.flush()
        with contextlib.suppress(OSError):
            os.close(self._fd)


_decode_started = msgspec.json.Decoder(Started).decode
_decode_finished = msgspec.json.Decoder(Finished).decode


def _worker(name: str) -> int | None:
    """The worker a file in the live directory is from (`<pid>.jsonl`); None for a file of another name."""
    pid = name[: -len(SUFFIX)]
    return int(pid) if pid.isdigit() else None


def _typed_events(worker: int, t: float, kind: bytes, data: bytes) -> bytes:
    """The SSE events of one line on file: each event's JSON object with `worker` and `t` last."""
    if kind == b"S":
        s = _decode_started(data)
        started = _Started(s.request_id, s.key_name, s.provider, s.dialect, s.model, s.endpoint, worker, t)
        return b"event: request_started\ndata: %s\n\n" % _encode(started)
    if kind != b"F":
        raise ValueError("not a line this module wrote")
    event = _decode_finished(data)
    r = event.record
    usage = _Usage(
        r.request_id,
        r.time,
        r.key_name,
        r.provider,
        r.model,
        r.input_tokens,
        r.cached_tokens,
        r.cache_write_tokens,
        r.output_tokens,
        r.reasoning_tokens,
        r.usage_status,
        r.cost,
        r.cost_status,
        worker,
        t,
    )
    out = b"event: usage\ndata: %s\n\n" % _encode(usage)
    if r.outcome != "completed":
        error = _Error(r.request_id, r.time, r.provider, r.model, r.endpoint, r.outcome, r.http_status, worker, t)
        out += b"event: error\ndata: %s\n\n" % _encode(error)
    # The access line is a public contract of its own, without these two fields: they are spliced in.
    access = _encode(access_line(event))[:-1]
    return out + b'event: request_finished\ndata: %s,"worker":%d,"t":%s}\n\n' % (access, worker, _encode(t))


class _Follow:
    """One worker's file, read from where the last read ended; switches to the new file when it rotates."""

    def __init__(self, path: str, worker: int) -> None:
        self.path = path
        self.worker = worker  # the pid the file is named for: each event says which worker it is from
        self.file: BinaryIO | None = None
        self.inode = -1
        self.pending = b""
        self._reopen()

    def _reopen(self) -> None:
        if self.file is not None:
            self.file.close()
        try:
            self.file = open(self.path, "rb")  # kept open across reads: closed by close()
        except FileNotFoundError:  # between a rotation's rename and the new file's creation
            self.file, self.inode = None, -1
            return
        self.inode = os.fstat(self.file.fileno()).st_ino

    def read(self) -> bytes:
        data = self.file.read() if self.file is not None else b""
        try:
            current = os.stat(self.path).st_ino
        except FileNotFoundError:
            current = -1
        if current != self.inode:
            if self.file is not None:
                data += self.file.read()  # whatever the writer added before it rotated
            self._reopen()
            if self.file is not None:
                data += self.file.read()
        return data

    def lines(self) -> list[bytes]:
        data = self.pending + self.read()
        complete, _, self.pending = data.rpartition(b"\n")
        return complete.split(b"\n") if complete else []

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None


class LiveTail:
    """Every worker's events in one live directory, as SSE bytes: first those on file since `since`, then new
    ones at each `poll()`. Blocking file reads, of what the page cache already holds."""

    def __init__(self, directory: str, since: float) -> None:
        self.directory = directory
        self.since = since
        self._follows: dict[str, _Follow] = {}
        self._first = True

    def poll(self) -> bytes:
        try:
            names = sorted(n for n in os.listdir(self.directory) if n.endswith(SUFFIX))
        except FileNotFoundError:
            names = []
        out: list[bytes] = []
        for name in names:
            worker = _worker(name)
            if name not in self._follows and worker is not None:
                path = os.path.join(self.directory, name)
                follow = self._follows[name] = _Follow(path, worker)
                if self._first:
                    # Opened before the rotated file is read: a rotation in between repeats events (the page
                    # drops repeats by request id) rather than losing them.
                    out.extend(self._history(path + ".1", follow.inode, worker))
        self._first = False
        for follow in self._follows.values():
            out.extend(self._events(follow.lines(), follow.worker))
        return b"".join(out)

    def _history(self, path: str, following: int, worker: int) -> list[bytes]:
        try:
            with open(path, "rb") as file:
                if os.fstat(file.fileno()).st_ino == following:
                    return []
                data = file.read()
        except FileNotFoundError:
            return []
        return self._events(data.split(b"\n")[:-1], worker)  # the last piece is empty, or a line cut short

    def _events(self, lines: list[bytes], worker: int) -> list[bytes]:
        out = []
        for line in lines:
            stamp, _, rest = line.partition(b" ")
            kind, _, data = rest.partition(b" ")
            try:
                t = float(stamp)
                if t < self.since:
                    continue
                out.append(_typed_events(worker, t, kind, data))
            except ValueError:  # not a line this module wrote (msgspec's errors are ValueErrors too)
                continue
        return out

    def close(self) -> None:
        for follow in self._follows.values():
            follow.close()
        self._follows.clear()


async def event_stream(directory: str, since: float | None, stopping: asyncio.Event) -> AsyncIterator[bytes]:
    """The body of `GET /admin/live`: history, then new events as they are written, until the client leaves or
    the server stops."""
    tail = LiveTail(directory, time.time() - HISTORY_S if since is None else since)
    try:
        # The history can be a few MiB: read it off the event loop.
        first = await asyncio.to_thread(tail.poll)
        hello = _encode({"t": round(time.time(), 3)})
        yield b"retry: %d\nevent: hello\ndata: %s\n\n%s" % (RETRY_MS, hello, first)
        quiet_since = time.monotonic()
        while not stopping.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(POLL_INTERVAL_S):
                    await stopping.wait()
            data = tail.poll()
            if data:
                yield data
                quiet_since = time.monotonic()
            elif time.monotonic() - quiet_since > KEEPALIVE_S:
                yield b": keepalive\n\n"
                quiet_since = time.monotonic()
    finally:
        tail.close()
