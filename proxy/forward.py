"""One request's life, in phase order, the same for every dialect.

    recognize → authenticate → read_request → select_upstream → prepare_request → open_upstream → relay → finish

The dialect (`proxy.providers`) is asked at each phase: which endpoint and model, where the client's key is,
the fields to add to the request and the credentials, whether the response streams, the meter, the frame filter,
and the error format. Nothing here branches on which dialect it holds.

`finish` runs in `finally`, so every request reaches it; it is where the ledger record is written for every
request that was sent upstream, whatever the client or the upstream did. An `Exchange` carries the state
between phases.

The relay (the tee itself) is `proxy.relay`; the state an exchange carries is `proxy.exchange`; which provider
is tried when is `proxy.failover`.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import msgspec

from proxy import client_connection
from proxy import headers as h
from proxy import upstream as up
from proxy.asgi_types import Receive, Scope, Send
from proxy.deadline import Deadline
from proxy.errors import (
    BadRequest,
    HeadersTooLarge,
    PayloadTooLarge,
    ProxyError,
    RequestTimeout,
    ShuttingDown,
    UpstreamError,
    UpstreamTimeout,
)
from proxy.exchange import ClientGone, Exchange, identity_headers, new_exchange
from proxy.failover import RETRYABLE_STATUSES, Plan, attempt_order, backoff_s, retry_after_s
from proxy.ledger import LedgerRecord
from proxy.metering import usage_figures
from proxy.observe import Finished, Started
from proxy.providers import recognize
from proxy.providers.base import Incoming, Outgoing, Route, Upstream
from proxy.relay import relay
from proxy.state import ProxyState
from proxy.usage import Usage

_json_decode = msgspec.json.Decoder().decode
_json_encode = msgspec.json.Encoder().encode
_JSON_WHITESPACE = (b" ", b"\t", b"\n", b"\r")

_DISCONNECT = "http.disconnect"
# More request headers than any SDK sends (they send 10-20); past it 431, before any other work.
MAX_REQUEST_HEADERS = 128
# Model names: Bedrock ARNs are the longest real ones (a few hundred characters). A longer one is refused rather
# than routed, cached and logged.
MAX_MODEL_CHARS = 512
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


async def handle(state: ProxyState, scope: Scope, receive: Receive, send: Send) -> None:
    ex = new_exchange(scope)
    response: up.UpstreamResponse | None = None
    watcher: asyncio.Task[None] | None = None
    stop_listening: Callable[[], None] | None = None
    me = asyncio.current_task()
    if me is not None:
        state.drain.track(me, ex)
    try:
        if state.drain.draining:
            ex.close_connection = True
            raise ShuttingDown("The proxy is shutting down; retry on a new connection.")
        if len(scope["headers"]) > MAX_REQUEST_HEADERS:
            raise HeadersTooLarge(f"The request has more than {MAX_REQUEST_HEADERS} header fields.")
        incoming = Incoming(
            method=scope["method"],
            path=scope["path"],
            raw_path=scope.get("raw_path") or scope["path"].encode(),
            query=scope.get("query_string", b""),
            headers=scope["headers"],
        )
        ex.dialect, found = recognize(incoming)
        ex.key_name = state.keys.authenticate(ex.dialect.client_key(incoming))
        if isinstance(found, ProxyError):
            raise found
        route = ex.route = found
        if route.local:
            await _send_json(ex, send, 200, state.models_body(ex.dialect))
            return
        _refuse_ambiguous_framing(ex, scope)
        body_timeout_s = state.config.server.body_timeout_s
        try:
            with Deadline(body_timeout_s):
                body = await read_body(receive, scope, state.config.server.max_body_bytes)
        except TimeoutError:
            raise RequestTimeout(f"The request body did not arrive within {body_timeout_s:g} s.") from None
        request = parse_request(body, route)
        model = route.model or request["model"]
        _check_model(model)  # before it is echoed in a header or routed
        ex.model = model
        plan = state.router.plan(ex.model, ex.dialect.name)
        ex.trailers = state.trailers_for(scope)
        # From here on the client may leave at any moment (waiting for a head, backing off, streaming): when it
        # does, this task is cancelled, by the server's callback or else by one watcher on `receive()`.
        stop_listening = client_connection.on_disconnect(send, lambda: _client_left(ex, me))
        if stop_listening is None:
            watcher = asyncio.get_running_loop().create_task(_watch(ex, receive, me))
        response = await open_with_failover(state, ex, plan, scope, request, body)
        await relay(state, ex, response, send)
    except ProxyError as exc:
        if isinstance(exc, UpstreamError):
            ex.outcome = "timeout" if isinstance(exc, UpstreamTimeout) else "upstream_error"
        await _send_error(ex, send, exc)
    except ClientGone:
        ex.outcome = "client_disconnected"
    except asyncio.CancelledError:
        task = asyncio.current_task()
        if task is None or not (ex.client_gone or ex.shutdown):
            ex.outcome = "cancelled"
            raise
        task.uncancel()  # our own watcher or the drain cancelled us: an outcome, not an error
        if ex.meter is not None:
            ex.meter.close()
        if ex.client_gone:
            ex.outcome = "completed" if ex.meter is not None and ex.meter.finished else "client_disconnected"
        else:
            ex.outcome = "shutdown"
            await _end_for_shutdown(ex, send)
    except Exception:
        ex.outcome = "proxy_error"
        state.log.exception("request %s failed inside the proxy", ex.request_id)
        await _send_error(ex, send, ProxyError("The proxy failed while handling the request."))
    finally:
        ex.done = True
        if me is not None:
            state.drain.untrack(me)
        if stop_listening is not None:
            stop_listening()
        if watcher is not None:
            watcher.cancel()
        if response is not None:
            response.close()
        finish(state, ex)
        ex.sink = None  # it refers back to the exchange: no cycle left for the collector to find


async def _end_for_shutdown(ex: Exchange, send: Send) -> None:
    """The grace period is over and this request is still running: say so in the client's dialect."""
    exc = ShuttingDown("The proxy shut down before the response was complete.")
    if not ex.response_started:
        await _send_error(ex, send, exc)
        return
    if not ex.streaming or ex.route is None or ex.sink is None:
        return  # a plain body: leaving it unfinished ends the response abnormally, never as a clean end
    event = ex.dialect.stream_error(ex.route, exc, ex.sink.last)
    if ex.sse and not ex.sink.at_boundary:
        event = b"\n\n" + event
    await ex.sink.write(event)
    await send({"type": "http.response.body", "body": b"", "more_body": False})


