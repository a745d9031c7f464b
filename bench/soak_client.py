"""The soak's clients, in a process of their own: raw asyncio sockets, HTTP/1.1 framed by h11 (sans-I/O).

Stream n is planned from the seed and n alone (`plan`), so any one stream can be replayed: its dialect and
kind, the upstream's fault for each attempt (carried in the body, see bench.fault_upstream), and what the
client does:

    normal       reads the response to its end, as fast as it comes
    early_close  leaves at a random point: while still sending its body, before the head, or after a random
                 number of body bytes or a random time, half the time with a RST instead of a FIN
    slow_reader  a 4 KiB receive buffer, reading 2 KiB at a time a few ms apart (the proxy meets backpressure)

Every request sets `x-teeproxy-request-id: <its soak id>`, the id the ledger record will carry, and some ask
for trailers (`TE: trailers`) or the inline usage comment. One line per stream goes to `--log` (JSON: the plan,
the result, the status, the provider the proxy named); the summary is printed as JSON on stdout. A request is
given `REQUEST_TIMEOUT_S` at most; no new stream starts after `--time-limit-s`.

    python -m bench.soak_client --port 8080 --key tp-soak-key --streams 500 --log streams.jsonl
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import socket
import struct
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass
from typing import IO, Any

import h11

from bench.fault_upstream import FAULT_WEIGHTS, SMUGGLED

KIND_WEIGHTS = {
    "openai_chat_stream": 24,
    "openai_chat": 8,
    "openai_responses": 6,
    "anthropic": 20,
    "gemini_sse": 10,
    "gemini_array": 7,
    "gemini_generate": 5,
    "bedrock": 15,
    "bedrock_converse": 5,
}
BEHAVIOUR_WEIGHTS = {"normal": 60, "early_close": 25, "slow_reader": 15}
MODELS = {
    "openai": "gpt-4o-mini",
    "anthropic": "claude-haiku-4-5",
    "gemini": "gemini-2.5-flash",
    "bedrock": "anthropic.claude-3-5-haiku-20241022-v1:0",
}
MAX_ATTEMPTS = 3  # the most any soak route makes (its max_attempts)
REQUEST_TIMEOUT_S = 60.0
# hypercorn closes an idle keep-alive connection after 5 s; reuse one only well within that.
REUSE_IDLE_S = 2.0
READ_BYTES = 64 * 1024
SLOW_READ_BYTES = 2048
SLOW_RCVBUF_BYTES = 4096
PROGRESS_EVERY_S = 10.0
INLINE_COMMENT = b": x-teeproxy-usage "


@dataclass(slots=True)
class Plan:
    n: int
    sid: str
    kind: str
    up: list[str]
    client: str
    trailers: bool
    inline: bool
    asks_usage: bool  # an OpenAI stream that sets include_usage itself
    close_in_body: bool = False
    close_after_bytes: int = -1  # early_close: leave once this many body bytes have come (-1: never)
    close_after_s: float = -1.0  # early_close: leave this long after the request went (-1: never)
    rst: bool = False


def _pick(rng: random.Random, weights: dict[str, int]) -> str:
    return rng.choices(list(weights), weights=list(weights.values()))[0]


def plan(seed: int, n: int) -> Plan:
    """Stream n of the run with this seed: the same every time."""
    rng = random.Random(f"soak:{seed}:{n}")
    p = Plan(
        n=n,
        sid=f"soak-{seed}-{n}",
        kind=_pick(rng, KIND_WEIGHTS),
        up=[_pick(rng, FAULT_WEIGHTS) for _ in range(MAX_ATTEMPTS)],
        client=_pick(rng, BEHAVIOUR_WEIGHTS),
        trailers=rng.random() < 0.3,
        inline=rng.random() < 0.2,
        asks_usage=rng.random() < 0.2,
    )
    if p.client == "early_close":
        p.rst = rng.random() < 0.5
        roll = rng.random()
        if roll < 0.1:
            p.close_in_body = True
        elif roll < 0.55:
            p.close_after_s = rng.uniform(0.0, 2.5)
        else:
            p.close_after_bytes = rng.choice([0, rng.randint(1, 600), rng.randint(600, 20_000)])
    return p


def request_for(p: Plan, key: str, port: int) -> tuple[h11.Request, bytes]:
    messages = [{"role": "user", "content": f"soak stream {p.n}"}]
    soak = {"id": p.sid, "up": p.up}
    headers = [("host", f"127.0.0.1:{port}"), ("content-type", "application/json")]
    kind = p.kind
    body: dict[str, Any]
    if kind.startswith("openai"):
        headers.append(("authorization", f"Bearer {key}"))
        if kind == "openai_responses":
            target = "/v1/responses"
            body = {"model": MODELS["openai"], "stream": True, "input": messages[0]["content"]}
        else:
            target = "/v1/chat/completions"
            body = {"model": MODELS["openai"], "stream": kind == "openai_chat_stream", "messages": messages}
            if p.asks_usage and body["stream"]:
                body["stream_options"] = {"include_usage": True}
        body["user"] = p.sid
    elif kind == "anthropic":
        headers += [("x-api-key", key), ("anthropic-version", "2023-06-01")]
        target = "/v1/messages"
        body = {"model": MODELS["anthropic"], "max_tokens": 64, "stream": True, "messages": messages}
    elif kind.startswith("gemini"):
        headers.append(("x-goog-api-key", key))
        method = "generateContent" if kind == "gemini_generate" else "streamGenerateContent"
        target = f"/v1beta/models/{MODELS['gemini']}:{method}" + ("?alt=sse" if kind == "gemini_sse" else "")
        body = {"contents": [{"role": "user", "parts": [{"text": messages[0]["content"]}]}]}
    else:
        headers.append(("authorization", f"Bearer {key}"))
        model = MODELS["bedrock"].replace(":", "%3A")
        target = f"/model/{model}/" + ("converse" if kind == "bedrock_converse" else "converse-stream")
        body = {"messages": [{"role": "user", "content": [{"text": messages[0]["content"]}]}]}
    body["soak"] = soak
    data = json.dumps(body, separators=(",", ":")).encode()
    headers += [("content-length", str(len(data))), ("x-teeproxy-request-id", p.sid)]
    if p.trailers:
        headers.append(("te", "trailers"))
    if p.inline:
        headers.append(("x-teeproxy-usage", "inline"))
    return h11.Request(method="POST", target=target, headers=headers), data


@dataclass(slots=True)
class Outcome:
    result: str
    status: int | None = None
    provider: str | None = None
    attempts: str | None = None
    body_bytes: int = 0
    trailers: bool = False
    tail: bytes = b""
    id_mismatch: bool = False
    inline_comment: bool = False  # the `: x-teeproxy-usage` comment arrived
    comment_mid_line: bool = False  # ... but not at the start of a line, so no SSE client reads it as a comment
    crosstalk: bool = False  # the body holds bytes another stream's upstream sent (bench.fault_upstream.SMUGGLED)
    reused: bool = False  # sent on a keep-alive connection that had carried a request before
    previous: str = ""  # that request's kind and result


class Connection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.h11 = h11.Connection(h11.CLIENT)
        self.idle_since = time.monotonic()
        self.last = ""  # the kind and result of the last exchange on this connection

    def close(self, rst: bool = False) -> None:
        if rst:
            sock = self.writer.get_extra_info("socket")
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.writer.transport.abort()
        else:
            self.writer.close()


async def connect(port: int, slow: bool) -> Connection:
    if not slow:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=READ_BYTES)
        return Connection(reader, writer)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SLOW_RCVBUF_BYTES)
    sock.setblocking(False)
    try:
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    except OSError:
        sock.close()
        raise
    reader, writer = await asyncio.open_connection(sock=sock, limit=SLOW_RCVBUF_BYTES)
    return Connection(reader, writer)


class Clients:
    def __init__(self, args: argparse.Namespace, log: IO[str] | None) -> None:
        self.args = args
        self.log = log
        self.next = 0
        self.started = 0
        self.done = 0
        self.results: Counter[str] = Counter()
        self.by_kind: Counter[str] = Counter()
        self.by_client: Counter[str] = Counter()
        self.statuses: Counter[str] = Counter()
        self.id_mismatch = 0
        self.trailers_seen = 0
        self.inline_comments = 0
        self.comments_mid_line = 0
        self.crosstalk: list[str] = []
        self.stop_at = time.monotonic() + args.time_limit_s
        self.order = [int(n) for n in args.only.split(",")] if args.only else range(args.streams)

    async def run(self) -> None:
        async with asyncio.TaskGroup() as tg:
            progress = tg.create_task(self._progress())
            async with asyncio.TaskGroup() as workers:
                for _ in range(self.args.concurrency):
                    workers.create_task(self._worker())
            progress.cancel()

    async def _progress(self) -> None:
        start = time.monotonic()
        for _ in range(int((self.args.time_limit_s + REQUEST_TIMEOUT_S) / PROGRESS_EVERY_S) + 2):
            await asyncio.sleep(PROGRESS_EVERY_S)
            elapsed = time.monotonic() - start
            print(f"soak: {elapsed:5.0f} s  {self.done:,} streams done  {self.done / elapsed:,.1f}/s", file=sys.stderr)

    async def _worker(self) -> None:
        conn: Connection | None = None
        while self.next < len(self.order) and time.monotonic() < self.stop_at:
            p = plan(self.args.seed, self.order[self.next])
            self.next += 1
            self.started += 1
            reuse = conn if conn is not None and time.monotonic() - conn.idle_since < REUSE_IDLE_S else None
            if conn is not None and reuse is None:
                conn.close()
            try:
                outcome, conn = await self._one(p, reuse)
            finally:
                self.done += 1
            self._record(p, outcome)
        if conn is not None:
            conn.close()

    def _record(self, p: Plan, out: Outcome) -> None:
        self.results[out.result] += 1
        self.by_kind[p.kind] += 1
        self.by_client[p.client] += 1
        if out.status is not None:
            self.statuses[str(out.status)] += 1
        self.id_mismatch += out.id_mismatch
        self.trailers_seen += out.trailers
        at = out.tail.find(INLINE_COMMENT)
        out.inline_comment = at >= 0
        out.comment_mid_line = at > 0 and out.tail[at - 1 : at] not in (b"\n", b"\r")
        self.inline_comments += out.inline_comment
        self.comments_mid_line += out.comment_mid_line
        out.crosstalk = SMUGGLED in out.tail
        if out.crosstalk:
            self.crosstalk.append(p.sid)
        if self.log is not None:
            line = {**asdict(p), **asdict(out), "tail": out.tail[-200:].decode("utf-8", "replace")}
            self.log.write(json.dumps(line, separators=(",", ":")) + "\n")

    async def _one(self, p: Plan, conn: Connection | None) -> tuple[Outcome, Connection | None]:
        """One stream; returns its outcome and the connection when it may carry another request."""
        slow = p.client == "slow_reader"
        if conn is None or slow:
            if conn is not None:
                conn.close()
            try:
                conn = await connect(self.args.port, slow)
            except OSError as exc:
                return Outcome(f"connect_error:{type(exc).__name__}"), None
        reused, previous = bool(conn.last), conn.last
        try:
            async with asyncio.timeout(REQUEST_TIMEOUT_S):
                out = await self._exchange(p, conn)
        except TimeoutError:
            out = Outcome("client_timeout")
        except h11.RemoteProtocolError:
            out = Outcome("protocol_error")
        except OSError as exc:
            out = Outcome(f"socket_error:{type(exc).__name__}")
        out.reused, out.previous = reused, previous
        conn.last = f"{p.kind}:{out.result}"
        keep = out.result.startswith("complete") and conn.h11.our_state is h11.DONE and not slow
        if keep and conn.h11.their_state is h11.DONE:
            conn.h11.start_next_cycle()
            conn.idle_since = time.monotonic()
            return out, conn
        conn.close(rst=p.rst and out.result.startswith("client_closed"))
        return out, None

    async def _exchange(self, p: Plan, conn: Connection) -> Outcome:
        request, body = request_for(p, self.args.key, self.args.port)
        h = conn.h11
        head = h.send(request) or b""
        if p.close_in_body:
            conn.writer.write(head + (h.send(h11.Data(data=body[: len(body) // 2])) or b""))
            await conn.writer.drain()
            await asyncio.sleep(random.uniform(0, 0.05))
            return Outcome("client_closed_in_request")
        conn.writer.write(head + (h.send(h11.Data(data=body)) or b"") + (h.send(h11.EndOfMessage()) or b""))
        await conn.writer.drain()
        sent_at = time.monotonic()
        out = Outcome("proxy_closed_before_head")
        tail = bytearray()
        slow = p.client == "slow_reader"
        eof = False
        while True:
            try:
                event = h.next_event()
            except h11.RemoteProtocolError:
                if not eof:
                    raise
                out.tail = bytes(tail)
                return out  # the proxy closed mid-body (or before the head): the result says which
            if event is h11.NEED_DATA:
                if p.close_after_bytes >= 0 and out.status is not None and out.body_bytes >= p.close_after_bytes:
                    out.result = "client_closed"
                    return out
                wait_s = None
                if p.close_after_s >= 0:
                    wait_s = p.close_after_s - (time.monotonic() - sent_at)
                    if wait_s <= 0:
                        out.result = "client_closed"
                        return out
                try:
                    async with asyncio.timeout(wait_s):
                        data = await conn.reader.read(SLOW_READ_BYTES if slow else READ_BYTES)
                except TimeoutError:
                    out.result = "client_closed"
                    return out
                if slow:
                    await asyncio.sleep(random.uniform(0.005, 0.02))
                eof = not data
                h.receive_data(data)
                continue
            if isinstance(event, h11.Response):
                out.status = event.status_code
                out.result = "proxy_cut_body"  # until the end of the body arrives
                fields = dict(event.headers)
                out.provider = fields.get(b"x-teeproxy-provider", b"").decode()
                out.attempts = fields.get(b"x-teeproxy-attempts", b"").decode()
                out.id_mismatch = fields.get(b"x-teeproxy-request-id") != p.sid.encode()
            elif isinstance(event, h11.Data):
                out.body_bytes += len(event.data)
                tail += event.data
                del tail[:-512]
            elif isinstance(event, h11.EndOfMessage):
                out.trailers = bool(event.headers)
                out.tail = bytes(tail)
                out.result = _classify(out.status, out.tail)
                return out
            elif isinstance(event, h11.ConnectionClosed):
                out.tail = bytes(tail)
                return out
            elif isinstance(event, h11.InformationalResponse):
                continue


def _classify(status: int | None, tail: bytes) -> str:
    if status is None or status >= 300:
        return f"complete_status_{status}"
    if b"error" in tail.lower() or b"exception" in tail.lower():
        return "complete_2xx_error_at_end"
    return "complete_2xx"


async def _main(args: argparse.Namespace) -> dict[str, Any]:
    started = time.monotonic()
    log = open(args.log, "w") if args.log else None  # noqa: ASYNC230 - once, before any stream starts
    try:
        clients = Clients(args, log)
        await clients.run()
    finally:
        if log is not None:
            log.close()
    return {
        "planned": args.streams,
        "sent": clients.started,
        "done": clients.done,
        "duration_s": round(time.monotonic() - started, 1),
        "results": dict(clients.results.most_common()),
        "statuses": dict(clients.statuses.most_common()),
        "by_kind": dict(clients.by_kind.most_common()),
        "by_client": dict(clients.by_client.most_common()),
        "id_mismatch": clients.id_mismatch,
        "trailers_seen": clients.trailers_seen,
        "inline_comments": clients.inline_comments,
        "inline_comments_mid_line": clients.comments_mid_line,
        "crosstalk": len(clients.crosstalk),
        "crosstalk_sample": clients.crosstalk[:10],
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--streams", type=int, default=500)
    parser.add_argument("--time-limit-s", type=float, default=60.0)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--log", default=None, help="one JSON line per stream")
    parser.add_argument("--only", default=None, help="run just these streams of the plan: n,n,...")
    return parser.parse_args(argv)


if __name__ == "__main__":
    summary = asyncio.run(_main(parse_args()))
    print(json.dumps(summary), flush=True)
