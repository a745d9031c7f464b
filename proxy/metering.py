"""The sidecar meter's face to the relay: one `Meter` per response, whatever the dialect.

A streaming response is metered frame by frame by the dialect's stream meter; a plain JSON body is kept (up
to `MAX_METERED_BODY_BYTES`) and read once at the end. Either way a parse failure only marks the usage
"unparsed"; it never touches a forwarded byte.
"""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal
from typing import TYPE_CHECKING, Protocol

import msgspec

from proxy.providers.openai import OpenAIFrameFilter, OpenAIStreamMeter, usage_from_body
from proxy.usage import Usage, UsageStatus

if TYPE_CHECKING:
    from proxy.forward import Exchange
    from proxy.state import ProxyState

# A non-streaming body is kept whole for its usage object (which OpenAI puts last). Embeddings of a large
# batch are the biggest bodies we meet; past this the usage is marked "unparsed" rather than hold more.
MAX_METERED_BODY_BYTES = 64 * 1024 * 1024


class FrameFilter(Protocol):
    def feed(self, data: bytes) -> bytes: ...
    def close(self) -> bytes: ...


class Meter(Protocol):
    def feed(self, data: bytes) -> None: ...
    def close(self) -> None: ...
    def result(self) -> tuple[Usage | None, UsageStatus]: ...
    @property
    def finished(self) -> bool: ...
    def frame_filter(self, strip_usage_chunk: bool, inline: Callable[[], bytes] | None) -> FrameFilter: ...


class StreamMeter:
    def __init__(self, endpoint: str) -> None:
        self._meter = OpenAIStreamMeter(endpoint)

    def feed(self, data: bytes) -> None:
        self._meter.feed(data)

    def close(self) -> None:
        self._meter.close()

    def result(self) -> tuple[Usage | None, UsageStatus]:
        return self._meter.usage, self._meter.status

    @property
    def finished(self) -> bool:
        return self._meter.finished

    def frame_filter(self, strip_usage_chunk: bool, inline: Callable[[], bytes] | None) -> FrameFilter:
        return OpenAIFrameFilter(self._meter, strip_usage_chunk=strip_usage_chunk, make_comment=inline)


class BodyMeter:
    def __init__(self, endpoint: str, status_code: int) -> None:
        self._endpoint = endpoint
        self._parts: list[bytes] = []
        self._size = 0
        self._overflow = False
        self._usage: Usage | None = None
        self._status: UsageStatus = "missing"
        self._closed = False

    def feed(self, data: bytes) -> None:
        if self._overflow:
            return
        self._size += len(data)
        if self._size > MAX_METERED_BODY_BYTES:
            self._overflow = True
            self._parts.clear()
            return
        self._parts.append(data)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._overflow:
            self._status = "unparsed"
            return
        body = b"".join(self._parts)
        self._parts.clear()
        if b'"usage"' not in body:
            return
        try:
            self._usage = usage_from_body(self._endpoint, body)
        except (msgspec.DecodeError, ValueError):
            self._status = "unparsed"
            return
        self._status = "reported" if self._usage is not None else "missing"

    def result(self) -> tuple[Usage | None, UsageStatus]:
        return self._usage, self._status

    @property
    def finished(self) -> bool:
        return False  # a JSON body is finished only when its last byte went out, which the relay knows

    def frame_filter(self, strip_usage_chunk: bool, inline: Callable[[], bytes] | None) -> FrameFilter:
        raise TypeError("a JSON body has no frames to filter")


def new_meter(state: ProxyState, endpoint: str, streaming: bool, status_code: int) -> Meter:
    if streaming:
        return StreamMeter(endpoint)
    return BodyMeter(endpoint, status_code)


def usage_figures(state: ProxyState, ex: Exchange) -> tuple[Usage | None, str, Decimal | None, str]:
    """(usage, usage_status, cost, cost_status) as far as the meter got."""
    meter = ex.meter
    if meter is None:
        return None, "missing", None, "unpriced"
    usage, status = meter.result()
    if usage is None or ex.upstream is None or ex.model is None:
        return usage, status, None, "unpriced"
    cost, cost_status = state.pricer.price(ex.upstream.provider.dialect, ex.model, usage)
    return usage, status, cost, cost_status


class _InlineUsage(msgspec.Struct, omit_defaults=True):
    request_id: str
    usage: str
    input_tokens: int
    output_tokens: int
    cached_tokens: int
    cache_write_tokens: int
    reasoning_tokens: int
    cost_usd: str | None = None


def render_inline_comment(state: ProxyState, ex: Exchange) -> bytes:
    """`: x-teeproxy-usage {json}` — an SSE comment line, invisible to every SDK and to EventSource."""
    usage, status, cost, _ = usage_figures(state, ex)
    u = usage or Usage()
    body = _InlineUsage(
        request_id=ex.request_id,
        usage=status,
        input_tokens=u.input_tokens,
        output_tokens=u.output_tokens,
        cached_tokens=u.cached_tokens,
        cache_write_tokens=u.cache_write_tokens,
        reasoning_tokens=u.reasoning_tokens,
        cost_usd=format(cost, "f") if cost is not None else None,
    )
    return b": x-teeproxy-usage " + msgspec.json.encode(body) + b"\n"