async def _watch(ex: Exchange, receive: Receive, task: asyncio.Task[Any] | None) -> None:
    """Wait for the client to leave, where the server cannot call back (`client_connection.on_disconnect`)."""
    while True:
        message = await receive()
        if message["type"] == _DISCONNECT:
            _client_left(ex, task)
            return


def _client_left(ex: Exchange, task: asyncio.Task[Any] | None) -> None:
    """Cancel the request's task (which closes the upstream at once), unless it has finished."""
    if not ex.done and task is not None:
        ex.client_gone = True
        task.cancel()


async def open_with_failover(
    state: ProxyState, ex: Exchange, plan: Plan, scope: Scope, request: dict[str, Any], body: bytes
) -> up.UpstreamResponse:
    """Try the plan's providers until one gives a response worth relaying (see proxy.failover), and return it
    with its body not yet read (a gated route's first chunk is looked at and put back). Raises the last
    failure."""
    assert ex.route is not None
    order, ex.reason = attempt_order(plan)
    retry = state.config.retry
    tried: dict[str, int] = {}
    skipped: set[str] = set()
    delay_s = 0.0
    failure = ""
    for i, upstream in enumerate(order):
        name = upstream.provider.name
        last = i == len(order) - 1
        if name in skipped:
            continue
        if i:
            if name in tried:
                delay_s = max(delay_s, backoff_s(tried[name] - 1, retry.backoff_initial_s, retry.backoff_max_s))
            else:
                delay_s = 0.0
            if delay_s:
                await asyncio.sleep(delay_s)
        tried[name] = tried.get(name, 0) + 1
        ex.upstream = upstream
        ex.attempts += 1
        outgoing = prepare_request(state, ex, scope, request, body)
        if not ex.sent_upstream:
            ex.sent_upstream = True
            _tell_started(state, ex)
        try:
            with Deadline(upstream.provider.first_byte_timeout_s):
                response = await up.open_stream(state.client, outgoing, upstream.provider)
        except TimeoutError:
            error: UpstreamError = UpstreamTimeout("no response head from the upstream provider in time")
            failure = "first_byte_timeout"
        except UpstreamError as exc:
            error, failure = exc, ("timeout" if isinstance(exc, UpstreamTimeout) else "connect")
        else:
            status = response.status_code
            if status in RETRYABLE_STATUSES and not last:
                wait_s = retry_after_s(response.header(b"retry-after"))
                if wait_s is not None and wait_s > retry.retry_after_cap_s:
                    skipped.add(name)  # it asked for longer than we wait: try the others
                if not _nothing_left(order, i, skipped):
                    delay_s = wait_s if wait_s is not None and name not in skipped else 0.0
                    response.close()
                    failure = str(status)
                    continue
                # No attempt left worth making: this answer, with its Retry-After, is the client's.
            if plan.gate_first_chunk and status < 300:
                first = await _first_chunk(response)
                if not last and ex.dialect.first_chunk_failed(ex.route, first):
                    response.close()
                    failure = "error_event"
                    continue
                response.unread(first)
            if i:
                ex.reason = "failover:" + failure
            return response
        if last or _nothing_left(order, i, skipped):
            raise error
        delay_s = 0.0
    raise UpstreamError(f"every provider for this model failed (last: {failure})")


