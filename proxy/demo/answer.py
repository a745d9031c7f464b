"""What the demo says, how fast, and what it counts: one answer, told in every dialect.

Every dialect answers with the same words: `DEMO_TEXT` cut before each space, so the pieces join back into the
text, and each piece is one output token. The pace: `first_token_latency_s` before the response starts (a real
model's time to first token), then `1 / tokens_per_s` before each word. A client's output limit (`max_tokens`,
`maxOutputTokens`, `inferenceConfig.maxTokens`) cuts the answer to that many words, and the dialect reports its
own "stopped at the limit" reason.

The prompt's token count is a rough, deterministic stand-in for a tokenizer: one token per 4 bytes of the
prompt's JSON, at least 1. Each dialect reports these numbers in its provider's own usage fields, and its
count-tokens route gives the same figure for the same prompt.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import msgspec

DEMO_TEXT = (
    "Hello from teeproxy's demo upstream! Every byte of this stream passed through the proxy untouched, "
    "while a sidecar parser counted the tokens and priced them on the side. Set OPENAI_API_KEY and the same "
    "config reaches the real OpenAI API."
)

encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder().decode


class BadRequest(Exception):
    """A request the demo will not serve; each dialect renders it in its own error format."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


def json_object(body: bytes) -> dict[str, Any]:
    try:
        value = _decode(body)
    except msgspec.DecodeError:
        raise BadRequest("invalid JSON body") from None
    if not isinstance(value, dict):
        raise BadRequest("the request body must be a JSON object")
    return value


def output_limit(value: object, name: str) -> int | None:
    """A client's output-token limit: absent, or a positive integer (every provider rejects anything else)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise BadRequest(f"{name}: must be a positive integer")
    return value


def words(text: str) -> tuple[str, ...]:
    pieces = text.split(" ")
    return tuple(w if i == 0 else " " + w for i, w in enumerate(pieces))


def prompt_tokens(prompt: object) -> int:
    return max(1, len(encode(prompt)) // 4)


def new_id(prefix: str) -> str:
    """Unique per response, across worker processes too."""
    return prefix + secrets.token_hex(12)


@dataclass(frozen=True, slots=True)
class Answer:
    words: tuple[str, ...]
    prompt_tokens: int
    cut: bool  # stopped at the client's output limit, before the text's end

    @property
    def text(self) -> str:
        return "".join(self.words)

    @property
    def output_tokens(self) -> int:
        return len(self.words)


@dataclass(frozen=True, slots=True)
class Voice:
    """The demo's text and pace, shared by every dialect."""

    words: tuple[str, ...]
    first_token_latency_s: float
    per_token_s: float

    def answer(self, prompt: object, limit: int | None = None) -> Answer:
        if limit is not None and limit < len(self.words):
            return Answer(self.words[:limit], prompt_tokens(prompt), cut=True)
        return Answer(self.words, prompt_tokens(prompt), cut=False)

    async def first_token(self) -> None:
        """Before a response starts."""
        await asyncio.sleep(self.first_token_latency_s)

    async def whole(self, answer: Answer) -> None:
        """Before a non-streamed response: as long as its stream would have taken."""
        await asyncio.sleep(self.first_token_latency_s + self.per_token_s * answer.output_tokens)

    async def paced(self, answer: Answer) -> AsyncIterator[str]:
        """The answer's words, each after one token's time."""
        for word in answer.words:
            await asyncio.sleep(self.per_token_s)
            yield word
