"""The built-in demo upstream: every provider dialect teeproxy speaks, on loopback, for a newcomer with no keys.

`make run` with no provider key in the environment starts it beside the proxy and routes every model to it:
the OpenAI dialect at `server.base_url` (root + "/v1"), Anthropic, Gemini and Bedrock at `server.root_url`.
Each answers in its provider's own wire format (checked against the real SDKs and the captures in
fixtures/), streaming word by word at a realistic pace, with that provider's usage fields, so every SDK's
README example runs unchanged against the proxy.

    server.py     H11Server, Reply, Request: the small HTTP/1.1 server (the tests' replay upstream uses it too)
    answer.py     the text, its pace, the token counts: what every dialect says
    openai.py     /v1/chat/completions, /v1/completions, /v1/responses, /v1/embeddings, /v1/models
    anthropic.py  /v1/messages, /v1/messages/count_tokens
    gemini.py     /v1beta/models/{model}:{method} (and /v1/models/...)
    bedrock.py    /model/{modelId}/{converse,converse-stream,invoke,invoke-with-response-stream,count-tokens}

The paths do not overlap, so `DemoUpstream` dispatches on the path alone; anything unclaimed goes to the OpenAI
dialect, which answers an unknown path with its own 404.
"""

from __future__ import annotations

from proxy.demo.answer import DEMO_TEXT, Voice, words
from proxy.demo.anthropic import AnthropicDemo
from proxy.demo.bedrock import BedrockDemo
from proxy.demo.gemini import GeminiDemo
from proxy.demo.openai import OpenAIDemo
from proxy.demo.server import H11Server, Reply, Request

__all__ = ["DEMO_TEXT", "DemoUpstream", "H11Server", "Reply", "Request"]

FIRST_TOKEN_LATENCY_S = 0.03  # a fast hosted model's time to first token, roughly


class DemoUpstream:
    """Serves every dialect at `tokens_per_s`, the first token after `first_token_latency_s`."""

    def __init__(
        self, tokens_per_s: float = 40.0, text: str = DEMO_TEXT, first_token_latency_s: float = FIRST_TOKEN_LATENCY_S
    ) -> None:
        voice = Voice(
            words=words(text),
            first_token_latency_s=max(0.0, first_token_latency_s),
            per_token_s=1.0 / tokens_per_s if tokens_per_s > 0 else 0.0,
        )
        self._openai = OpenAIDemo(voice)
        self._anthropic = AnthropicDemo(voice)
        self._gemini = GeminiDemo(voice)
        self._bedrock = BedrockDemo(voice)
        self.server = H11Server(self.handle)

    async def handle(self, request: Request, reply: Reply) -> None:
        path = request.path
        if path.startswith("/model/"):
            await self._bedrock.handle(request, reply)
        elif path.startswith(("/v1beta/", "/v1alpha/")) or (path.startswith("/v1/models/") and ":" in path):
            await self._gemini.handle(request, reply)
        elif path == "/v1/messages" or path.startswith("/v1/messages/"):
            await self._anthropic.handle(request, reply)
        else:
            await self._openai.handle(request, reply)
