"""The AWS Bedrock runtime dialect: Converse and InvokeModel, streaming or not, signed with SigV4 or a Bedrock key.

Theory of operation
-------------------
The runtime is restJson (botocore's `bedrock-runtime` model): `POST /model/{modelId}/converse`, `/converse-stream`,
`/invoke`, `/invoke-with-response-stream`, and the free `/count-tokens`. `{modelId}` is a non-greedy URI label: an
ARN's `/` and `:` arrive percent-encoded in one raw-path segment. It is decoded into `Route.model` and re-encoded
as botocore's serializer does (`percent_encode`: `quote(utf-8, safe="-._~")`, all but RFC 3986 unreserved bytes
escaped); SigV4 escapes that path once more in its canonical request, as for the client's own call to AWS.

Streams are AWS event-stream frames (`proxy.parsers.eventstream`). A frame whose `:message-type` is `exception`
or `error` ends the stream for botocore, which raises it: usage read before it is kept, the stream unfinished.

* converse-stream: the `metadata` event (after `messageStop`) holds `usage` {inputTokens, outputTokens,
  totalTokens, cacheReadInputTokens, cacheWriteInputTokens, cacheDetails[{ttl, inputTokens}]}; it finishes
  the stream.
* invoke-with-response-stream: `chunk` events, payload `{"bytes": "<base64 of the model's own JSON event>"}`.
  A stream whose first chunk is an Anthropic `message_start` feeds every chunk to `AnthropicUsage` (known by
  content, not model id: application inference profile ARNs hide the model, and legacy Claude text-completion
  streams are not Messages events). The last chunk of every model's stream carries Bedrock's
  `amazon-bedrock-invocationMetrics` {inputTokenCount, outputTokenCount, cacheRead/WriteInputTokenCount?};
  it finishes the stream. Precedence: those metrics, when read, are the usage (they are Bedrock's bill); the
  model's own usage stands until then (a lower bound, the only count of a stream cut short). The metrics have
  no one-hour cache-write or reasoning split: those come from the Anthropic usage, clamped to the metrics.
* non-streaming: converse's JSON `usage`; invoke's `x-amzn-bedrock-*-token-count` response headers, else an
  Anthropic Messages body's `usage`.

Normalization (see proxy.usage): Bedrock's input counts EXCLUDE cache reads and writes (as Anthropic's do):
input = input + cache read + cache write.

Status: "unparsed" when the framing failed (or the stream ended inside a frame) before the final usage, or when
something that may have held usage could not be decoded; after the final usage nothing can change the count.
Else "reported" when usage was read, "missing" when not.

Sans-I/O except `aws_credentials` and `sign` (the SigV4 clock, credential refreshes): see there.
"""

from __future__ import annotations

import functools
import re
import unicodedata
from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated, Any
from urllib.parse import quote, unquote_to_bytes, urlsplit

import botocore.exceptions
import botocore.session
import msgspec
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest

from proxy.errors import BadRequest, MethodNotAllowed, ProxyError, UpstreamError, UpstreamProtocolError, UpstreamTimeout
from proxy.parsers.eventstream import EventStreamDecoder, Message, exception_frame
from proxy.parsers.sse import FrameError
from proxy.providers.anthropic import AnthropicUsage, usage_from_body
from proxy.providers.base import (
    Dialect,
    FrameFilter,
    Headers,
    Incoming,
    Outgoing,
    Route,
    StreamMeter,
    Upstream,
    bearer_token,
    header,
)
from proxy.usage import Usage, UsageStatus

if TYPE_CHECKING:
    from proxy.config import ProviderConfig

