"""The Google Gemini dialect (Gemini API, generativelanguage.googleapis.com): routes, keys, usage, errors.

Theory of operation
-------------------
Routes are `POST /{v1beta,v1}/models/{model}:{method}` (https://ai.google.dev/api); `Route.kind` is the method
name, except that `streamGenerateContent` has one kind per framing, which the query decides (the last `alt`
counts): with `alt=sse`, what google-genai sends, the body is SSE, one GenerateContentResponse per `data:` line
(`KIND_STREAM_SSE`); without it, one JSON array written element by element (`KIND_STREAM_ARRAY`, split by
`proxy.parsers.jsonarray`). The model list is `GET /v1beta/models`, and `GET /v1/models` (google-genai's default
version) when the request carries a key where only Gemini clients put one: the path is OpenAI's too.

Keys: the SDKs send `x-goog-api-key`, REST examples `?key=`, OpenAI-style clients a bearer token. Every `key`
parameter is dropped from the upstream query (the rest is kept as sent); the provider's key goes in
`x-goog-api-key`, never in the URL.

Usage (https://ai.google.dev/api/generate-content#UsageMetadata) is `usageMetadata`, on every chunk, and values
can go DOWN between chunks (gemini/stream_basic.sse): the LAST one wins. Normalization (see proxy.usage):
`promptTokenCount` includes cached tokens but not `toolUsePromptTokenCount`, and `candidatesTokenCount` excludes
`thoughtsTokenCount`; so input = prompt + tool-use prompt, cached = `cachedContentTokenCount`, output =
candidates + thoughts, reasoning = thoughts. `Usage.raw` is the usageMetadata verbatim; one holding none of those
counts is ignored. The stream is finished once a candidate carries a `finishReason`. Only chunks holding the
byte marker `"usageMetadata"` or `"finishReason"` are decoded, by msgspec Decoders over view Structs.

Status (see proxy.usage): "reported" when the last usageMetadata seen was read; "unparsed" when the framing
failed, or something that may have held usage could not be decoded after it (`usage` keeps the last one read,
a lower bound); "missing" otherwise. A stream cut short (an unfinished SSE event, an array never closed) is not
a parse failure: what was read stands, as in the other SSE dialects.

Errors are google.rpc.Status JSON, `{"error":{"code","message","status"}}`. In an SSE stream the error is one
more `data:` event (google-genai raises it as an APIError); in a JSON array, one more element and the closing
bracket. Neither form carries the inline usage comment: a JSON array has no comments, and google-genai reads
every SSE line that does not start with `data: ` as raw JSON, so a comment line would make it raise. Gemini's
bill travels in the trailers and the ledger only.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import quote_from_bytes, unquote, unquote_to_bytes

import msgspec

from proxy.errors import BadRequest, MethodNotAllowed, ProxyError
from proxy.parsers.jsonarray import JSONArrayParser
from proxy.parsers.sse import FrameError, SSEParser
from proxy.providers.base import (
    FrameFilter,
    Headers,
    Incoming,
    Outgoing,
    Route,
    StreamMeter,
    Upstream,
    bearer_token,
    first_sse_event_failed,
    header,
)
from proxy.usage import Usage, UsageStatus

if TYPE_CHECKING:
    from proxy.config import ProviderConfig

KIND_STREAM_SSE = "streamGenerateContent"
KIND_STREAM_ARRAY = "streamGenerateContentArray"
_METHODS = frozenset({"generateContent", "streamGenerateContent", "countTokens", "embedContent", "batchEmbedContents"})
_VERSIONS = ("/v1beta/models", "/v1/models")
_SHARED_MODELS_PATH = "/v1/models"  # also OpenAI's and Anthropic's model list
# A model id is one path segment of these; no `/`, `%`, `?`, `#`, CR or LF can reach the upstream URL.
_MODEL = re.compile(r"[A-Za-z0-9._-]+")
# Query bytes kept as sent, except any outside printable ASCII (and `#`), which are percent-encoded.
_QUERY_SAFE = bytes(b for b in range(0x21, 0x7F) if b != 0x23).decode()
_API_KEY_HEADER = b"x-goog-api-key"
_JSON = [(b"content-type", b"application/json")]
_USAGE_MARKER = b'"usageMetadata"'
_FINISH_MARKER = b'"finishReason"'
_ABSENT = msgspec.Raw()  # msgspec cannot put Raw in a union with None; an empty Raw stands for "field absent"

# HTTP status -> google.rpc.Code name, as the Gemini API pairs them. google.rpc has no code for a wrong HTTP
# method or an oversized request; both are requests the client must change, INVALID_ARGUMENT, as are other 4xx.
# Other 5xx are INTERNAL.
_STATUS_NAMES = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    405: "INVALID_ARGUMENT",
    413: "INVALID_ARGUMENT",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    502: "UNAVAILABLE",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}


class _UsageView(msgspec.Struct, rename="camel"):
    prompt_token_count: int | None = None
    candidates_token_count: int | None = None
    thoughts_token_count: int | None = None
    tool_use_prompt_token_count: int | None = None
    cached_content_token_count: int | None = None


class _CandidateView(msgspec.Struct, rename="camel"):
    finish_reason: str | None = None


class _ChunkView(msgspec.Struct, rename="camel"):
    candidates: list[_CandidateView] | None = None
    usage_metadata: msgspec.Raw = _ABSENT


class _ErrorDetail(msgspec.Struct):
    code: int
    message: str
    status: str


class _Error(msgspec.Struct):
    error: _ErrorDetail


class _Model(msgspec.Struct, rename="camel"):
    name: str
    display_name: str
    supported_generation_methods: list[str]


class _ModelList(msgspec.Struct):
    models: list[_Model]


# Lax about number types in the usage object only (`12.0`, `"12"`: proto3 JSON writes 64-bit ints as strings).
_decode_usage = msgspec.json.Decoder(_UsageView, strict=False).decode
_decode_chunk = msgspec.json.Decoder(_ChunkView).decode
_encode = msgspec.json.Encoder().encode
# What reading a chunk can raise: msgspec's errors and UnicodeDecodeError (invalid UTF-8 in a string it reads)
# are ValueErrors; JSON nested past the decoder's stack raises RecursionError. None may escape the meter.
_DecodeErrors = (ValueError, RecursionError)
_GENERATION_METHODS = ["generateContent", "streamGenerateContent", "countTokens"]


def _present(raw: msgspec.Raw) -> bool:
    return bool(raw) and bytes(raw) != b"null"


def normalize(raw: msgspec.Raw) -> Usage | None:
    """A usageMetadata object as a `Usage`; None when it holds no token counts."""
    view = _decode_usage(raw)
    counts = (
        view.prompt_token_count,
        view.candidates_token_count,
        view.thoughts_token_count,
        view.tool_use_prompt_token_count,
        view.cached_content_token_count,
    )
    if all(count is None for count in counts):
        return None
    prompt, candidates, thoughts, tool_use, cached = (count or 0 for count in counts)
    return Usage(
        input_tokens=prompt + tool_use,
        cached_tokens=cached,
        output_tokens=candidates + thoughts,
        reasoning_tokens=thoughts,
        raw=bytes(raw).decode("utf-8", "replace"),
    )


def usage_from_body(body: bytes) -> Usage | None:
    """The usageMetadata of a whole JSON response; None when it has none. Raises msgspec.DecodeError."""
    if _USAGE_MARKER not in body:
        return None
    chunk = _decode_chunk(body)
    return normalize(chunk.usage_metadata) if _present(chunk.usage_metadata) else None


class GeminiStreamMeter:
    """Reads a streamGenerateContent body, SSE or JSON array, for usage. Never raises."""

    def __init__(self, array: bool) -> None:
        self._array = JSONArrayParser() if array else None
        self._sse = None if array else SSEParser()
        self.usage: Usage | None = None
        self.finished = False  # a candidate carried a finishReason
        self._spent = False
        self._doubt = False  # something that may have held usage was unreadable, and nothing was read since

    @property
    def status(self) -> UsageStatus:
        if self._doubt:
            return "unparsed"
        return "reported" if self.usage is not None else "missing"

    def feed(self, data: bytes) -> None:
        if self._spent:
            return
        try:
            chunks = self._array.feed(data) if self._array is not None else self._sse_data(data, close=False)
        except FrameError:
            self._spent = self._doubt = True
            return
        for chunk in chunks:
            self.observe(chunk)
        if self._array is not None and self._array.failed:  # a fault after the chunks returned
            self._spent = self._doubt = True

    def close(self) -> None:
        if self._spent:
            return
        self._spent = True
        try:
            chunks = self._array.close() if self._array is not None else self._sse_data(b"", close=True)
        except FrameError:
            # An array never closed is a stream cut short: what was read stands. The SSE parser raises here only
            # the fault its last read found after the events it returned.
            self._doubt = self._sse is not None
            return
        for chunk in chunks:
            self.observe(chunk)

    def _sse_data(self, data: bytes, close: bool) -> list[bytes]:
        assert self._sse is not None
        events = self._sse.close() if close else self._sse.feed(data)
        return [event.data for event in events]

    def observe(self, chunk: bytes) -> None:
        """Take the usage and the finish from one GenerateContentResponse."""
        has_usage = _USAGE_MARKER in chunk
        if not has_usage and _FINISH_MARKER not in chunk:
            return
        try:
            view = _decode_chunk(chunk)
            if view.candidates and any(candidate.finish_reason for candidate in view.candidates):
                self.finished = True
            if _present(view.usage_metadata):
                usage = normalize(view.usage_metadata)
                if usage is not None:
                    self.usage = usage
                    self._doubt = False
        except _DecodeErrors:
            self._doubt = self._doubt or has_usage


def _query_pairs(query: bytes) -> list[tuple[str, bytes, bytes]]:
    """(percent-decoded name, raw value, raw `name=value` piece) for each non-empty piece of a query string."""
    pairs: list[tuple[str, bytes, bytes]] = []
    for piece in query.split(b"&"):
        if piece:
            name, _, value = piece.partition(b"=")
            pairs.append((unquote(name.decode("latin-1").replace("+", " ")), value, piece))
    return pairs


def _gemini_key(incoming: Incoming) -> bytes | None:
    """The key where Gemini clients put it: `x-goog-api-key`, else the first non-empty `key` parameter."""
    key = (header(incoming.headers, _API_KEY_HEADER) or b"").strip()
    if key:
        return key
    for name, value, _ in _query_pairs(incoming.query):
        if name == "key":
            key = unquote_to_bytes(value).strip()  # no `+` -> space: a key may hold `+`
            if key:
                return key
    return None


def error_body(exc: ProxyError) -> bytes:
    """`{"error":{"code","message","status"}}`, google.rpc.Status as the Gemini API and its SDKs use it."""
    status = _STATUS_NAMES.get(exc.status) or ("INTERNAL" if exc.status >= 500 else "INVALID_ARGUMENT")
    return _encode(_Error(_ErrorDetail(exc.status, exc.message, status)))


class GeminiDialect:
    name = "gemini"

    def match(self, incoming: Incoming) -> Route | None:
        path = incoming.path
        for prefix in _VERSIONS:
            if path == prefix:
                return self._models_route(incoming)
            if path.startswith(prefix + "/"):
                break
        else:
            return None
        model, colon, method = path[len(prefix) + 1 :].rpartition(":")
        if not colon or method not in _METHODS:
            return None
        if not _MODEL.fullmatch(model) or not model.strip("."):
            raise BadRequest(f"Invalid model name in the request path: {model!r}.")
        if incoming.method != "POST":
            raise MethodNotAllowed(f"{incoming.method} is not allowed on {path}; use POST.")
        pairs = _query_pairs(incoming.query)
        kept = "&".join(quote_from_bytes(piece, safe=_QUERY_SAFE) for name, _, piece in pairs if name != "key")
        kind = method
        if method == "streamGenerateContent":
            alts = [unquote(value.decode("latin-1")) for name, value, _ in pairs if name == "alt"]
            kind = KIND_STREAM_SSE if alts and alts[-1].lower() == "sse" else KIND_STREAM_ARRAY
        return Route(
            kind=kind,
            upstream_path=f"{prefix}/{model}:{method}" + (f"?{kept}" if kept else ""),
            model=model,
            stream=method == "streamGenerateContent",
            billable=method != "countTokens",
        )

    def _models_route(self, incoming: Incoming) -> Route | None:
        if incoming.path == _SHARED_MODELS_PATH and _gemini_key(incoming) is None:
            return None  # OpenAI's or Anthropic's, unless the client presents a key where only Gemini clients do
        if incoming.method != "GET":
            raise MethodNotAllowed(f"{incoming.method} is not allowed on {incoming.path}; use GET.")
        return Route(kind="models", upstream_path="", local=True)

    def client_key(self, incoming: Incoming) -> bytes | None:
        key = _gemini_key(incoming)
        if key:
            return key
        return bearer_token(incoming.headers)

    def request_fields(self, route: Route, request: dict[str, Any], provider: ProviderConfig) -> dict[str, Any] | None:
        return None  # usageMetadata is always in the response: nothing to ask for

    def attach_credentials(self, outgoing: Outgoing, upstream: Upstream) -> None:
        # The client's own x-goog-api-key (its teeproxy key) must not go upstream beside ours.
        outgoing.headers[:] = [(name, value) for name, value in outgoing.headers if name.lower() != _API_KEY_HEADER]
        if upstream.api_key:
            outgoing.headers.append((_API_KEY_HEADER, upstream.api_key.encode()))

    def is_stream(self, route: Route, content_type: str) -> bool:
        return route.stream is True

    def stream_meter(self, route: Route) -> StreamMeter:
        return GeminiStreamMeter(array=route.kind != KIND_STREAM_SSE)

    def body_usage(self, route: Route, body: bytes, headers: Headers) -> Usage | None:
        if not route.billable or _USAGE_MARKER not in body:
            return None
        first = body.lstrip()[:1]
        if route.stream and first != b"{":  # a stream read whole (an error body is one JSON object)
            meter = GeminiStreamMeter(array=first == b"[")
            meter.feed(body)
            meter.close()
            if meter.status == "unparsed":
                raise ValueError("the streamed body could not be read for usage")
            return meter.usage
        return usage_from_body(body)

    def frame_filter(
        self, route: Route, meter: StreamMeter, strip_usage_frame: bool, comment: Callable[[], bytes] | None
    ) -> FrameFilter | None:
        return None  # no inline comment: google-genai raises on SSE comment lines (see the module docstring)

    def error_response(self, exc: ProxyError) -> tuple[int, Headers, bytes]:
        return exc.status, list(_JSON), error_body(exc)

    def stream_error(self, route: Route, exc: ProxyError, after: bytes = b"") -> bytes:
        if route.kind == KIND_STREAM_SSE:
            return b"data: " + error_body(exc) + b"\n\n"
        # What Google itself ends a failed JSON-array stream with: one more element, then the closing bracket;
        # right after the opening bracket it is the first element, with no comma before it.
        separator = b"\r\n" if after.rstrip().endswith(b"[") else b",\r\n"
        return separator + error_body(exc) + b"\r\n]"

    def models_body(self, models: list[tuple[str, str]]) -> bytes:
        entries = [_Model(f"models/{model}", model, list(_GENERATION_METHODS)) for model, _owner in models]
        return _encode(_ModelList(entries))

    def first_chunk_failed(self, route: Route, data: bytes) -> bool:
        if route.kind == KIND_STREAM_SSE:
            return first_sse_event_failed(data)
        try:
            elements = JSONArrayParser().feed(data)
        except FrameError:
            return False
        return bool(elements) and b'"error"' in elements[0] and _starts_with_error(elements[0])

    def keepalive(self, route: Route) -> bytes | None:
        # google-genai parses comment lines as JSON (and raises); an empty line between frames dispatches
        # nothing, in its reader as in the SSE spec. A JSON array gets nothing: whitespace is only safe between
        # elements, which the relay does not track.
        return b"\r\n" if route.kind == KIND_STREAM_SSE else None


class _ErrorView(msgspec.Struct):
    error: msgspec.Raw | None = None


def _starts_with_error(element: bytes) -> bool:
    try:
        return msgspec.json.decode(element, type=_ErrorView).error is not None
    except (ValueError, RecursionError):
        return False


DIALECT = GeminiDialect()
