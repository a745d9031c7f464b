"""A fast mock OpenAI upstream for benchmarks: raw asyncio, no framework, frames prebuilt once.

Each request to /v1/chat/completions gets an SSE stream of `n_chunks` chat.completion.chunk frames of about
`chunk_bytes` bytes each, `delay_ms` apart (the first one too), one HTTP/1.1 chunk per frame, then a usage
chunk when the request set `stream_options.include_usage` and `data: [DONE]`, in one write. A request that set
`include_usage` gets its chunks with `"usage":null` in each, as OpenAI's API writes them now (the gpt-5-nano
capture, `openai/chat_usage_detailed_reasoning.sse`), at the same size: a metered proxy reads those, the others
do not, and every target sends its clients the same number of bytes. The three knobs are
read, first match wins, from the query string (`?n_chunks=5`), the JSON body (`"n_chunks": 5`) or any text in it,
such as the user message (`n_chunks=5`: a proxy that drops unknown fields still forwards the messages); else the
command-line defaults apply. Keep-alive is supported.

    python -m bench.mock_upstream --port 9001 --chunks 100 --chunk-bytes 200 --delay-ms 0
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re

_NUMBER = {name: re.compile(name.encode() + rb'"?\s*[:=]\s*(\d+)') for name in ("n_chunks", "chunk_bytes", "delay_ms")}
# Above this much unsent data, wait for the reader (the proxy) before writing more: backpressure, as a real
# provider's server has.
HIGH_WATER_BYTES = 64 * 1024
_HEAD = (
    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\n"
    b"transfer-encoding: chunked\r\n\r\n"
)


def _chunked(frame: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(frame), frame)


class Frames:
    """Prebuilt, chunk-encoded frames for one chunk size."""

    def __init__(self, chunk_bytes: int) -> None:
        self.content = _chunked(self._padded(chunk_bytes, usage_null=False))
        self.content_usage_null = _chunked(self._padded(chunk_bytes, usage_null=True))
        usage = {"prompt_tokens": 10, "completion_tokens": 0, "total_tokens": 10}
        self.usage_template = {
            "id": "chatcmpl-bench",
            "object": "chat.completion.chunk",
            "created": 0,
            "model": "gpt-4o-mini",
            "choices": [],
            "usage": usage,
        }
        self.done = _chunked(b"data: [DONE]\n\n") + b"0\r\n\r\n"
        self._bursts: dict[tuple[int, bool], bytes] = {}

    @classmethod
    def _padded(cls, chunk_bytes: int, usage_null: bool) -> bytes:
        pad = max(1, chunk_bytes - len(cls._frame("", usage_null)))
        return cls._frame("x" * pad, usage_null)

    @staticmethod
    def _frame(content: str, usage_null: bool) -> bytes:
        chunk: dict[str, object] = {
            "id": "chatcmpl-bench",
            "object": "chat.completion.chunk",
            "created": 0,
            "model": "gpt-4o-mini",
            "choices": [{"index": 0, "delta": {"content": content}, "finish_reason": None}],
        }
        if usage_null:
            chunk["usage"] = None
        return b"data: " + json.dumps(chunk, separators=(",", ":")).encode() + b"\n\n"

    def chunk(self, usage_null: bool) -> bytes:
        return self.content_usage_null if usage_null else self.content

    def burst(self, n: int, usage_null: bool) -> bytes:
        body = self._bursts.get((n, usage_null))
        if body is None:
            body = self._bursts[n, usage_null] = self.chunk(usage_null) * n
        return body

    def usage(self, n: int) -> bytes:
        body = dict(self.usage_template)
        body["usage"] = {"prompt_tokens": 10, "completion_tokens": n, "total_tokens": 10 + n}
        return _chunked(b"data: " + json.dumps(body, separators=(",", ":")).encode() + b"\n\n")


class MockUpstream:
    def __init__(self, n_chunks: int = 100, chunk_bytes: int = 200, delay_ms: int = 0) -> None:
        self.defaults = {"n_chunks": n_chunks, "chunk_bytes": chunk_bytes, "delay_ms": delay_ms}
        self._frames: dict[int, Frames] = {}
        self.server: asyncio.Server | None = None

    def frames(self, chunk_bytes: int) -> Frames:
        frames = self._frames.get(chunk_bytes)
        if frames is None:
            frames = self._frames[chunk_bytes] = Frames(chunk_bytes)
        return frames

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> int:
        self.server = await asyncio.start_server(self._serve, host, port, backlog=4096)
        bound: int = self.server.sockets[0].getsockname()[1]
        return bound

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line[:15].lower() == b"content-length:":
                        length = int(line[15:])
                body = await reader.readexactly(length) if length else b""
                await self._respond(head.split(b"\r\n", 1)[0], body, writer)
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
            pass
        finally:
            writer.close()

    async def _respond(self, request_line: bytes, body: bytes, writer: asyncio.StreamWriter) -> None:
        knobs = dict(self.defaults)
        for name, pattern in _NUMBER.items():
            match = pattern.search(request_line) or pattern.search(body)
            if match:
                knobs[name] = int(match.group(1))
        frames = self.frames(knobs["chunk_bytes"])
        delay = knobs["delay_ms"] / 1000
        # The stream's end: the usage chunk when the request asked for it, then [DONE], written together (an
        # API sends them back to back), so a metered run reads no more often than an unmetered one.
        end = frames.done
        asked = b'"include_usage":true' in body.replace(b" ", b"")
        if asked:
            end = frames.usage(knobs["n_chunks"]) + end
        if not delay:
            # A burst: every frame at once, in one write (still one HTTP chunk per frame on the wire).
            writer.write(_HEAD + frames.burst(knobs["n_chunks"], asked) + end)
        else:
            content = frames.chunk(asked)
            writer.write(_HEAD)
            for _ in range(knobs["n_chunks"]):
                await asyncio.sleep(delay)
                writer.write(content)
                if writer.transport.get_write_buffer_size() > HIGH_WATER_BYTES:
                    await writer.drain()
            writer.write(end)
        await writer.drain()


async def _main(args: argparse.Namespace) -> None:
    mock = MockUpstream(args.chunks, args.chunk_bytes, args.delay_ms)
    port = await mock.start(port=args.port)
    print(f"mock upstream on 127.0.0.1:{port}", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=9001)
    parser.add_argument("--chunks", type=int, default=100)
    parser.add_argument("--chunk-bytes", type=int, default=200)
    parser.add_argument("--delay-ms", type=int, default=0)
    try:
        asyncio.run(_main(parser.parse_args()))
    except KeyboardInterrupt:
        pass