SIGNING_NAME = "bedrock"  # the service model's signingName (the endpoint prefix is bedrock-runtime)
_OPERATIONS = {  # last path segment -> (Route.kind, stream, billable)
    b"converse": ("converse", False, True),
    b"converse-stream": ("converse_stream", True, True),
    b"invoke": ("invoke", False, True),
    b"invoke-with-response-stream": ("invoke_stream", True, True),
    b"count-tokens": ("count_tokens", False, False),  # CountTokens is free: its record carries zero usage
}
_BOTOCORE_SAFE = "-._~"  # botocore.utils.SAFE_CHARS: percent_encode's default for non-greedy labels
_REGION_HOST = re.compile(r"(?:^|\.)bedrock-runtime(?:-fips)?\.([a-z0-9-]+)\.(?:vpce\.)?amazonaws\.com(?:\.cn)?$")
# Dropped before any upstream auth: the client's own signature and SDK bookkeeping must never go upstream.
_CLIENT_AUTH_PREFIXES = (b"x-amz-", b"amz-sdk-")
_CLIENT_AUTH_NAMES = frozenset({b"authorization", b"x-api-key"})
# Signed besides host and what SigV4 adds: the headers AWS reads. Others go unsigned, so a header the transport
# may still rewrite after signing cannot break the signature.
_SIGNED_NAMES = frozenset({b"content-type", b"accept"})
_SIGNED_PREFIX = b"x-amzn-bedrock-"
_SIGNATURE_HEADERS = ("Authorization", "X-Amz-Date", "X-Amz-Security-Token", "X-Amz-Content-SHA256")
# restJson error types by status (the codes botocore's ClientError carries); others: 4xx validation, 5xx internal.
_ERROR_TYPES = {
    400: "ValidationException",
    401: "AccessDeniedException",
    403: "AccessDeniedException",
    404: "ResourceNotFoundException",
    405: "ValidationException",
    413: "ValidationException",
    429: "ThrottlingException",
    500: "InternalServerException",
    502: "ServiceUnavailableException",
    503: "ServiceUnavailableException",
    504: "ModelTimeoutException",
}
_HEADER_COUNTS = (  # invoke's usage headers, in Usage-building order: input, output, cache read, cache write
    b"x-amzn-bedrock-input-token-count",
    b"x-amzn-bedrock-output-token-count",
    b"x-amzn-bedrock-cache-read-input-token-count",
    b"x-amzn-bedrock-cache-write-input-token-count",
)
_USAGE_MARKER = b'"usage"'
_FAILURE_TYPES = frozenset({"exception", "error"})  # botocore's EventStreamMessage.to_response_dict: status 400
_METRICS_MARKER = b"amazon-bedrock-invocationMetrics"
_ABSENT = msgspec.Raw()  # msgspec cannot put Raw in a union with None: an empty Raw stands for "field absent"
_Count = Annotated[int, msgspec.Meta(ge=0)]


class _CacheDetail(msgspec.Struct):
    ttl: str = ""
    inputTokens: _Count = 0


class _ConverseUsage(msgspec.Struct):
    inputTokens: _Count | None = None
    outputTokens: _Count | None = None
    cacheReadInputTokens: _Count | None = None
    cacheWriteInputTokens: _Count | None = None
    cacheDetails: list[_CacheDetail] | None = None


class _UsageHolder(msgspec.Struct):  # converse's metadata event payload, and its non-streaming body
    usage: msgspec.Raw = _ABSENT


class _Chunk(msgspec.Struct):
    data: bytes = msgspec.field(default=b"", name="bytes")  # msgspec decodes the base64 itself


class _InnerView(msgspec.Struct):
    type: str | None = None
    metrics: msgspec.Raw = msgspec.field(default=_ABSENT, name="amazon-bedrock-invocationMetrics")


class _InvocationMetrics(msgspec.Struct):
    inputTokenCount: _Count | None = None
    outputTokenCount: _Count | None = None
    cacheReadInputTokenCount: _Count | None = None
    cacheWriteInputTokenCount: _Count | None = None


_decode_converse_usage = msgspec.json.Decoder(_ConverseUsage).decode
_decode_holder = msgspec.json.Decoder(_UsageHolder).decode
_decode_chunk = msgspec.json.Decoder(_Chunk).decode
_decode_inner = msgspec.json.Decoder(_InnerView).decode
_decode_metrics = msgspec.json.Decoder(_InvocationMetrics).decode
_encode = msgspec.json.Encoder().encode
# msgspec raises RecursionError, not DecodeError, on JSON nested ~1000 deep, and UnicodeDecodeError (a ValueError)
# on invalid UTF-8 in a string it reads: neither may escape the meter.
DecodeErrors = (ValueError, RecursionError)


def _present(raw: msgspec.Raw) -> bool:
    return bool(raw) and bytes(raw) != b"null"