async def _first_chunk(response: up.UpstreamResponse) -> bytes:
    try:
        return await response.read()
    except BaseException:
        response.close()
        raise


def _nothing_left(order: list[Upstream], i: int, skipped: set[str]) -> bool:
    return all(u.provider.name in skipped for u in order[i + 1 :])


async def read_body(receive: Receive, scope: Scope, limit: int) -> bytes:
    declared = h.get(scope["headers"], b"content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"Request body is {int(declared)} bytes; the limit is {limit} bytes.")
    parts: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == _DISCONNECT:
            raise ClientGone
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"Request body exceeds the limit of {limit} bytes.")
        parts.append(chunk)
        if not message.get("more_body", False):
            return b"".join(parts)


def _refuse_ambiguous_framing(ex: Exchange, scope: Scope) -> None:
    """Content-Length and Transfer-Encoding together is how requests are smuggled (RFC 9112 §6.1): refuse, and
    close the connection so no byte after this request is read as another one."""
    names = {name for name, _ in scope["headers"]}
    if b"content-length" in names and b"transfer-encoding" in names:
        ex.close_connection = True
        raise BadRequest("The request has both Content-Length and Transfer-Encoding.")


def _with_fields(body: bytes, request: dict[str, Any], fields: dict[str, Any]) -> bytes:
    """The body with a dialect's top-level `fields` set (`Dialect.request_fields`). When the client sent none of
    them (OpenAI's `stream_options`, usually), they are spliced in after the opening brace and every byte the client
    sent is kept as sent: number spellings, escapes, key order, whitespace. Otherwise it is re-encoded."""
    start = _past_whitespace(body, 0)
    if not request.keys().isdisjoint(fields) or body[start : start + 1] != b"{":
        return _json_encode({**request, **fields})
    added = _json_encode(fields)[1:-1]
    first = _past_whitespace(body, start + 1)
    comma = b"," if body[first : first + 1] != b"}" else b""  # `{}` takes no comma after the fields
    return b"".join((body[: start + 1], added, comma, memoryview(body)[start + 1 :]))


def _past_whitespace(body: bytes, pos: int) -> int:
    """The offset of the first byte at or after `pos` that is not JSON whitespace (offsets, not stripped copies:
    a body may be megabytes of images)."""
    while body[pos : pos + 1] in _JSON_WHITESPACE:
        pos += 1
    return pos


def _check_model(model: str) -> None:
    if len(model) > MAX_MODEL_CHARS:
        raise BadRequest(f"The model name is longer than {MAX_MODEL_CHARS} characters.")
    if _CONTROL.search(model):
        raise BadRequest("The model name contains control characters.")


def parse_request(body: bytes, route: Route) -> dict[str, Any]:
    """Every dialect's request body is a JSON object; the model is in it unless the path names it."""
    try:
        request = _json_decode(body)
    except (ValueError, RecursionError):  # msgspec's DecodeError, invalid UTF-8, nesting past the stack
        raise BadRequest(
            "We could not parse the JSON body of your request. The request body must be a JSON object."
        ) from None
    if not isinstance(request, dict):
        raise BadRequest("The request body must be a JSON object.")
    if route.model is None:
        model = request.get("model")
        if not isinstance(model, str) or not model:
            raise BadRequest("You must provide a model parameter.")
    return request


