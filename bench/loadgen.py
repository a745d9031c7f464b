"""A load generator cheaper than what it measures: one process, raw asyncio protocols, a minimal HTTP/1.1 client.

Theory of operation. Each connection writes one prebuilt request, then reads the response with a small state
machine: the head up to its blank line (RFC 9112 §2.1), then the body, de-chunked (RFC 9112 §7.1) or by
Content-Length, then the next request on the same connection (keep-alive, as an SDK's pool would). The body
is never parsed beyond counting SSE frame ends — a blank line, `\\n\\n` or `\\r\\n\\r\\n` (WHATWG HTML
§9.2.6) — counted on the de-chunked payload with a 3-byte carry, so a frame end split across two HTTP chunks
or two reads still counts once. No HTTP library, no JSON, no per-frame Python beyond `bytes.count`; its CPU per
chunk is reported next to the targets' so the reader can check it stays far below theirs.

Per stream it records: time to the first body byte, frames, and the largest gap between two reads that
completed a frame. A run prints one JSON summary on stdout.

    python -m bench.loadgen --port 8080 --concurrency 50 --duration-s 5 --n-chunks 100
"""

from __future__ import annotations

import argparse
import asyncio
import json
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

_HEAD, _CHUNK_SIZE, _CHUNK_DATA, _CHUNK_CRLF, _TRAILERS, _LENGTH, _EOF = range(7)