def _usage(fresh: int, output: int, read: int, write: int, raw: bytes, write_1h: int = 0) -> Usage:
    return Usage(
        input_tokens=fresh + read + write,
        cached_tokens=read,
        cache_write_tokens=write,
        cache_write_1h_tokens=min(write_1h, write),
        output_tokens=output,
        raw=raw.decode("utf-8", "replace"),
    )


def converse_usage(raw: bytes) -> Usage | None:
    """A Converse `usage` object (TokenUsage) as a `Usage`; None when it holds no counts."""
    u = _decode_converse_usage(raw)
    if u.inputTokens is None and u.outputTokens is None:
        return None
    write_1h = sum(d.inputTokens for d in u.cacheDetails or () if d.ttl == "1h")
    read, write = u.cacheReadInputTokens or 0, u.cacheWriteInputTokens or 0
    return _usage(u.inputTokens or 0, u.outputTokens or 0, read, write, raw, write_1h)


def metrics_usage(raw: bytes) -> Usage | None:
    """`amazon-bedrock-invocationMetrics` as a `Usage`; None when it holds no token counts."""
    m = _decode_metrics(raw)
    if m.inputTokenCount is None and m.outputTokenCount is None:
        return None
    read, write = m.cacheReadInputTokenCount or 0, m.cacheWriteInputTokenCount or 0
    return _usage(m.inputTokenCount or 0, m.outputTokenCount or 0, read, write, raw)


class BedrockStreamMeter:
    """Reads a converse-stream or invoke-with-response-stream body for usage. Never raises."""

    def __init__(self, invoke: bool) -> None:
        self._decoder = EventStreamDecoder()
        self._event = self._chunk if invoke else self._metadata
        self.usage: Usage | None = None
        self.finished = False
        self._spent = False  # closed, failed, or ended by an exception frame: nothing more is read
        self._frame_error = False
        self._doubt = False  # something that may have held usage could not be decoded
        self._anthropic: AnthropicUsage | None = None
        self._sniffed = False  # the first chunk was read, and said whether this is an Anthropic Messages stream
        self._bill: Usage | None = None  # converse's metadata usage, or invoke's invocation metrics

    @property
    def status(self) -> UsageStatus:
        if self._frame_error:
            return "unparsed"
        if self._bill is not None:
            return "reported"  # the final count was read: earlier doubts cannot change it
        if self._doubt or (self._anthropic is not None and self._anthropic.doubt):
            return "unparsed"
        return "reported" if self.usage is not None else "missing"

    def feed(self, data: bytes) -> None:
        if self._spent:
            return
        try:
            messages = self._decoder.feed(data)
        except FrameError:
            self._fail()
            return
        for message in messages:
            if message.headers.get(":message-type") in _FAILURE_TYPES:
                self._spent = True  # botocore raises it and reads no further
                self.finished = False
                return
            try:
                self._event(message)
            except DecodeErrors:
                self._doubt = True
            self.usage = self._settle()

    def close(self) -> None:
        if self._spent:
            return
        self._spent = True
        try:
            self._decoder.close()
        except FrameError:
            self._fail()

    def _fail(self) -> None:
        self._spent = True
        self._frame_error = not self.finished  # once the final usage is read, nothing after it can change it

    def _metadata(self, message: Message) -> None:
        if message.headers.get(":event-type") == "metadata":
            self.finished = True
            holder = _decode_holder(message.payload)
            self._bill = converse_usage(bytes(holder.usage)) if _present(holder.usage) else None

    def _chunk(self, message: Message) -> None:
        if message.headers.get(":event-type") != "chunk":
            return
        inner = _decode_chunk(message.payload).data
        if not self._sniffed:
            self._sniffed = True
            if _decode_inner(inner).type == "message_start":
                self._anthropic = AnthropicUsage()
        if self._anthropic is not None:
            self._anthropic.observe(inner)
            self.finished = self.finished or self._anthropic.finished
        if _METRICS_MARKER in inner:
            view = _decode_inner(inner)
            if _present(view.metrics):
                self._bill = metrics_usage(bytes(view.metrics)) or self._bill
                self.finished = True

    def _settle(self) -> Usage | None:
        model = self._anthropic.usage if self._anthropic is not None else None
        if self._bill is None or model is None:
            return self._bill or model
        return msgspec.structs.replace(
            self._bill,
            cache_write_1h_tokens=min(model.cache_write_1h_tokens, self._bill.cache_write_tokens),
            reasoning_tokens=min(model.reasoning_tokens, self._bill.output_tokens),
        )


