"""A load generator cheaper than what it measures: raw asyncio streams and a minimal HTTP/1.1 client.

It writes a prebuilt request, then only counts: SSE frame ends (`\\n\\n`) in what it reads, the time of the
first body byte and the largest gap between reads that completed a frame, and the end of the chunked body
(`0\\r\\n\\r\\n`). No HTTP parsing beyond that, no JSON, so its per-chunk cost stays far below a proxy's.
Connections are kept alive across streams, as an SDK's pool would.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field

READ_SIZE = 256 * 1024
_END = b"0\r\n\r\n"


@dataclass(slots=True)
class StreamResult:
    ttfb_s: float
    total_s: float
    frames: int
    max_gap_s: float


@dataclass
class RunResult:
    streams: list[StreamResult] = field(default_factory=list)
    errors: int = 0
    elapsed_s: float = 0.0

    @property
    def frames(self) -> int:
        return sum(s.frames for s in self.streams)


def build_request(port: int, n_chunks: int, chunk_bytes: int, delay_ms: int, key: str | None) -> bytes:
    body = json.dumps(
        {
            "model": "gpt-4o-mini",
            "stream": True,
            "messages": [{"role": "user", "content": "benchmark"}],
            "n_chunks": n_chunks,
            "chunk_bytes": chunk_bytes,
            "delay_ms": delay_ms,
        }
    ).encode()
    auth = f"authorization: Bearer {key}\r\n" if key else ""
    head = (
        f"POST /v1/chat/completions HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\ncontent-type: application/json\r\n"
        f"{auth}content-length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


async def _one(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes) -> StreamResult:
    start = time.perf_counter()
    writer.write(request)
    head = await reader.readuntil(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 200"):
        raise ConnectionError(head.split(b"\r\n", 1)[0].decode(errors="replace"))
    first = 0.0
    frames = 0
    last_frame_at = 0.0
    max_gap = 0.0
    tail = b""
    while True:
        data = await reader.read(READ_SIZE)
        if not data:
            raise ConnectionError("closed mid-stream")
        now = time.perf_counter()
        if not first:
            first = now
            last_frame_at = now
        joined = tail + data
        found = joined.count(b"\n\n") - tail.count(b"\n\n")
        if found:
            frames += found
            gap = now - last_frame_at
            if gap > max_gap:
                max_gap = gap
            last_frame_at = now
        tail = joined[-8:]
        if tail.endswith(_END):
            return StreamResult(first - start, now - start, frames, max_gap)


async def run_streams(
    port: int, request: bytes, concurrency: int, total: int | None = None, duration_s: float | None = None
) -> RunResult:
    """`concurrency` connections, each running streams back to back, until `total` or `duration_s`."""
    result = RunResult()
    started = time.perf_counter()
    deadline = started + duration_s if duration_s else None
    remaining = [total if total is not None else 1 << 62]

    async def worker() -> None:
        reader = writer = None
        try:
            while remaining[0] > 0 and (deadline is None or time.perf_counter() < deadline):
                remaining[0] -= 1
                if writer is None:
                    reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=1 << 22)
                assert reader is not None
                try:
                    result.streams.append(await _one(reader, writer, request))
                except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, OSError):
                    result.errors += 1
                    writer.close()
                    reader = writer = None
        finally:
            if writer is not None:
                writer.close()

    async with asyncio.TaskGroup() as group:
        for _ in range(concurrency):
            group.create_task(worker())
    result.elapsed_s = time.perf_counter() - started
    return result


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]
