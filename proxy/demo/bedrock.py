"""The demo in Bedrock Runtime's dialect: POST /model/{modelId}/{operation}.

Operations: converse, converse-stream, invoke, invoke-with-response-stream, count-tokens. The SDKs percent-encode
the modelId segment (an ARN's ':' and '/'), so the path is split on '/' first and the segment decoded after.

Streams are AWS event streams (`application/vnd.amazon.eventstream`), one `event` message per member of the
operation's stream union:
- converse-stream: messageStart, one contentBlockDelta per word, contentBlockStop, messageStop, then metadata
  with usage and metrics (no contentBlockStart for text, as in fixtures/bedrock);
- invoke-with-response-stream: `chunk` events, each payload {"bytes": base64(one Anthropic Messages event)}; the
  last (message_stop) also carries "amazon-bedrock-invocationMetrics".
Event payloads have sorted keys and a "p" padding field, as the captures do (Bedrock pads events so their sizes
do not give the text away); clients ignore it.

invoke speaks a model family's native body. The demo knows Anthropic's: an `anthropic.*` model id (inference
profiles and ARNs included) or any body with "messages"; other families get a ValidationException.
"""

from __future__ import annotations

import base64
import re
import string
import time
import uuid
import zlib
from typing import Any
from urllib.parse import unquote

import msgspec

from proxy.demo import anthropic
from proxy.demo.answer import Answer, BadRequest, Voice, encode, json_object, new_id, output_limit, prompt_tokens
from proxy.demo.server import Reply, Request
from proxy.parsers.eventstream import event_frame

_encode_sorted = msgspec.json.Encoder(order="sorted").encode
_PADDING = string.ascii_letters + string.digits
_OPERATIONS = ("converse", "converse-stream", "invoke", "invoke-with-response-stream", "count-tokens")
_EVENT_STREAM = b"application/vnd.amazon.eventstream"
_CLAUDE_NAME = re.compile(r"(?:.*/)?(?:[a-z]+\.)?(?:anthropic\.)?(?P<name>.+?)(?:-v\d+(?::\d+)?)?$")


def _padded(body: dict[str, Any]) -> bytes:
    size = 16 + zlib.crc32(encode(body)) % (len(_PADDING) - 16)
    return _encode_sorted({**body, "p": _PADDING[:size]})


def _ms_since(started: float) -> int:
    return round((time.monotonic() - started) * 1000)


def _route(path: str) -> tuple[str, str]:
    parts = path.split("/")
    if len(parts) != 4 or parts[1] != "model" or not parts[2] or parts[3] not in _OPERATIONS:
        raise BadRequest(f"unknown operation {path}", 404)
    return unquote(parts[2]), parts[3]


def _converse_prompt(payload: dict[str, Any]) -> dict[str, Any]:
    return {key: payload[key] for key in ("system", "messages", "toolConfig") if key in payload}


def _count_tokens_prompt(payload: dict[str, Any]) -> dict[str, Any]:
    """count-tokens wraps a Converse request or an InvokeModel body; the figure matches what either reports."""
    wrapped = payload.get("input")
    if isinstance(wrapped, dict) and isinstance(wrapped.get("converse"), dict):
        return _converse_prompt(wrapped["converse"])
    if isinstance(wrapped, dict) and isinstance(wrapped.get("invokeModel"), dict):
        body = wrapped["invokeModel"].get("body")
        return anthropic.prompt_of(json_object(body.encode() if isinstance(body, str) else b""))
    raise BadRequest("input: must hold converse or invokeModel")


def _claude_name(model_id: str) -> str:
    """`us.anthropic.claude-3-5-haiku-20241022-v1:0` -> `claude-3-5-haiku-20241022`, as Bedrock reports it."""
    match = _CLAUDE_NAME.match(model_id)
    return match["name"] if match else model_id


def _usage(answer: Answer) -> dict[str, int]:
    prompt, out = answer.prompt_tokens, answer.output_tokens
    return {"inputTokens": prompt, "outputTokens": out, "totalTokens": prompt + out}


def _stop_reason(answer: Answer) -> str:
    return "max_tokens" if answer.cut else "end_turn"


