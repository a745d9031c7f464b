"""The API dialects teeproxy speaks, one module each, side by side.

    openai.py     OpenAI and the OpenAI-compatible family (DeepSeek, xAI, Mistral, Groq, vLLM, ...)
    anthropic.py  Anthropic Messages
    gemini.py     Google Gemini (generateContent and friends)
    bedrock.py    AWS Bedrock runtime (Converse, InvokeModel; the binary event stream)

Each module has one object satisfying `proxy.providers.base.Dialect`: which paths it serves and where the
model is, where the client's key is, how the provider's credentials are attached, the request rewrite, the
stream and body meters (sans-I/O), the frame filter, and its errors before and after the first byte.
`proxy.forward` runs the same phases for every dialect and only ever asks the dialect.

Adding a dialect: write `proxy/providers/NAME.py` with `DIALECT = NameDialect()` implementing `Dialect`, add
it to `DIALECTS` below, and add NAME to `proxy.config.Dialect` so `[[providers]] dialect = "NAME"` is
accepted. Nothing in `forward.py` changes. Order in `DIALECTS` matters only where two dialects share a path
(`GET /v1/models`: Anthropic's answers when the request carries `anthropic-version`, Gemini's when it carries a
Google key, so both come before OpenAI's).
"""

from __future__ import annotations

from proxy.errors import NotFound, ProxyError
from proxy.providers import anthropic, bedrock, gemini, openai
from proxy.providers.base import Dialect, Incoming, Route

DIALECTS: dict[str, Dialect] = {
    anthropic.DIALECT.name: anthropic.DIALECT,
    gemini.DIALECT.name: gemini.DIALECT,
    bedrock.DIALECT.name: bedrock.DIALECT,
    openai.DIALECT.name: openai.DIALECT,
}
# The dialect whose error format answers requests no dialect recognizes.
DEFAULT: Dialect = openai.DIALECT


def recognize(incoming: Incoming) -> tuple[Dialect, Route | ProxyError]:
    """The dialect a request speaks and its route; or the error to answer with (in that dialect's format) once
    the client's key has been checked, so an unauthenticated caller learns nothing about the paths."""
    for dialect in DIALECTS.values():
        try:
            route = dialect.match(incoming)
        except ProxyError as exc:
            return dialect, exc
        if route is not None:
            return dialect, route
    return DEFAULT, NotFound(f"Unknown request URL: {incoming.method} {incoming.path}. Please check the URL for typos.")