def build_request(port: int, n_chunks: int, chunk_bytes: int, delay_ms: int, key: str | None) -> bytes:
    """A streaming chat request; the knobs ride both as top-level fields and in the message text.

    The mock reads either: a proxy that drops unknown fields (LiteLLM does) still forwards the messages.
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
    auth = f"authorization: Bearer {key}\r\n" if key else ""
    head = (
        f"POST /v1/chat/completions HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\ncontent-type: application/json\r\n"
        f"{auth}content-length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


def _frame_ends(data: bytes) -> int:
    return data.count(b"\n\n") + data.count(b"\r\n\r\n")


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

    def __init__(self, request: bytes, totals: Totals, more: Callable[[], bool], done: asyncio.Future[None]) -> None:
        self.request = request
        self.totals = totals
        self.more = more
        self.done = done
        self.transport: asyncio.Transport | None = None
        self.stream: Stream | None = None
        self.state = _HEAD
        self.buffer = b""
        self.remaining = 0
        self.carry = b""
        self.carry_ends = 0

    # -- connection events

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self._next()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.stream is not None:
            if self.state == _EOF:
                self._complete(time.perf_counter())
            else:
                self._fail("closed mid-stream")
        if not self.done.done():
            self.done.set_result(None)

    def data_received(self, data: bytes) -> None:
        if self.stream is None:
            return  # bytes after a response we are done with: ignore, the connection is closing
        now = time.perf_counter()
        if self.buffer:
            data = self.buffer + data
            self.buffer = b""
        position = 0
        size = len(data)
        frames_before = self.stream.frames
        while position < size and self.stream is not None:
            state = self.state
            if state == _CHUNK_DATA or state == _LENGTH or state == _EOF:
                take = size - position if state == _EOF else min(self.remaining, size - position)
                self._payload(data[position : position + take], now)
                position += take
                self.remaining -= take
                if self.remaining == 0 and state != _EOF:
                    if state == _LENGTH:
                        self._complete(now)
                    else:
                        self.state = _CHUNK_CRLF
            elif state == _CHUNK_SIZE or state == _CHUNK_CRLF or state == _TRAILERS:
                end = data.find(b"\r\n", position)
                if end < 0:
                    self.buffer = data[position:]
                    break
                line = data[position:end]
                position = end + 2
                if state == _CHUNK_CRLF:
                    self.state = _CHUNK_SIZE
                elif state == _TRAILERS:
                    if not line:
                        self._complete(now)
                else:
                    length = int(line.split(b";", 1)[0], 16)
                    if length == 0:
                        self.state = _TRAILERS
                    else:
                        self.remaining = length
                        self.state = _CHUNK_DATA
            else:  # _HEAD
                end = data.find(b"\r\n\r\n", position)
                if end < 0:
                    if size - position > MAX_HEAD_BYTES:
                        self._fail("response head too large")
                        return
                    self.buffer = data[position:]
                    break
                head = data[position:end].lower()
                position = end + 4
                if not head.startswith((b"http/1.1 200", b"http/1.0 200")):
                    status = head.split(b"\r\n", 1)[0].decode(errors="replace")
                    self._fail(f"status {status[9:12]}")
                    return
                if b"transfer-encoding: chunked" in head:
                    self.state = _CHUNK_SIZE
                else:
                    marker = head.find(b"content-length:")
                    if marker >= 0:
                        self.remaining = int(head[marker + 15 :].split(b"\r\n", 1)[0])
                        self.state = _LENGTH
                    else:
                        self.state = _EOF  # read to the end of the connection
        if self.stream is not None and self.stream.frames != frames_before:
            self._frame_read(now)

    # -- stream bookkeeping

    def _next(self) -> None:
        assert self.transport is not None
        if not self.more():
            self.transport.close()
            return
        self.totals.streams_started += 1
        self.totals.in_flight += 1
        self.totals.peak_in_flight = max(self.totals.peak_in_flight, self.totals.in_flight)
        self.stream = Stream(started=time.perf_counter())
        self.state = _HEAD
        self.buffer = self.carry = b""
        self.carry_ends = 0
        self.transport.write(self.request)

    def _payload(self, piece: bytes, now: float) -> None:
        stream = self.stream
        assert stream is not None
        if not piece:
            return
        if not stream.first_byte:
            stream.first_byte = stream.last_frame = now
        joined = self.carry + piece
        stream.frames += _frame_ends(joined) - self.carry_ends
        self.carry = joined[-3:]
        self.carry_ends = _frame_ends(self.carry)

    def _frame_read(self, now: float) -> None:
        # Called once per read that completed at least one frame: the gap is between reads, not frames.
        stream = self.stream
        assert stream is not None
        gap = now - stream.last_frame
        if gap > stream.max_gap_s:
            stream.max_gap_s = gap
        stream.last_frame = now

    def _complete(self, now: float) -> None:
        stream = self.stream
        assert stream is not None
        totals = self.totals
        totals.in_flight -= 1
        totals.ttfb_s.append((stream.first_byte or now) - stream.started)
        totals.max_gap_s.append(stream.max_gap_s)
        totals.frames_per_stream[stream.frames] += 1
        self.stream = None
        if self.state == _EOF:
            return  # connection_lost called us: nothing more on this connection
        self._next()

    def _fail(self, reason: str) -> None:
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
    done_futures: list[asyncio.Future[None]] = []
    transports: list[asyncio.BaseTransport] = []

    async def open_one(index: int) -> None:
        done: asyncio.Future[None] = loop.create_future()
        async with connects:
            try:
                sock = await _connect(port, sources[index % len(sources)])
                transport, _ = await loop.create_connection(
                    lambda: Client(request, totals, more, done), sock=sock
                )
            except OSError as exc:
                totals.errors[f"connect: {exc.strerror or exc}"] += 1
                return
        transports.append(transport)
        done_futures.append(done)

    async with asyncio.TaskGroup() as group:
        for index in range(min(concurrency, budget)):
            group.create_task(open_one(index))
    timed_out = False
    if done_futures:
        _, pending = await asyncio.wait(done_futures, timeout=max(0.0, started + timeout_s - time.perf_counter()))
        timed_out = bool(pending)
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
    args = parser.parse_args(argv)
    if args.total is None and args.duration_s is None:
        parser.error("give --total or --duration-s")
    request = build_request(args.port, args.n_chunks, args.chunk_bytes, args.delay_ms, args.key)
    summary = asyncio.run(run(args.port, request, args.concurrency, args.total, args.duration_s, args.timeout_s))
    json.dump(summary, sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
