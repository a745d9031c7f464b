"""The soak's fake provider: raw asyncio, real HTTP/1.1, every dialect, and a fault on request.

Each request carries its soak id and one upstream fault per attempt in its JSON body, which the proxy forwards
as it is (`"soak": {"id": "soak-17", "up": ["reset_before_head", "normal"]}`): the n-th time this server sees
an id it plays the n-th fault (the last one again past the end of the list). The kind of response (OpenAI chat,
streamed or not, Responses, Anthropic, Gemini SSE, JSON array or generateContent, Bedrock ConverseStream or
Converse) comes from the path and the body, as a real provider's would. The faults (`FAULT_WEIGHTS`; the soak's
client draws them):

    normal                  a whole, good response (a real capture half the time, see bench.soak_bodies)
    slow_drip               the same, a few bytes at a time, a few ms apart
    big_line                a stream holding one 2 MiB line (SSE data line, array element, event message)
    reset_before_head       the request is read, then the connection is reset (RST), nothing sent
    stall_before_head       nothing sent for longer than the proxy's first_byte_timeout_s, then closed
    reset_after_first_byte  the head and part of the body, then RST
    stall_after_first_byte  the head and part of the body, then silence past the proxy's read_timeout_s
    garbage                 junk between two frames (or inside one, or before a JSON body): bad JSON, huge
                            numbers, bad CRCs, NULs, invalid UTF-8 in strings, nesting past the recursion limit
    status_5xx              500/502/503/504 (529 for Anthropic) with an error body, no Retry-After
    status_5xx_retry_after  429 or 503 with Retry-After: 0, 1, 2, an HTTP-date, or 120 (past the proxy's cap)
    no_terminator           a stream without its end: no [DONE], no message_stop, no `]`, a cut last message
    error_event             200, then the dialect's own error event first (`gate_first_chunk` fails it over)
    bad_chunking            chunked: an invalid chunk-size line mid-body, then close. With Content-Length: the
                            body, then a whole second response nobody asked for ("smuggled by <soak id>"),
                            and the connection stays open, as a buggy server's would
    truncated_chunk         a chunk (or Content-Length) that promises more bytes than come, then close

`GET /__soak/stats` answers the ids seen (a request counts as seen once its body was read whole), the faults
played and the requests without an id. Every wait is bounded: stalls last a fixed time given on the command
line, a drip at most `DRIP_BUDGET_S`.

    python -m bench.fault_upstream --port 9100 --stall-head-s 1.5 --stall-body-s 3
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import email.utils
import json
import random
import socket
import struct
import time
from collections import Counter

from bench.soak_bodies import JSON_KINDS, SSE_KINDS, Body, Catalogue, error_event, error_status_body, garbage

FAULT_WEIGHTS = {
    "normal": 38,
    "slow_drip": 6,
    "big_line": 3,
    "reset_before_head": 6,
    "stall_before_head": 4,
    "reset_after_first_byte": 6,
    "stall_after_first_byte": 4,
    "garbage": 8,
    "status_5xx": 5,
    "status_5xx_retry_after": 6,
    "no_terminator": 5,
    "error_event": 3,
    "bad_chunking": 3,
    "truncated_chunk": 3,
}
PRE_HEAD_FAULTS = frozenset({"reset_before_head", "stall_before_head", "status_5xx", "status_5xx_retry_after"})
STATS_PATH = b"/__soak/stats"
# The body of the response nobody asked for (see bad_chunking): whoever reads it got another stream's bytes.
SMUGGLED = b"smuggled by "
# A slow drip writes its body over at most this long (the proxy's read timeout must not fire on it).
DRIP_BUDGET_S = 1.5
# Above this much unsent data, wait for the proxy to read: backpressure, as a real server has.
HIGH_WATER_BYTES = 64 * 1024
MAX_HEAD_BYTES = 64 * 1024
_REASONS = {200: b"OK", 429: b"Too Many Requests", 500: b"Internal Server Error", 502: b"Bad Gateway"}
_REASONS |= {503: b"Service Unavailable", 504: b"Gateway Timeout", 529: b"Overloaded"}


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


def _head(
    status: int, content_type: bytes, length: int | None, extra: list[tuple[bytes, bytes]] | None = None
) -> bytes:
    lines = [b"HTTP/1.1 %d %s" % (status, _REASONS.get(status, b"Error")), b"content-type: " + content_type]
    lines.append(b"transfer-encoding: chunked" if length is None else b"content-length: %d" % length)
    lines += [name + b": " + value for name, value in extra or []]
    return b"\r\n".join(lines) + b"\r\n\r\n"


def kind_of(target: bytes, request: dict[str, object]) -> str:
    path, _, query = target.partition(b"?")
    if path.endswith(b"/chat/completions"):
        return "openai_chat_stream" if request.get("stream") is True else "openai_chat"
    if path.endswith(b"/responses"):
        return "openai_responses"
    if path.endswith(b"/messages"):
        return "anthropic"
    if path.endswith(b":streamGenerateContent"):
        return "gemini_sse" if b"alt=sse" in query else "gemini_array"
    if path.endswith(b":generateContent"):
        return "gemini_generate"
    return "bedrock_converse" if path.endswith(b"/converse") else "bedrock"


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with RST: SO_LINGER on, zero seconds."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


class FaultUpstream:
    def __init__(self, stall_head_s: float, stall_body_s: float, seed: int = 0) -> None:
        self.stall_head_s = stall_head_s
        self.stall_body_s = stall_body_s
        self.seed = seed
        self.catalogue = Catalogue()
        self.attempts: dict[str, int] = {}
        self.faults: Counter[str] = Counter()
        self.kinds: Counter[str] = Counter()
        self.no_id = 0
        self.server: asyncio.Server | None = None

    async def start(self, port: int = 0) -> int:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", port, backlog=4096, limit=MAX_HEAD_BYTES)
        bound: int = self.server.sockets[0].getsockname()[1]
        return bound

    def stats(self) -> dict[str, object]:
        return {
            "seen": sorted(self.attempts),
            "requests": sum(self.attempts.values()) + self.no_id,
            "no_id": self.no_id,
            "faults": dict(self.faults),
            "kinds": dict(self.kinds),
            "captures": {kind: len(bodies) for kind, bodies in self.catalogue.captures.items()},
        }

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        keep = True
        try:
            while keep:
                head = await reader.readuntil(b"\r\n\r\n")
                request_line, _, rest = head.partition(b"\r\n")
                target = request_line.split(b" ")[1] if request_line.count(b" ") >= 2 else b"/"
                length, chunked = 0, False
                for line in rest.split(b"\r\n"):
                    name, _, value = line.partition(b":")
                    name = name.strip().lower()
                    if name == b"content-length":
                        length = int(value)
                    elif name == b"transfer-encoding" and b"chunked" in value.lower():
                        chunked = True
                body = await (self._read_chunked(reader) if chunked else reader.readexactly(length))
                if target == STATS_PATH:
                    data = json.dumps(self.stats()).encode()
                    writer.write(_head(200, b"application/json", len(data)) + data)
                    await writer.drain()
                    continue
                keep = await self._respond(target, body, writer)
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError, ValueError, IndexError):
            pass
        finally:
            if not writer.transport.is_closing():
                writer.close()

    @staticmethod
    async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
        parts = []
        for _ in range(100_000):  # bounded: a request body is never this many chunks
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            if size == 0:
                await reader.readuntil(b"\r\n")
                return b"".join(parts)
            parts.append(await reader.readexactly(size))
            await reader.readexactly(2)
        raise ValueError("too many chunks")

    async def _respond(self, target: bytes, raw: bytes, writer: asyncio.StreamWriter) -> bool:
        """Play the fault this attempt names. True when the connection may serve another request."""
        try:
            request = json.loads(raw)
        except ValueError:
            request = {}
        soak = request.get("soak") if isinstance(request, dict) else None
        if isinstance(soak, dict) and isinstance(soak.get("id"), str):
            sid, plan = soak["id"], soak.get("up") or ["normal"]
            attempt = self.attempts.get(sid, 0)
            self.attempts[sid] = attempt + 1
            fault = str(plan[min(attempt, len(plan) - 1)])
        else:
            self.no_id += 1
            sid, attempt, fault = "", 0, "normal"
        kind = kind_of(target, request if isinstance(request, dict) else {})
        self.faults[fault] += 1
        self.kinds[kind] += 1
        rng = random.Random(f"{self.seed}:{sid}:{attempt}")
        include_usage = b'"include_usage":true' in raw.replace(b" ", b"")

        if fault == "reset_before_head":
            _reset(writer)
            return False
        if fault == "stall_before_head":
            await asyncio.sleep(self.stall_head_s)
            return False
        if fault in ("status_5xx", "status_5xx_retry_after"):
            await self._status(kind, fault, rng, writer)
            return True

        body = self._body(kind, fault, rng, include_usage)
        chunked = kind not in JSON_KINDS or rng.random() < 0.3
        pieces = self._cut(body, fault, rng)
        if fault not in ("reset_after_first_byte", "stall_after_first_byte", "bad_chunking", "truncated_chunk"):
            await self._write(writer, body, pieces, chunked, delay_s=self._drip_delay(fault, pieces))
            return True
        if fault == "bad_chunking" and not chunked:  # in one write, as a server with that bug sends it
            stray = SMUGGLED + sid.encode()
            head = _head(200, body.content_type, len(body.data))
            writer.write(head + body.data + _head(200, b"text/plain", len(stray)) + stray)
            await writer.drain()
            return True
        cut = rng.randint(1, max(1, len(pieces) - 1))
        sent, rest = pieces[:cut], pieces[cut:]
        if chunked:
            writer.write(_head(200, body.content_type, None) + b"".join(_chunk(p) for p in sent))
        else:
            extra = 100 if fault == "truncated_chunk" else 0
            writer.write(_head(200, body.content_type, len(body.data) + extra) + b"".join(sent))
        await writer.drain()
        if fault == "reset_after_first_byte":
            await asyncio.sleep(0.01)  # let the sent bytes reach the proxy before the RST discards them
            _reset(writer)
        elif fault == "stall_after_first_byte":
            await asyncio.sleep(self.stall_body_s)
            writer.write(b"".join(_chunk(p) for p in rest) + b"0\r\n\r\n" if chunked else b"".join(rest))
            await writer.drain()
        elif fault == "bad_chunking" and chunked:
            writer.write(b"zz\r\nnot a chunk\r\n")
            await writer.drain()

        else:  # truncated_chunk
            writer.write(b"400\r\n" + b"".join(rest)[:100] if chunked else b"".join(rest))
            await writer.drain()
        return False

    async def _status(self, kind: str, fault: str, rng: random.Random, writer: asyncio.StreamWriter) -> None:
        extra: list[tuple[bytes, bytes]] = []
        if fault == "status_5xx":
            status = rng.choice([500, 502, 503, 504, 529] if kind == "anthropic" else [500, 502, 503, 504])
        else:
            status = rng.choice([429, 503])
            after = rng.choice(["0", "1", "2", "120", email.utils.formatdate(time.time() + 1, usegmt=True)])
            extra.append((b"retry-after", after.encode()))
        data = error_status_body(kind, status)
        writer.write(_head(status, b"application/json", len(data), extra) + data)
        await writer.drain()

    def _body(self, kind: str, fault: str, rng: random.Random, include_usage: bool) -> Body:
        if fault == "big_line":
            return self.catalogue.big(kind)
        if fault == "no_terminator":
            return self.catalogue.unterminated(kind, rng, include_usage)
        if fault == "error_event":
            return error_event(kind)
        body = self.catalogue.good(kind, rng, include_usage)
        if fault != "garbage":
            return body
        junk = garbage(kind, rng)
        ends = list(body.frame_ends) or [len(body.data)]
        if kind in SSE_KINDS and rng.random() < 0.2:  # inside a frame, not between two
            at = rng.randrange(len(body.data) + 1)
        else:
            at = rng.choice([0, *ends])
        data = body.data[:at] + junk + body.data[at:]
        shifted = [e if e < at else e + len(junk) for e in ends]
        return Body(body.content_type, data, tuple(sorted({*shifted, at + len(junk)} - {0})))

    @staticmethod
    def _cut(body: Body, fault: str, rng: random.Random) -> list[bytes]:
        """The body's writes: one per frame, or pieces of random sizes (tiny ones for a drip)."""
        if fault == "slow_drip":
            low, high = 1, 48
        elif rng.random() < 0.7:
            return [p for p in body.pieces() if p] or [body.data]
        else:
            low, high = 1, 4096
        pieces, pos = [], 0
        while pos < len(body.data):
            size = rng.randint(low, high)
            pieces.append(body.data[pos : pos + size])
            pos += size
        return pieces or [b""]

    @staticmethod
    def _drip_delay(fault: str, pieces: list[bytes]) -> float:
        return min(0.03, DRIP_BUDGET_S / len(pieces)) if fault == "slow_drip" else 0.0

    @staticmethod
    async def _write(
        writer: asyncio.StreamWriter, body: Body, pieces: list[bytes], chunked: bool, delay_s: float
    ) -> None:
        head = _head(200, body.content_type, None if chunked else len(body.data))

        def frame(piece: bytes) -> bytes:
            return _chunk(piece) if chunked else piece

        tail = b"0\r\n\r\n" if chunked else b""
        if not delay_s:
            writer.write(head + b"".join(frame(p) for p in pieces if p) + tail)
            await writer.drain()
            return
        writer.write(head)
        for piece in pieces:
            await asyncio.sleep(delay_s)
            writer.write(frame(piece))
            if writer.transport.get_write_buffer_size() > HIGH_WATER_BYTES:
                await writer.drain()
        writer.write(tail)
        await writer.drain()


async def _main(args: argparse.Namespace) -> None:
    upstream = FaultUpstream(args.stall_head_s, args.stall_body_s, args.seed)
    port = await upstream.start(args.port)
    print(f"fault upstream on 127.0.0.1:{port}", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=9100)
    parser.add_argument("--stall-head-s", type=float, default=1.5)
    parser.add_argument("--stall-body-s", type=float, default=3.0)
    parser.add_argument("--seed", type=int, default=0)
    try:
        asyncio.run(_main(parser.parse_args()))
    except KeyboardInterrupt:
        pass
