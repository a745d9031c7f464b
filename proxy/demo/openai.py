"""The demo in OpenAI's dialect: /v1/chat/completions, /v1/completions, /v1/responses, /v1/embeddings, /v1/models.

Streams are SSE (`data: {json}\\n\\n`, ending `data: [DONE]` for chat and completions; `event:` + `data:` for
the Responses API). A usage chunk comes only when `stream_options.include_usage` is set, exactly as OpenAI
does; it is the chunk a metering proxy asks for.
"""

from __future__ import annotations

import itertools
import time
from typing import Any

from proxy.demo.answer import Answer, BadRequest, Voice, encode, json_object, output_limit
from proxy.demo.server import Reply, Request

_SSE_HEADERS = [(b"content-type", b"text/event-stream; charset=utf-8"), (b"cache-control", b"no-cache")]


def _error(message: str) -> bytes:
    return encode({"error": {"message": message, "type": "invalid_request_error", "param": None, "code": None}})


def _choices(payload: dict[str, Any]) -> int:
    """`n`: how many choices (1 to 8 here; OpenAI allows up to 128)."""
    n = payload.get("n", 1)
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= 8:
        raise BadRequest("n: must be an integer from 1 to 8 (the demo's limit)")
    return n


def _forced_tool(payload: dict[str, Any]) -> str | None:
    """The function a request forces (`tool_choice` "required", or naming one); None when the model may answer
    in text, which the demo then does."""
    tools = payload.get("tools")
    if not isinstance(tools, list) or not tools:
        return None
    choice = payload.get("tool_choice", "auto")
    if isinstance(choice, dict):
        name = (choice.get("function") or {}).get("name")
        return str(name) if name else None
    if choice == "required":
        first = tools[0] if isinstance(tools[0], dict) else {}
        return str((first.get("function") or {}).get("name") or "tool")
    return None


def _usage(answer: Answer, n: int = 1, tool_call: bool = False) -> dict[str, Any]:
    prompt = answer.prompt_tokens
    completion = (5 if tool_call else answer.output_tokens) * n
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0},
    }


