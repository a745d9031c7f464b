"""The sidecar meter's face to the relay: one `Meter` per response, whatever the dialect.

A streaming response is metered frame by frame by the dialect's stream meter; a plain JSON body is kept (up
to `MAX_METERED_BODY_BYTES`) and read once at the end. Either way a parse failure only marks the usage
"unparsed"; it never touches a forwarded byte.
"""

from __future__ import annotations

from decimal import Decimal
from typing import TYPE_CHECKING, TypeAlias

import msgspec

from proxy.providers.base import Dialect, Headers, Route, StreamMeter
from proxy.usage import Usage, UsageStatus

if TYPE_CHECKING:
    from proxy.exchange import Exchange
    from proxy.state import ProxyState

# A non-streaming body is kept whole for its usage object (which OpenAI puts last). Embeddings of a large
# batch are the biggest bodies we meet; past this the usage is marked "unparsed" rather than hold more.
MAX_METERED_BODY_BYTES = 64 * 1024 * 1024


# A response's meter: the dialect's stream meter for a stream, else a `BodyMeter`, which is read the same way
# (`usage`, `status`, `finished`) and so is a `StreamMeter` too.
Meter: TypeAlias = StreamMeter


class BodyMeter:
    """A whole JSON body, kept (bounded) and read once by the dialect when it ends."""

    def __init__(self, dialect: Dialect, route: Route, headers: Headers) -> None:
        self._dialect = dialect
        self._route = route
        self._headers = headers
        self._parts: list[bytes] = []
        self._size = 0
        self._overflow = False
        self.usage: Usage | None = None
        self.status: UsageStatus = "missing"
        self.finished = False  # a JSON body is finished only when its last byte went out, which the relay knows
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
            self.status = "unparsed"
            return
        body = b"".join(self._parts)
        self._parts.clear()
        try:
            self.usage = self._dialect.body_usage(self._route, body, self._headers)
        except (ValueError, RecursionError):  # msgspec's errors are ValueErrors; deep nesting is RecursionError
            self.status = "unparsed"
            return
        self.status = "reported" if self.usage is not None else "missing"


def new_meter(dialect: Dialect, route: Route, streaming: bool, headers: Headers) -> Meter:
    if streaming:
        return dialect.stream_meter(route)
    return BodyMeter(dialect, route, headers)


def usage_figures(state: ProxyState, ex: Exchange) -> tuple[Usage | None, str, Decimal | None, str]:
    """(usage, usage_status, cost, cost_status) as far as the meter got."""
    if ex.route is not None and not ex.route.billable:
        return Usage(), "reported", Decimal(0), "priced"  # token counting and the like cost nothing
    meter = ex.meter
    if meter is None:
        return None, "missing", None, "unpriced"
    usage, status = meter.usage, meter.status
    if usage is None or ex.upstream is None or ex.model is None:
        return usage, status, None, "unpriced"
    cost, cost_status = state.pricer.price(ex.upstream.provider, ex.model, usage)
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
