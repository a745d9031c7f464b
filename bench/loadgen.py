"""A load generator cheaper than what it measures: one process, raw asyncio protocols, a minimal HTTP/1.1 client.

Theory of operation. Each connection writes one prebuilt request, reads the response head up to its blank
line (RFC 9112 §2.1), then the body until the last chunk (RFC 9112 §7.1) or Content-Length, then sends the next
request on the same connection (keep-alive, as an SDK's pool would). The body is never de-chunked or parsed:
SSE frame ends (WHATWG HTML §9.2.6, a blank line) are counted on the raw bytes of each read, with a short
carry so that one straddling two reads counts once (see `_SPLIT_END` for chunk framing). No HTTP library, no
JSON, no Python per chunk, only per read; its CPU per chunk is reported next to the targets' so the reader can
check it stays far below theirs.

Per stream it records: time to the first body byte, frames, and the largest gap between two reads that
completed a frame. A run prints one JSON summary on stdout.

    python -m bench.loadgen --port 8080 --concurrency 50 --duration-s 5 --n-chunks 100
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import re
import resource
import socket
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

# The head of a response is a few hundred bytes; a proxy that sends more is misbehaving.
MAX_HEAD_BYTES = 64 * 1024
# Opening thousands of connections at once overruns the listen backlog and turns into SYN retransmits (1 s
# each); a bounded number of connects in flight keeps the ramp fast and the measured target busy, not stalled.
MAX_CONNECTS_IN_FLIGHT = 256
# One loopback source address has ~28,000 ephemeral ports; past this many connections, spread the sources
# over 127.0.0.2, 127.0.0.3, ... (all of 127.0.0.0/8 is loopback).
CONNECTIONS_PER_SOURCE = 8000
IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)


def build_request(
    port: int, n_chunks: int, chunk_bytes: int, delay_ms: int, key: str | None, headers: list[str] | None = None
) -> bytes:
    """A streaming chat request; the knobs ride both as top-level fields and in the message text.

    The mock reads either: a proxy that drops unknown fields (LiteLLM does) still forwards the messages.
    `headers` are extra `name: value` lines, for a target that is told where the upstream is per request
    (Portkey's gateway).
    """
    knobs = f"n_chunks={n_chunks} chunk_bytes={chunk_bytes} delay_ms={delay_ms}"
    body = json.dumps(
        {
            "model": "gpt-4o-mini",
            "stream": True,
            "messages": [{"role": "user", "content": f"benchmark {knobs}"}],
            "n_chunks": n_chunks,
            "chunk_bytes": chunk_bytes,
            "delay_ms": delay_ms,
        },
        separators=(",", ":"),
    ).encode()
    extra = f"authorization: Bearer {key}\r\n" if key else ""
    for header in headers or []:
        name, sep, value = header.partition(":")
        if not sep or not name.strip() or "\r" in header or "\n" in header:
            raise ValueError(f"not a header line: {header!r}")
        extra += f"{name.strip()}: {value.strip()}\r\n"
    head = (
        f"POST /v1/chat/completions HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\ncontent-type: application/json\r\n"
        f"{extra}content-length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


# An SSE frame ends at a blank line. Counted on the raw chunked bytes, with `bytes.count` (C speed, no Python per
# chunk): chunk framing is CRLF-only so it never forms `\n\n`, except when a chunk boundary falls between the
# two LFs of one frame end, which shows as LF, CRLF, chunk size, CRLF, LF and is counted by _SPLIT_END. Proxies
# that re-chunk (teeproxy forwards each upstream read as one chunk) can split a frame anywhere.
_SPLIT_END = re.compile(rb"\n\r\n[0-9a-fA-F]{1,8}(?:;[^\r]*)?\r\n\n")
# The end of a chunked body without trailers (we never ask for them), after the CRLF ending the last data chunk.
_LAST_CHUNK = b"\r\n0\r\n\r\n"
# Enough of the previous read to find a frame end or the last chunk that straddles two reads.
_TAIL = 32


def _frame_ends(data: bytes) -> int:
    return data.count(b"\n\n") + len(_SPLIT_END.findall(data))


@dataclass(slots=True)
class Stream:
    started: float
    first_byte: float = 0.0
    last_frame: float = 0.0
    max_gap_s: float = 0.0
    frames: int = 0


@dataclass
class Totals:
    """What every connection of a run adds to."""

    ttfb_s: list[float] = field(default_factory=list)
    max_gap_s: list[float] = field(default_factory=list)
    frames_per_stream: Counter[int] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    streams_started: int = 0
    in_flight: int = 0
    peak_in_flight: int = 0


class Client(asyncio.Protocol):
    """One keep-alive connection running streams back to back while `more()` says so."""

    def __init__(self, request: bytes, totals: Totals, more: Callable[[], bool], done: asyncio.Future[bool]) -> None:
        self.request = request
        self.totals = totals
        self.more = more
        self.done = done
        self.transport: asyncio.Transport | None = None
        self.stream: Stream | None = None
        self.failed = False
        self.chunked = True
        self.head = b""
        self.in_head = True
        self.close_after = False  # the server said it closes the connection after this response
        self.remaining = 0  # body bytes left, for a Content-Length body
        self.tail = b""
        self.tail_ends = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self._next()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.stream is not None:
            self._fail("closed mid-stream")
        if not self.done.done():
            self.done.set_result(self.failed)

    def data_received(self, data: bytes) -> None:
        stream = self.stream
        if stream is None:
            return  # after a failure: the connection is closing
        now = time.perf_counter()
        if self.in_head:
            self.head += data
            end = self.head.find(b"\r\n\r\n")
            if end < 0:
                if len(self.head) > MAX_HEAD_BYTES:
                    self._fail("response head too large")
                return
            head = self.head[:end].lower()
            data = self.head[end + 4 :]
            self.head = b""
            if not head.startswith((b"http/1.1 200", b"http/1.0 200")):
                self._fail(f"status {head[9:12].decode(errors='replace')}")
                return
            self.chunked = b"transfer-encoding: chunked" in head
            self.close_after = b"connection: close" in head
            if not self.chunked:
                marker = head.find(b"content-length:")
                if marker < 0:
                    self._fail("neither chunked nor Content-Length")
                    return
                self.remaining = int(head[marker + 15 :].split(b"\r\n", 1)[0])
            self.in_head = False
            if not data:
                return
        if not stream.first_byte:
            stream.first_byte = stream.last_frame = now
        joined = self.tail + data
        ends = _frame_ends(joined)
        found = ends - self.tail_ends
        if found:
            stream.frames += found
            gap = now - stream.last_frame
            if gap > stream.max_gap_s:
                stream.max_gap_s = gap
            stream.last_frame = now
        if self.chunked:
            finished = joined.endswith(_LAST_CHUNK)
        else:
            self.remaining -= len(data)
            finished = self.remaining <= 0
        if finished:
            self._complete(now)
        else:
            self.tail = joined[-_TAIL:]
            self.tail_ends = _frame_ends(self.tail)

    def _next(self) -> None:
        assert self.transport is not None
        if not self.more():
            self.transport.close()
            return
        totals = self.totals
        totals.streams_started += 1
        totals.in_flight += 1
        if totals.in_flight > totals.peak_in_flight:
            totals.peak_in_flight = totals.in_flight
        self.stream = Stream(started=time.perf_counter())
        self.head = self.tail = b""
        self.in_head = True
        self.tail_ends = 0
        self.transport.write(self.request)

    def _complete(self, now: float) -> None:
        stream = self.stream
        assert stream is not None
        totals = self.totals
        totals.in_flight -= 1
        totals.ttfb_s.append(stream.first_byte - stream.started)
        totals.max_gap_s.append(stream.max_gap_s)
        totals.frames_per_stream[stream.frames] += 1
        self.stream = None
        if self.close_after:
            assert self.transport is not None
            self.transport.close()  # the caller opens a new connection if more streams are due
            return
        self._next()

    def _fail(self, reason: str) -> None:
        self.failed = True
        self.totals.in_flight -= 1
        self.totals.errors[reason] += 1
        self.stream = None
        if self.transport is not None:
            self.transport.close()


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile; NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def _same(client: Client) -> Client:
    return client


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def _connect(port: int, source: str) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setblocking(False)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if source != "127.0.0.1":
        # Pick the source port at connect() time, per 4-tuple, not at bind() time per address.
        sock.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
        sock.bind((source, 0))
    try:
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    except BaseException:
        sock.close()
        raise
    return sock


async def run(
    port: int,
    request: bytes,
    concurrency: int,
    total: int | None,
    duration_s: float | None,
    timeout_s: float,
) -> dict[str, object]:
    """`concurrency` connections running streams back to back until `total` streams or `duration_s` pass."""
    loop = asyncio.get_running_loop()
    cpu_before = _cpu_s()
    totals = Totals()
    started = time.perf_counter()
    deadline = started + duration_s if duration_s else float("inf")
    budget = total if total is not None else 1 << 62

    def more() -> bool:
        return totals.streams_started < budget and time.perf_counter() < deadline

    connects = asyncio.Semaphore(MAX_CONNECTS_IN_FLIGHT)
    sources = [f"127.0.0.{1 + i}" for i in range(max(1, -(-concurrency // CONNECTIONS_PER_SOURCE)))]
    transports: list[asyncio.BaseTransport] = []

    async def connection(index: int) -> None:
        """Keep one connection's worth of streams going, reconnecting when the server closes between streams."""
        while more():
            client = Client(request, totals, more, loop.create_future())
            async with connects:
                try:
                    sock = await _connect(port, sources[index % len(sources)])
                    transport, _ = await loop.create_connection(functools.partial(_same, client), sock=sock)
                except OSError as exc:
                    totals.errors[f"connect: {exc.strerror or exc}"] += 1
                    return
            transports.append(transport)
            if await client.done:
                return  # a failed stream ends its connection's run: errors are reported, not retried

    timed_out = False
    try:
        async with asyncio.timeout(timeout_s), asyncio.TaskGroup() as group:
            for index in range(min(concurrency, budget)):
                group.create_task(connection(index))
    except TimeoutError:
        timed_out = True
    unfinished = totals.in_flight
    for transport in transports:
        transport.close()
    elapsed = time.perf_counter() - started
    completed = len(totals.ttfb_s)
    return {
        "completed": completed,
        "errors": sum(totals.errors.values()),
        "error_kinds": dict(totals.errors),
        "unfinished": unfinished,
        "timed_out": timed_out,
        "frames": sum(n * count for n, count in totals.frames_per_stream.items()),
        "frames_per_stream": {str(n): count for n, count in sorted(totals.frames_per_stream.items())},
        "elapsed_s": elapsed,
        "peak_in_flight": totals.peak_in_flight,
        "ttfb_p50_ms": percentile(totals.ttfb_s, 50) * 1000,
        "ttfb_p99_ms": percentile(totals.ttfb_s, 99) * 1000,
        "max_gap_p50_ms": percentile(totals.max_gap_s, 50) * 1000,
        "max_gap_p99_ms": percentile(totals.max_gap_s, 99) * 1000,
        "loadgen_cpu_s": _cpu_s() - cpu_before,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--total", type=int, help="streams to run in all (default: until --duration-s)")
    parser.add_argument("--duration-s", type=float, help="start no new stream after this long")
    parser.add_argument("--timeout-s", type=float, default=300.0, help="give up on unfinished streams after this")
    parser.add_argument("--n-chunks", type=int, default=100)
    parser.add_argument("--chunk-bytes", type=int, default=200)
    parser.add_argument("--delay-ms", type=int, default=0)
    parser.add_argument("--key", help="sent as Authorization: Bearer KEY")
    parser.add_argument("--header", action="append", default=[], help="an extra request header, 'name: value'")
    args = parser.parse_args(argv)
    if args.total is None and args.duration_s is None:
        parser.error("give --total or --duration-s")
    request = build_request(args.port, args.n_chunks, args.chunk_bytes, args.delay_ms, args.key, args.header)
    summary = asyncio.run(run(args.port, request, args.concurrency, args.total, args.duration_s, args.timeout_s))
    json.dump(summary, sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