def prepare_request(state: ProxyState, ex: Exchange, scope: Scope, request: dict[str, Any], body: bytes) -> Outgoing:
    """The client's headers less its credentials and hop-by-hop ones; the body with the dialect's request fields
    (OpenAI: `stream_options.include_usage` merged in) when metering; then the provider's credentials."""
    assert ex.upstream is not None and ex.route is not None
    forward_headers = h.upstream_request_headers(scope["headers"])
    forward_headers.append((b"accept-encoding", b"identity"))
    ex.inline_usage = (h.get(scope["headers"], b"x-teeproxy-usage") or b"").strip().lower() == b"inline"
    fields = ex.dialect.request_fields(ex.route, request, ex.upstream.provider) if state.metering else None
    ex.strip_usage_frame = fields is not None
    if fields is not None:
        body = _with_fields(body, request, fields)
    outgoing = Outgoing("POST", ex.upstream.base_url + ex.route.upstream_path, forward_headers, body)
    ex.dialect.attach_credentials(outgoing, ex.upstream)
    return outgoing


def finish(state: ProxyState, ex: Exchange) -> None:
    """Write the ledger record: one for every request that was sent upstream, whatever happened."""
    if not ex.sent_upstream:
        return
    try:
        usage, usage_status, cost, cost_status = usage_figures(state, ex)
    except Exception:  # a pricing or parsing bug must not lose the record
        state.log.exception("usage figures failed for %s", ex.request_id)
        usage, usage_status, cost, cost_status = None, "unparsed", None, "unpriced"
    record = _record(ex, usage or Usage(), usage_status, cost, cost_status)
    state.ledger.submit(record)
    if state.observers:
        finished = Finished(
            record=record,
            dialect=ex.dialect.name,
            attempts=ex.attempts,
            ttfb_s=ex.first_byte_at - ex.started_at if ex.first_byte_at is not None else None,
            max_gap_s=ex.max_gap_s,
            streaming=ex.streaming,
        )
        for observer in state.observers:
            try:
                observer.request_finished(finished)
            except Exception:
                state.log.exception("observer %r failed", observer)


def _record(ex: Exchange, u: Usage, usage_status: str, cost: Decimal | None, cost_status: str) -> LedgerRecord:
    first_byte_at = ex.first_byte_at
    # Positional, in LedgerRecord's field order (two of these per request; keywords cost three times as much).
    return LedgerRecord(
        ex.request_id,
        ex.started_time,
        ex.key_name,
        ex.upstream.provider.name if ex.upstream else None,
        ex.model,
        ex.endpoint_path,
        ex.outcome,
        ex.status,
        u.input_tokens,
        u.cached_tokens,
        u.cache_write_tokens,
        u.output_tokens,
        u.reasoning_tokens,
        usage_status,
        format(cost, "f") if cost is not None else None,
        cost_status,
        u.raw or None,
        (first_byte_at - ex.started_at) * 1000 if first_byte_at is not None else None,
        (time.perf_counter() - ex.started_at) * 1000,
        ex.bytes_to_client,
        ex.attempts,
    )


def _tell_started(state: ProxyState, ex: Exchange) -> None:
    # The journal first: from here on the request leaves a record even if the process is killed.
    state.ledger.started(_record(ex, Usage(), "missing", None, "unpriced"))
    if not state.observers:
        return
    assert ex.upstream is not None and ex.model is not None
    started = Started(
        ex.request_id, ex.key_name, ex.upstream.provider.name, ex.dialect.name, ex.model, ex.endpoint_path
    )
    for observer in state.observers:
        try:
            observer.request_started(started)
        except Exception:
            state.log.exception("observer %r failed", observer)


async def _send_json(ex: Exchange, send: Send, status: int, body: bytes, headers: h.Headers | None = None) -> None:
    out = [
        *(headers if headers is not None else [(b"content-type", b"application/json")]),
        (b"content-length", str(len(body)).encode()),
        *identity_headers(ex),
    ]
    if ex.close_connection:
        out.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": out})
    ex.response_started = True
    ex.status = status
    ex.first_byte_at = time.perf_counter()
    await send({"type": "http.response.body", "body": body, "more_body": False})
    ex.bytes_to_client += len(body)


async def _send_error(ex: Exchange, send: Send, exc: ProxyError) -> None:
    if ex.response_started:
        return
    status, headers, body = ex.dialect.error_response(exc)
    await _send_json(ex, send, status, body, headers)
