"""The built-in demo upstream: an OpenAI-format provider on loopback, for a newcomer with no keys.

`make run` with no provider key in the environment starts it beside the proxy and routes every model to it.
It answers /v1/chat/completions, /v1/completions, /v1/responses and /v1/embeddings in OpenAI's wire format,
streaming word by word at a realistic token pace, with a usage chunk when `stream_options.include_usage` is
set, exactly as OpenAI does.

`H11Server` is the small HTTP/1.1 server under it (asyncio streams + h11); the test suite's replay upstream
uses it too, because it gives exact control over the bytes and their timing on the wire.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import h11
import msgspec

READ_SIZE = 65536


@dataclass(slots=True)
class Request:
    method: str
    target: str
    headers: list[tuple[bytes, bytes]]
    body: bytes

    @property
    def path(self) -> str:
        return self.target.split("?", 1)[0]

    def header(self, name: bytes) -> bytes | None:
        for key, value in self.headers:
            if key == name:
                return value
        return None


class Reply:
    """Writes one response on an h11 connection; every `write` reaches the socket before it returns."""

    def __init__(self, conn: h11.Connection, writer: asyncio.StreamWriter) -> None:
        self._conn = conn
        self._writer = writer

    async def _emit(self, event: Any) -> None:
        data = self._conn.send(event)
        if data:
            self._writer.write(data)
            await self._writer.drain()

    async def start(self, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        await self._emit(h11.Response(status_code=status, headers=headers))

    async def write(self, data: bytes) -> None:
        if data:
            await self._emit(h11.Data(data=data))

    async def end(self) -> None:
        await self._emit(h11.EndOfMessage())

    async def send_json(self, status: int, body: bytes) -> None:
        await self.start(status, [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())])
        await self.write(body)
        await self.end()


Handler = Callable[[Request, Reply], Awaitable[None]]


class H11Server:
    """A minimal keep-alive HTTP/1.1 server on 127.0.0.1 that hands each request to `handler`."""

    def __init__(self, handler: Handler, host: str = "127.0.0.1", port: int = 0) -> None:
        self._handler = handler
        self._host = host
        self._port = port
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.StreamWriter] = set()

    @property
    def port(self) -> int:
        assert self._server is not None
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    @property
    def base_url(self) -> str:
        return f"http://{self._host}:{self.port}/v1"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, self._host, self._port)

    async def aclose(self) -> None:
        if self._server is not None:
            self._server.close()
            for writer in list(self._connections):
                writer.close()
            await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = h11.Connection(h11.SERVER)
        self._connections.add(writer)
        try:
            while True:
                request = await self._read_request(conn, reader)
                if request is None:
                    return
                await self._handler(request, Reply(conn, writer))
                if conn.our_state is h11.MUST_CLOSE or conn.their_state is h11.MUST_CLOSE:
                    return
                conn.start_next_cycle()
        except (ConnectionError, h11.ProtocolError, asyncio.IncompleteReadError):
            return
        except asyncio.CancelledError:  # the server is shutting down mid-response
            return
        finally:
            self._connections.discard(writer)
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    @staticmethod
    async def _read_request(conn: h11.Connection, reader: asyncio.StreamReader) -> Request | None:
        head: h11.Request | None = None
        body: list[bytes] = []
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                data = await reader.read(READ_SIZE)
                conn.receive_data(data)
                continue
            if isinstance(event, h11.Request):
                head = event
            elif isinstance(event, h11.Data):
                body.append(bytes(event.data))
            elif isinstance(event, h11.EndOfMessage):
                assert head is not None
                return Request(
                    method=head.method.decode(),
                    target=head.target.decode(),
                    headers=[(k.lower(), v) for k, v in head.headers],
                    body=b"".join(body),
                )
            elif isinstance(event, h11.ConnectionClosed) or event is h11.PAUSED:
                return None


# --- the demo provider -----------------------------------------------------------------------------------

DEMO_TEXT = (
    "Hello from teeproxy's demo upstream! Every byte of this stream passed through the proxy untouched, "
    "while a sidecar parser counted the tokens and priced them on the side. Set OPENAI_API_KEY and the same "
    "config reaches the real OpenAI API."
)
_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder().decode
_SSE_HEADERS = [(b"content-type", b"text/event-stream; charset=utf-8"), (b"cache-control", b"no-cache")]


def _words(text: str) -> list[str]:
    words = text.split(" ")
    return [w if i == 0 else " " + w for i, w in enumerate(words)]


def _prompt_tokens(request: dict[str, Any]) -> int:
    # A rough, deterministic stand-in for a tokenizer: one token per 4 bytes of prompt.
    prompt = request.get("messages") or request.get("prompt") or request.get("input") or ""
    return max(1, len(_encode(prompt)) // 4)


class DemoUpstream:
    """Streams OpenAI-format responses at `tokens_per_s`."""

    def __init__(self, tokens_per_s: float = 40.0, text: str = DEMO_TEXT) -> None:
        self._delay_s = 1.0 / tokens_per_s if tokens_per_s > 0 else 0.0
        self._words = _words(text)
        self._ids = itertools.count(1)
        self.server = H11Server(self.handle)

    async def handle(self, request: Request, reply: Reply) -> None:
        if request.method == "GET" and request.path == "/v1/models":
            body = _encode({"object": "list", "data": [{"id": "gpt-4o-mini", "object": "model", "owned_by": "demo"}]})
            await reply.send_json(200, body)
            return
        try:
            payload = _decode(request.body)
            assert isinstance(payload, dict)
        except (msgspec.DecodeError, AssertionError):
            err = {
                "error": {"message": "invalid JSON body", "type": "invalid_request_error", "param": None, "code": None}
            }
            await reply.send_json(400, _encode(err))
            return
        kind = request.path.removeprefix("/v1/")
        model = str(payload.get("model", "gpt-4o-mini"))
        stream = payload.get("stream") is True
        if kind == "embeddings":
            await self._embeddings(reply, model, payload)
        elif kind == "responses":
            await (
                self._responses_stream(reply, model, payload) if stream else self._responses_json(reply, model, payload)
            )
        elif kind in ("chat/completions", "completions"):
            chat = kind == "chat/completions"
            if stream:
                await self._chat_stream(reply, model, payload, chat)
            else:
                await self._chat_json(reply, model, payload, chat)
        else:
            err = {
                "error": {
                    "message": f"unknown path {request.path}",
                    "type": "invalid_request_error",
                    "param": None,
                    "code": None,
                }
            }
            await reply.send_json(404, _encode(err))

    def _usage(self, payload: dict[str, Any], completion: int) -> dict[str, Any]:
        prompt = _prompt_tokens(payload)
        return {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0},
        }

    async def _chat_stream(self, reply: Reply, model: str, payload: dict[str, Any], chat: bool) -> None:
        ident = f"chatcmpl-demo{next(self._ids)}" if chat else f"cmpl-demo{next(self._ids)}"
        created = int(time.time())
        obj = "chat.completion.chunk" if chat else "text_completion"
        await reply.start(200, _SSE_HEADERS)

        def chunk(choices: list[dict[str, Any]], usage: dict[str, Any] | None = None) -> bytes:
            body: dict[str, Any] = {"id": ident, "object": obj, "created": created, "model": model, "choices": choices}
            if usage is not None:
                body["usage"] = usage
            return b"data: " + _encode(body) + b"\n\n"

        if chat:
            await reply.write(
                chunk([{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}])
            )
        for word in self._words:
            await asyncio.sleep(self._delay_s)
            if chat:
                choice: dict[str, Any] = {"index": 0, "delta": {"content": word}, "finish_reason": None}
            else:
                choice = {"index": 0, "text": word, "finish_reason": None}
            await reply.write(chunk([choice]))
        final: dict[str, Any] = {"index": 0, "finish_reason": "stop"}
        if chat:
            final["delta"] = {}
        else:
            final["text"] = ""
        await reply.write(chunk([final]))
        options = payload.get("stream_options")
        if isinstance(options, dict) and options.get("include_usage") is True:
            await reply.write(chunk([], self._usage(payload, len(self._words))))
        await reply.write(b"data: [DONE]\n\n")
        await reply.end()

    async def _chat_json(self, reply: Reply, model: str, payload: dict[str, Any], chat: bool) -> None:
        text = "".join(self._words)
        choice: dict[str, Any] = {"index": 0, "finish_reason": "stop"}
        if chat:
            choice["message"] = {"role": "assistant", "content": text}
        else:
            choice["text"] = text
        body = {
            "id": f"chatcmpl-demo{next(self._ids)}",
            "object": "chat.completion" if chat else "text_completion",
            "created": int(time.time()),
            "model": model,
            "choices": [choice],
            "usage": self._usage(payload, len(self._words)),
        }
        await asyncio.sleep(self._delay_s * len(self._words))
        await reply.send_json(200, _encode(body))

    def _response_object(self, model: str, payload: dict[str, Any], status: str, done: bool) -> dict[str, Any]:
        text = "".join(self._words)
        prompt = _prompt_tokens(payload)
        out = len(self._words)
        return {
            "id": "resp_demo",
            "object": "response",
            "created_at": int(time.time()),
            "status": status,
            "model": model,
            "output": [
                {
                    "type": "message",
                    "id": "msg_demo",
                    "status": "completed",
                    "role": "assistant",
                    "content": [{"type": "output_text", "text": text, "annotations": []}],
                }
            ]
            if done
            else [],
            "usage": {
                "input_tokens": prompt,
                "input_tokens_details": {"cached_tokens": 0},
                "output_tokens": out,
                "output_tokens_details": {"reasoning_tokens": 0},
                "total_tokens": prompt + out,
            }
            if done
            else None,
        }

    async def _responses_stream(self, reply: Reply, model: str, payload: dict[str, Any]) -> None:
        await reply.start(200, _SSE_HEADERS)
        seq = itertools.count()

        async def event(kind: str, body: dict[str, Any]) -> None:
            body = {"type": kind, "sequence_number": next(seq), **body}
            await reply.write(b"event: " + kind.encode() + b"\ndata: " + _encode(body) + b"\n\n")

        await event("response.created", {"response": self._response_object(model, payload, "in_progress", False)})
        for word in self._words:
            await asyncio.sleep(self._delay_s)
            await event(
                "response.output_text.delta",
                {"item_id": "msg_demo", "output_index": 0, "content_index": 0, "delta": word},
            )
        await event("response.completed", {"response": self._response_object(model, payload, "completed", True)})
        await reply.end()

    async def _responses_json(self, reply: Reply, model: str, payload: dict[str, Any]) -> None:
        await asyncio.sleep(self._delay_s * len(self._words))
        await reply.send_json(200, _encode(self._response_object(model, payload, "completed", True)))

    async def _embeddings(self, reply: Reply, model: str, payload: dict[str, Any]) -> None:
        inputs = payload.get("input")
        items = inputs if isinstance(inputs, list) else [inputs]
        data = [{"object": "embedding", "index": i, "embedding": [0.0125, -0.5, 0.25, 0.75]} for i in range(len(items))]
        prompt = _prompt_tokens(payload)
        body = {
            "object": "list",
            "data": data,
            "model": model,
            "usage": {"prompt_tokens": prompt, "total_tokens": prompt},
        }
        await reply.send_json(200, _encode(body))