class BedrockDemo:
    def __init__(self, voice: Voice) -> None:
        self._voice = voice

    async def handle(self, request: Request, reply: Reply) -> None:
        started = time.monotonic()
        request_id = [(b"x-amzn-requestid", str(uuid.uuid4()).encode())]
        try:
            if request.method != "POST":
                raise BadRequest(f"unknown operation {request.method} {request.path}", 404)
            model_id, operation = _route(request.path)
            payload = json_object(request.body)
            if operation == "count-tokens":
                body = encode({"inputTokens": prompt_tokens(_count_tokens_prompt(payload))})
                await reply.send_json(200, body, request_id)
                return
            answer = self._answer(model_id, operation, payload)
        except BadRequest as exc:
            kind = "UnknownOperationException" if exc.status == 404 else "ValidationException"
            headers = [(b"x-amzn-errortype", f"{kind}:http://internal.amazon.com/coral/com.amazon.bedrock/".encode())]
            await reply.send_json(exc.status, encode({"message": exc.message}), headers + request_id)
            return
        if operation == "converse":
            await self._converse(reply, answer, started, request_id)
        elif operation == "converse-stream":
            await self._converse_stream(reply, answer, started, request_id)
        elif operation == "invoke":
            await self._invoke(reply, answer, _claude_name(model_id), started, request_id)
        else:
            await self._invoke_stream(reply, answer, _claude_name(model_id), started, request_id)

    def _answer(self, model_id: str, operation: str, payload: dict[str, Any]) -> Answer:
        if operation.startswith("converse"):
            config = payload.get("inferenceConfig")
            limit = output_limit(config.get("maxTokens") if isinstance(config, dict) else None, "maxTokens")
            return self._voice.answer(_converse_prompt(payload), limit)
        if "anthropic." not in model_id and "messages" not in payload:
            raise BadRequest(f"the demo speaks only Anthropic's native body on invoke, not {model_id}'s; use Converse")
        if "max_tokens" not in payload:
            raise BadRequest(
                "Malformed input request: #: required key [max_tokens] not found, please reformat your input"
            )
        return self._voice.answer(anthropic.prompt_of(payload), output_limit(payload["max_tokens"], "max_tokens"))

    async def _converse(self, reply: Reply, answer: Answer, started: float, headers: list[tuple[bytes, bytes]]) -> None:
        await self._voice.whole(answer)
        body = {
            "metrics": {"latencyMs": _ms_since(started)},
            "output": {"message": {"content": [{"text": answer.text}], "role": "assistant"}},
            "stopReason": _stop_reason(answer),
            "usage": _usage(answer),
        }
        await reply.send_json(200, _encode_sorted(body), headers)

    async def _invoke(
        self, reply: Reply, answer: Answer, model: str, started: float, headers: list[tuple[bytes, bytes]]
    ) -> None:
        await self._voice.whole(answer)
        body = encode(anthropic.message(new_id("msg_bdrk_"), model, answer))
        counts = [
            (b"x-amzn-bedrock-input-token-count", str(answer.prompt_tokens).encode()),
            (b"x-amzn-bedrock-output-token-count", str(answer.output_tokens).encode()),
            (b"x-amzn-bedrock-invocation-latency", str(_ms_since(started)).encode()),
        ]
        await reply.send_json(200, body, counts + headers)

    async def _converse_stream(
        self, reply: Reply, answer: Answer, started: float, headers: list[tuple[bytes, bytes]]
    ) -> None:
        await self._voice.first_token()
        await reply.start(200, [(b"content-type", _EVENT_STREAM), *headers])
        await reply.write(event_frame("messageStart", _padded({"role": "assistant"})))
        async for word in self._voice.paced(answer):
            delta = {"contentBlockIndex": 0, "delta": {"text": word}}
            await reply.write(event_frame("contentBlockDelta", _padded(delta)))
        await reply.write(event_frame("contentBlockStop", _padded({"contentBlockIndex": 0})))
        await reply.write(event_frame("messageStop", _padded({"stopReason": _stop_reason(answer)})))
        metadata = {"metrics": {"latencyMs": _ms_since(started)}, "usage": _usage(answer)}
        await reply.write(event_frame("metadata", _padded(metadata)))
        await reply.end()

    async def _invoke_stream(
        self, reply: Reply, answer: Answer, model: str, started: float, headers: list[tuple[bytes, bytes]]
    ) -> None:
        await self._voice.first_token()
        head = [(b"content-type", _EVENT_STREAM), (b"x-amzn-bedrock-content-type", b"application/json")]
        await reply.start(200, head + headers)
        first_byte_ms: int | None = None
        async for event in anthropic.events(self._voice, answer, new_id("msg_bdrk_"), model, ping=False):
            if event["type"] == "message_stop":
                event["amazon-bedrock-invocationMetrics"] = {
                    "inputTokenCount": answer.prompt_tokens,
                    "outputTokenCount": answer.output_tokens,
                    "invocationLatency": _ms_since(started),
                    "firstByteLatency": first_byte_ms or 0,
                }
            chunk = {"bytes": base64.b64encode(encode(event)).decode()}
            await reply.write(event_frame("chunk", _padded(chunk)))
            if first_byte_ms is None:
                first_byte_ms = _ms_since(started)
        await reply.end()
