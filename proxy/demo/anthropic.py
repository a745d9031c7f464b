"""The demo in Anthropic's dialect: POST /v1/messages (streamed or not) and /v1/messages/count_tokens.

A stream is SSE, `event: <type>` + `data: <json>`, in the order the real API sends (see the captures in
fixtures/anthropic): message_start (usage with input and cache counts, output_tokens 1), content_block_start,
ping, one content_block_delta per word, content_block_stop, message_delta (the cumulative usage: a meter must
take its output_tokens, not add message_start's to it), message_stop.

`events` is shared with Bedrock's InvokeModelWithResponseStream, which carries these same events for
`anthropic.*` models, base64-wrapped in event-stream frames.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from proxy.demo.answer import Answer, BadRequest, Voice, encode, json_object, new_id, output_limit, prompt_tokens
from proxy.demo.server import Reply, Request

_SSE_HEADERS = [(b"content-type", b"text/event-stream; charset=utf-8"), (b"cache-control", b"no-cache")]
_PING = b'{"type": "ping"}'  # the real API spaces this one JSON object, unlike the others


def prompt_of(payload: dict[str, Any]) -> dict[str, Any]:
    """The parts of a Messages request that are input tokens."""
    return {key: payload[key] for key in ("system", "messages", "tools") if key in payload}


def usage(answer: Answer, output_tokens: int) -> dict[str, Any]:
    return {
        "input_tokens": answer.prompt_tokens,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 0,
        "output_tokens": output_tokens,
    }


def stop_reason(answer: Answer) -> str:
    return "max_tokens" if answer.cut else "end_turn"


def message(ident: str, model: str, answer: Answer) -> dict[str, Any]:
    """The whole Messages response."""
    return {
        "id": ident,
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [{"type": "text", "text": answer.text}],
        "stop_reason": stop_reason(answer),
        "stop_sequence": None,
        "usage": {**usage(answer, answer.output_tokens), "service_tier": "standard"},
    }


async def events(voice: Voice, answer: Answer, ident: str, model: str, ping: bool) -> AsyncIterator[dict[str, Any]]:
    """A Messages stream's events, paced."""
    start = {**message(ident, model, answer), "content": [], "stop_reason": None}
    start["usage"] = {**usage(answer, 1), "service_tier": "standard"}
    yield {"type": "message_start", "message": start}
    yield {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}
    if ping:
        yield {"type": "ping"}
    async for word in voice.paced(answer):
        yield {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": word}}
    yield {"type": "content_block_stop", "index": 0}
    yield {
        "type": "message_delta",
        "delta": {"stop_reason": stop_reason(answer), "stop_sequence": None},
        "usage": usage(answer, answer.output_tokens),
    }
    yield {"type": "message_stop"}


def _error(status: int, message: str) -> bytes:
    kind = "not_found_error" if status == 404 else "invalid_request_error"
    return encode({"type": "error", "error": {"type": kind, "message": message}, "request_id": new_id("req_")})


class AnthropicDemo:
    def __init__(self, voice: Voice) -> None:
        self._voice = voice

    async def handle(self, request: Request, reply: Reply) -> None:
        try:
            if request.method != "POST" or request.path not in ("/v1/messages", "/v1/messages/count_tokens"):
                raise BadRequest(f"unknown path {request.method} {request.path}", 404)
            payload = json_object(request.body)
            if request.path == "/v1/messages/count_tokens":
                await reply.send_json(200, encode({"input_tokens": prompt_tokens(prompt_of(payload))}))
                return
            if "max_tokens" not in payload:
                raise BadRequest("max_tokens: Field required")
            if not isinstance(payload.get("messages"), list):
                raise BadRequest("messages: Field required")
            limit = output_limit(payload["max_tokens"], "max_tokens")
        except BadRequest as exc:
            await reply.send_json(exc.status, _error(exc.status, exc.message))
            return
        answer = self._voice.answer(prompt_of(payload), limit)
        model = str(payload.get("model", "claude-haiku-4-5"))
        ident = new_id("msg_demo")
        headers = [(b"request-id", new_id("req_").encode())]
        if payload.get("stream") is not True:
            await self._voice.whole(answer)
            await reply.send_json(200, encode(message(ident, model, answer)), headers)
            return
        await self._voice.first_token()
        await reply.start(200, _SSE_HEADERS + headers)
        async for event in events(self._voice, answer, ident, model, ping=True):
            kind = event["type"]
            data = _PING if kind == "ping" else encode(event)
            await reply.write(b"event: " + kind.encode() + b"\ndata: " + data + b"\n\n")
        await reply.end()
