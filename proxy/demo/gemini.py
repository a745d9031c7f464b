"""The demo in Gemini's dialect: POST /v1beta/models/{model}:{method} (and /v1/models/...).

Methods: generateContent, streamGenerateContent, countTokens, embedContent, batchEmbedContents. The stream has
two framings, chosen by `alt`, as the real API does:
- `?alt=sse` (what the SDKs ask for): `data: {json}\\r\\n\\r\\n` per chunk, CRLF as in fixtures/gemini;
- otherwise one JSON array written element by element: `[{...}\\r\\n,\\r\\n{...}\\r\\n]`, each element
  pretty-printed, so a client (or meter) that joins the body parses one JSON value.
Every chunk carries usageMetadata with the running candidatesTokenCount (Gemini 2.5 reports usage live); the
last one also carries finishReason (STOP, or MAX_TOKENS at generationConfig.maxOutputTokens).

Google's JSON differs in form from the others': SSE chunks use `": "` and `,` as separators, whole responses
are indented by two spaces, and `<`, `>`, `&` are escaped. `_dumps` reproduces that.
"""

from __future__ import annotations

import json
import secrets
from typing import Any
from urllib.parse import unquote

from proxy.demo.answer import Answer, BadRequest, Voice, json_object, output_limit, prompt_tokens
from proxy.demo.server import Reply, Request

_EMBEDDING = [0.0125, -0.5, 0.25, 0.75]
_STATUS = {400: "INVALID_ARGUMENT", 404: "NOT_FOUND"}
_METHODS = ("generateContent", "streamGenerateContent", "countTokens", "embedContent", "batchEmbedContents")
_SSE_HEADERS = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]
_ARRAY_HEADERS = [(b"content-type", b"application/json; charset=UTF-8")]


def _dumps(value: object, pretty: bool = False) -> bytes:
    text = json.dumps(value, ensure_ascii=False, indent=2 if pretty else None, separators=(",", ": "))
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026").encode()


def _route(path: str) -> tuple[str, str]:
    """`/v1beta/models/gemini-2.0-flash:generateContent` -> ("gemini-2.0-flash", "generateContent")."""
    _, _, rest = path.lstrip("/").partition("/")
    resource, colon, method = rest.rpartition(":")
    if not colon or not resource.startswith("models/") or method not in _METHODS:
        raise BadRequest(f"unknown path {path}", 404)
    return unquote(resource.removeprefix("models/")), method


def prompt_of(payload: dict[str, Any]) -> dict[str, Any]:
    request = payload.get("generateContentRequest", payload)  # countTokens may wrap a whole request
    if not isinstance(request, dict):
        return {}
    return {key: request[key] for key in ("systemInstruction", "contents", "tools") if key in request}


def _usage(answer: Answer, candidates: int) -> dict[str, Any]:
    prompt = answer.prompt_tokens
    return {
        "promptTokenCount": prompt,
        "candidatesTokenCount": candidates,
        "totalTokenCount": prompt + candidates,
        "promptTokensDetails": [{"modality": "TEXT", "tokenCount": prompt}],
    }


def _response(answer: Answer, model: str, ident: str, text: str, candidates: int, last: bool) -> dict[str, Any]:
    candidate: dict[str, Any] = {"content": {"parts": [{"text": text}], "role": "model"}}
    if last:
        candidate["finishReason"] = "MAX_TOKENS" if answer.cut else "STOP"
    candidate["index"] = 0
    return {
        "candidates": [candidate],
        "usageMetadata": _usage(answer, candidates),
        "modelVersion": model,
        "responseId": ident,
    }


class GeminiDemo:
    def __init__(self, voice: Voice) -> None:
        self._voice = voice

    async def handle(self, request: Request, reply: Reply) -> None:
        try:
            if request.method != "POST":
                raise BadRequest(f"unknown path {request.method} {request.path}", 404)
            model, method = _route(request.path)
            payload = json_object(request.body)
            config = payload.get("generationConfig")
            limit = output_limit(config.get("maxOutputTokens") if isinstance(config, dict) else None, "maxOutputTokens")
        except BadRequest as exc:
            error = {"error": {"code": exc.status, "message": exc.message, "status": _STATUS[exc.status]}}
            await reply.send_json(exc.status, _dumps(error, pretty=True))
            return
        if method == "countTokens":
            prompt = prompt_tokens(prompt_of(payload))
            body = {"totalTokens": prompt, "promptTokensDetails": [{"modality": "TEXT", "tokenCount": prompt}]}
            await reply.send_json(200, _dumps(body, pretty=True))
        elif method == "embedContent":
            await reply.send_json(200, _dumps({"embedding": {"values": _EMBEDDING}}, pretty=True))
        elif method == "batchEmbedContents":
            requests = payload.get("requests")
            count = len(requests) if isinstance(requests, list) else 1
            await reply.send_json(200, _dumps({"embeddings": [{"values": _EMBEDDING}] * count}, pretty=True))
        elif method == "generateContent":
            answer = self._voice.answer(prompt_of(payload), limit)
            await self._voice.whole(answer)
            body = _response(answer, model, _response_id(), answer.text, answer.output_tokens, last=True)
            await reply.send_json(200, _dumps(body, pretty=True))
        else:
            sse = request.query.get("alt", [""])[0] == "sse"
            await self._stream(reply, self._voice.answer(prompt_of(payload), limit), model, sse)

    async def _stream(self, reply: Reply, answer: Answer, model: str, sse: bool) -> None:
        ident = _response_id()
        await self._voice.first_token()
        await reply.start(200, _SSE_HEADERS if sse else _ARRAY_HEADERS)
        sent = 0
        async for word in self._voice.paced(answer):
            sent += 1
            chunk = _response(answer, model, ident, word, sent, last=sent == answer.output_tokens)
            if sse:
                await reply.write(b"data: " + _dumps(chunk) + b"\r\n\r\n")
            else:
                await reply.write((b"[" if sent == 1 else b"\r\n,\r\n") + _dumps(chunk, pretty=True))
        if not sse:
            await reply.write(b"\r\n]")
        await reply.end()


def _response_id() -> str:
    return secrets.token_urlsafe(17)[:23]