class OpenAIDemo:
    def __init__(self, voice: Voice) -> None:
        self._voice = voice
        self._ids = itertools.count(1)

    async def handle(self, request: Request, reply: Reply) -> None:
        if request.method == "GET" and request.path == "/v1/models":
            body = encode({"object": "list", "data": [{"id": "gpt-4o-mini", "object": "model", "owned_by": "demo"}]})
            await reply.send_json(200, body)
            return
        try:
            payload = json_object(request.body)
        except BadRequest as exc:
            await reply.send_json(exc.status, _error(exc.message))
            return
        kind = request.path.removeprefix("/v1/")
        model = str(payload.get("model", "gpt-4o-mini"))
        stream = payload.get("stream") is True
        prompt = payload.get("messages") or payload.get("prompt") or payload.get("input") or ""
        try:
            limit = output_limit(
                payload.get("max_completion_tokens", payload.get("max_tokens", payload.get("max_output_tokens"))),
                "max_tokens",
            )
            _choices(payload)
        except BadRequest as exc:
            await reply.send_json(exc.status, _error(exc.message))
            return
        answer = self._voice.answer(prompt, limit)
        if kind == "embeddings":
            await self._embeddings(reply, model, payload, answer)
        elif kind == "responses":
            await (self._responses_stream if stream else self._responses_json)(reply, model, answer)
        elif kind in ("chat/completions", "completions"):
            chat = kind == "chat/completions"
            if stream:
                await self._chat_stream(reply, model, payload, answer, chat)
            else:
                await self._chat_json(reply, model, payload, answer, chat)
        else:
            await reply.send_json(404, _error(f"unknown path {request.path}"))

    async def _chat_stream(self, reply: Reply, model: str, payload: dict[str, Any], answer: Answer, chat: bool) -> None:
        ident = f"chatcmpl-demo{next(self._ids)}" if chat else f"cmpl-demo{next(self._ids)}"
        created = int(time.time())
        obj = "chat.completion.chunk" if chat else "text_completion"
        n = _choices(payload)
        tool = _forced_tool(payload) if chat else None
        await self._voice.first_token()
        await reply.start(200, _SSE_HEADERS)

        def chunk(choices: list[dict[str, Any]], usage: dict[str, Any] | None = None) -> bytes:
            body: dict[str, Any] = {"id": ident, "object": obj, "created": created, "model": model, "choices": choices}
            if usage is not None:
                body["usage"] = usage
            return b"data: " + encode(body) + b"\n\n"

        finish = "length" if answer.cut else "stop"
        if tool is not None:  # the request forced a tool: one call to it per choice, arguments `{}`
            for i in range(n):
                call: dict[str, Any] = {"index": 0, "id": f"call_demo{next(self._ids)}", "type": "function"}
                call["function"] = {"name": tool, "arguments": ""}
                delta = {"role": "assistant", "content": None, "tool_calls": [call]}
                await reply.write(chunk([{"index": i, "delta": delta, "finish_reason": None}]))
                args = {"tool_calls": [{"index": 0, "function": {"arguments": "{}"}}]}
                await reply.write(chunk([{"index": i, "delta": args, "finish_reason": None}]))
            finish = "tool_calls"
        else:
            if chat:
                for i in range(n):
                    delta = {"role": "assistant", "content": ""}
                    await reply.write(chunk([{"index": i, "delta": delta, "finish_reason": None}]))
            async for word in self._voice.paced(answer):
                for i in range(n):  # n choices interleave, one per chunk, as OpenAI sends them
                    if chat:
                        choice: dict[str, Any] = {"index": i, "delta": {"content": word}, "finish_reason": None}
                    else:
                        choice = {"index": i, "text": word, "finish_reason": None}
                    await reply.write(chunk([choice]))
        for i in range(n):
            final: dict[str, Any] = {"index": i, "finish_reason": finish}
            if chat:
                final["delta"] = {}
            else:
                final["text"] = ""
            await reply.write(chunk([final]))
        options = payload.get("stream_options")
        if isinstance(options, dict) and options.get("include_usage") is True:
            await reply.write(chunk([], _usage(answer, n, tool is not None)))
        await reply.write(b"data: [DONE]\n\n")
        await reply.end()

    async def _chat_json(self, reply: Reply, model: str, payload: dict[str, Any], answer: Answer, chat: bool) -> None:
        n = _choices(payload)
        tool = _forced_tool(payload) if chat else None
        choices = []
        for i in range(n):
            choice: dict[str, Any] = {"index": i, "finish_reason": "length" if answer.cut else "stop"}
            if tool is not None:
                call: dict[str, Any] = {"id": f"call_demo{next(self._ids)}", "type": "function"}
                call["function"] = {"name": tool, "arguments": "{}"}
                choice["message"] = {"role": "assistant", "content": None, "tool_calls": [call]}
                choice["finish_reason"] = "tool_calls"
            elif chat:
                choice["message"] = {"role": "assistant", "content": answer.text}
            else:
                choice["text"] = answer.text
            choices.append(choice)
        body = {
            "id": f"chatcmpl-demo{next(self._ids)}",
            "object": "chat.completion" if chat else "text_completion",
            "created": int(time.time()),
            "model": model,
            "choices": choices,
            "usage": _usage(answer, n, tool is not None),
        }
        if tool is None:
            await self._voice.whole(answer)
        await reply.send_json(200, encode(body))

    @staticmethod
    def _response_object(ident: str, model: str, answer: Answer, done: bool) -> dict[str, Any]:
        prompt, out = answer.prompt_tokens, answer.output_tokens
        message = {
            "type": "message",
            "id": ident.replace("resp_", "msg_", 1),
            "status": "completed",
            "role": "assistant",
            "content": [{"type": "output_text", "text": answer.text, "annotations": []}],
        }
        usage = {
            "input_tokens": prompt,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": out,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": prompt + out,
        }
        return {
            "id": ident,
            "object": "response",
            "created_at": int(time.time()),
            "status": "completed" if done else "in_progress",
            "model": model,
            "output": [message] if done else [],
            "usage": usage if done else None,
        }

    async def _responses_stream(self, reply: Reply, model: str, answer: Answer) -> None:
        ident = f"resp_demo{next(self._ids)}"
        await self._voice.first_token()
        await reply.start(200, _SSE_HEADERS)
        seq = itertools.count()

        async def event(kind: str, body: dict[str, Any]) -> None:
            body = {"type": kind, "sequence_number": next(seq), **body}
            await reply.write(b"event: " + kind.encode() + b"\ndata: " + encode(body) + b"\n\n")

        # The whole event sequence OpenAI sends, which the SDKs' `responses.stream()` helpers rely on.
        await event("response.created", {"response": self._response_object(ident, model, answer, False)})
        await event("response.in_progress", {"response": self._response_object(ident, model, answer, False)})
        item_id = ident.replace("resp_", "msg_", 1)
        item = {"type": "message", "id": item_id, "status": "in_progress", "role": "assistant", "content": []}
        where = {"item_id": item_id, "output_index": 0, "content_index": 0}
        await event("response.output_item.added", {"output_index": 0, "item": item})
        empty = {"type": "output_text", "text": "", "annotations": []}
        await event("response.content_part.added", {**where, "part": empty})
        async for word in self._voice.paced(answer):
            await event("response.output_text.delta", {**where, "delta": word, "logprobs": []})
        await event("response.output_text.done", {**where, "text": answer.text, "logprobs": []})
        part = {"type": "output_text", "text": answer.text, "annotations": []}
        await event("response.content_part.done", {**where, "part": part})
        done_item = {**item, "status": "completed", "content": [part]}
        await event("response.output_item.done", {"output_index": 0, "item": done_item})
        await event("response.completed", {"response": self._response_object(ident, model, answer, True)})
        await reply.end()

    async def _responses_json(self, reply: Reply, model: str, answer: Answer) -> None:
        await self._voice.whole(answer)
        await reply.send_json(200, encode(self._response_object(f"resp_demo{next(self._ids)}", model, answer, True)))

    async def _embeddings(self, reply: Reply, model: str, payload: dict[str, Any], answer: Answer) -> None:
        inputs = payload.get("input")
        items = inputs if isinstance(inputs, list) else [inputs]
        data = [{"object": "embedding", "index": i, "embedding": [0.0125, -0.5, 0.25, 0.75]} for i in range(len(items))]
        body = {
            "object": "list",
            "data": data,
            "model": model,
            "usage": {"prompt_tokens": answer.prompt_tokens, "total_tokens": answer.prompt_tokens},
        }
        await reply.send_json(200, encode(body))