def _model_id(segment: bytes) -> str:
    try:
        model = unquote_to_bytes(segment).decode("utf-8")
    except UnicodeDecodeError:
        raise BadRequest("the model id in the path is not UTF-8") from None
    if model in ("", ".", ".."):  # httpx would resolve a dot segment: /model/../invoke is /invoke
        raise BadRequest(f"the model id in the path is {'empty' if not model else repr(model)}")
    if any(unicodedata.category(c) == "Cc" for c in model):
        raise BadRequest("the model id in the path holds control characters")
    return model


def region_of(upstream: Upstream) -> str:
    """The SigV4 region: the provider's `region`, else read from a bedrock-runtime.<region>.amazonaws.com URL."""
    if upstream.provider.region:
        return upstream.provider.region
    found = _REGION_HOST.search(urlsplit(upstream.base_url).hostname or "")
    if found is None:
        raise ProxyError(
            f"no AWS region for provider {upstream.provider.name!r}: set its `region`, or use a base_url "
            "like https://bedrock-runtime.<region>.amazonaws.com"
        )
    return found.group(1)


@functools.cache
def aws_credentials() -> Any:
    """botocore's credential chain (environment, shared files, SSO, container and instance metadata), looked up
    once per process; None when it finds nothing (the result is cached too: fix the setup, then restart).

    The one place this module does I/O: it reads the environment and ~/.aws files and may ask the instance
    metadata service. Call it once at start-up so that the first signed request does not pay for it.
    """
    return botocore.session.get_session().get_credentials()


def sign(outgoing: Outgoing, region: str) -> Headers:
    """SigV4 headers for `outgoing` (authorization, x-amz-date, and the session token when there is one). Uses
    the clock, and may refresh expiring credentials through botocore (I/O)."""
    credentials = aws_credentials()
    if credentials is None:
        raise ProxyError(
            "no AWS credentials for Bedrock SigV4 signing: configure botocore's credential chain "
            "(AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE, a role) or set api_key_env to a Bedrock API key"
        )
    try:
        frozen = credentials.get_frozen_credentials()
    except botocore.exceptions.BotoCoreError as exc:
        raise ProxyError(f"could not refresh AWS credentials: {type(exc).__name__}") from None
    signed = {
        name.decode("latin-1"): value.decode("latin-1")
        for name, value in outgoing.headers
        if name in _SIGNED_NAMES or name.startswith(_SIGNED_PREFIX)
    }
    request = AWSRequest(method=outgoing.method, url=outgoing.url, headers=signed, data=outgoing.body)
    SigV4Auth(frozen, SIGNING_NAME, region).add_auth(request)
    return [
        (name.lower().encode("latin-1"), request.headers[name].encode("latin-1"))
        for name in _SIGNATURE_HEADERS
        if name in request.headers
    ]


class BedrockDialect:
    name = "bedrock"

    def match(self, incoming: Incoming) -> Route | None:
        raw = (incoming.raw_path or incoming.path.encode()).partition(b"?")[0]
        if not raw.startswith(b"/model/"):
            return None
        segments = raw[len(b"/model/") :].split(b"/")
        operation = _OPERATIONS.get(segments[-1])
        if operation is None or len(segments) < 2:
            return None
        if incoming.method != "POST":
            raise MethodNotAllowed(f"{incoming.method} is not allowed on {incoming.path}; use POST")
        if len(segments) > 2:
            raise BadRequest("the model id must be one path segment, its '/' percent-encoded as %2F")
        model = _model_id(segments[0])
        kind, stream, billable = operation
        path = f"/model/{quote(model, safe=_BOTOCORE_SAFE)}/{segments[1].decode('ascii')}"
        return Route(kind=kind, upstream_path=path, model=model, stream=stream, billable=billable)

    def client_key(self, incoming: Incoming) -> bytes | None:
        """`Authorization: Bearer <key>` (boto3's AWS_BEARER_TOKEN_BEDROCK), else `x-api-key` (a client that signs
        with SigV4 and adds the key with a botocore event hook: its SigV4 Authorization is not Bearer)."""
        return bearer_token(incoming.headers) or (header(incoming.headers, b"x-api-key") or b"").strip() or None

    def request_fields(self, route: Route, request: dict[str, Any], provider: ProviderConfig) -> dict[str, Any] | None:
        return None  # usage is always in the response: nothing to ask for

    def attach_credentials(self, outgoing: Outgoing, upstream: Upstream) -> None:
        """A Bedrock API key as `Authorization: Bearer` when the provider has one, else a SigV4 signature."""
        outgoing.headers[:] = [
            (name, value)
            for name, value in outgoing.headers
            if name not in _CLIENT_AUTH_NAMES and not name.startswith(_CLIENT_AUTH_PREFIXES)
        ]
        if upstream.api_key:
            outgoing.headers.append((b"authorization", b"Bearer " + upstream.api_key.encode()))
        else:
            outgoing.headers.extend(sign(outgoing, region_of(upstream)))

    def is_stream(self, route: Route, content_type: str) -> bool:
        return content_type.strip().lower().startswith("application/vnd.amazon.eventstream")

    def stream_meter(self, route: Route) -> StreamMeter:
        return BedrockStreamMeter(invoke=route.kind.startswith("invoke"))

    def body_usage(self, route: Route, body: bytes, headers: Headers) -> Usage | None:
        if not route.billable:
            return None
        if route.kind.startswith("converse"):
            if _USAGE_MARKER not in body:
                return None
            holder = _decode_holder(body)
            return converse_usage(bytes(holder.usage)) if _present(holder.usage) else None
        values = [header(headers, name) for name in _HEADER_COUNTS]
        if values[0] is None and values[1] is None:
            return usage_from_body(body)
        counts = [int(v) if v is not None else 0 for v in values]  # int() raises ValueError on a bad count
        if min(counts) < 0:
            raise ValueError("negative token count in a Bedrock usage header")
        raw = _encode({n.decode(): v.decode("latin-1") for n, v in zip(_HEADER_COUNTS, values, strict=True) if v})
        return _usage(counts[0], counts[1], counts[2], counts[3], raw)

    def frame_filter(
        self, route: Route, meter: StreamMeter, strip_usage_frame: bool, comment: Callable[[], bytes] | None
    ) -> FrameFilter | None:
        """None: event-stream framing has no comment frame botocore would skip (an unknown event type is an
        error to some SDKs), and the proxy never changes Bedrock requests, so there is nothing to strip."""
        return None

    def error_response(self, exc: ProxyError) -> tuple[int, Headers, bytes]:
        """restJson, as AWS sends it: botocore reads the code from `x-amzn-errortype`, the text from `message`."""
        error_type = _ERROR_TYPES.get(exc.status) or (
            "ValidationException" if exc.status < 500 else "InternalServerException"
        )
        headers = [(b"content-type", b"application/json"), (b"x-amzn-errortype", error_type.encode())]
        return exc.status, headers, _encode({"message": exc.message})

    def stream_error(self, route: Route, exc: ProxyError, after: bytes = b"") -> bytes:
        """An exception frame of a type both stream unions (ConverseStreamOutput, ResponseStream) declare."""
        if isinstance(exc, UpstreamTimeout | UpstreamProtocolError):
            exception_type = "modelStreamErrorException"  # the model's stream broke off
        elif isinstance(exc, UpstreamError):
            exception_type = "serviceUnavailableException"
        else:
            exception_type = "internalServerException"
        return exception_frame(exception_type, _encode({"message": exc.message}))

    def models_body(self, models: list[tuple[str, str]]) -> bytes:
        """The Bedrock runtime has no model list; this is the control plane's ListFoundationModels shape
        (`{"modelSummaries": [{"modelId", "providerName"}]}`), trimmed to the fields the proxy knows."""
        return _encode({"modelSummaries": [{"modelId": model, "providerName": owner} for model, owner in models]})

    def first_chunk_failed(self, route: Route, data: bytes) -> bool:
        try:
            messages = EventStreamDecoder().feed(data)
        except FrameError:
            return False
        return bool(messages) and messages[0].headers.get(":message-type") in ("exception", "error")

    def keepalive(self, route: Route) -> bytes | None:
        return None  # a binary event stream has no comment or empty message botocore would skip


DIALECT: Dialect = BedrockDialect()
