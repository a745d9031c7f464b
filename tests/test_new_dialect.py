"""A new dialect is one module and one registry line: nothing in forward.py changes.

This test writes a toy dialect here (JSON in, a JSON body with `{"tokens": {"in": N, "out": M}}` out, its own
error shape), registers it the way `proxy/providers/__init__.py` says, and serves it through the real proxy:
the request is routed, authenticated where this dialect puts its key, sent with the provider's credentials,
metered, recorded in the ledger, and its errors come in its own format.
"""

from __future__ import annotations

import json
import pathlib
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import msgspec
import pytest

from proxy import providers
from proxy.config import ProviderConfig, RouteConfig, parse_config
from proxy.errors import ProxyError
from proxy.providers.base import FrameFilter, Headers, Incoming, Outgoing, Route, StreamMeter, Upstream
from proxy.usage import Usage
from tests.servers import (
    CLIENT_KEY,
    UPSTREAM_KEY_ENV,
    UPSTREAM_SECRET,
    LoopThread,
    ProxyServer,
    ReplayUpstream,
    Script,
    proxy_config_text,
    root_url,
)


class _Tokens(msgspec.Struct):
    tokens: dict[str, int] | None = None


class ToyDialect:
    name = "toy"

    def match(self, incoming: Incoming) -> Route | None:
        return Route(kind="generate", upstream_path="/generate") if incoming.path == "/toy/generate" else None

    def client_key(self, incoming: Incoming) -> bytes | None:
        return dict(incoming.headers).get(b"x-toy-key")

    def request_fields(self, route: Route, request: dict[str, Any], provider: ProviderConfig) -> dict[str, Any] | None:
        return None

    def attach_credentials(self, outgoing: Outgoing, upstream: Upstream) -> None:
        outgoing.headers.append((b"x-toy-upstream-key", (upstream.api_key or "").encode()))

    def is_stream(self, route: Route, content_type: str) -> bool:
        return False

    def stream_meter(self, route: Route) -> StreamMeter:
        raise AssertionError("the toy dialect never streams")

    def body_usage(self, route: Route, body: bytes, headers: Headers) -> Usage | None:
        tokens = msgspec.json.decode(body, type=_Tokens).tokens
        if tokens is None:
            return None
        return Usage(input_tokens=tokens["in"], output_tokens=tokens["out"], raw=json.dumps(tokens))

    def frame_filter(
        self, route: Route, meter: StreamMeter, strip_usage_frame: bool, comment: Callable[[], bytes] | None
    ) -> FrameFilter | None:
        return None

    def error_response(self, exc: ProxyError) -> tuple[int, Headers, bytes]:
        return exc.status, [(b"content-type", b"application/json")], json.dumps({"toy_error": exc.message}).encode()

    def stream_error(self, route: Route, exc: ProxyError, after: bytes = b"") -> bytes:
        return b""

    def models_body(self, models: list[tuple[str, str]]) -> bytes:
        return b"[]"


@pytest.fixture
def toy_stack(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, ReplayUpstream, Any]]:
    monkeypatch.setenv(UPSTREAM_KEY_ENV, UPSTREAM_SECRET)
    monkeypatch.setitem(providers.DIALECTS, "toy", ToyDialect())  # the registry line
    loop = LoopThread()
    upstream = ReplayUpstream()
    loop.run(upstream.server.start())
    config = parse_config(proxy_config_text(upstream.base_url, str(tmp_path / "ledger.db")), "toy")
    # A config naming the new dialect (the Literal in proxy.config is where a real one is added).
    config.providers.append(
        ProviderConfig(
            name="toy-provider", dialect="toy", base_url=root_url(upstream.base_url), api_key_env=UPSTREAM_KEY_ENV
        )  # type: ignore[arg-type]
    )
    config.routes.append(RouteConfig(models=["toy-*"], providers=["toy-provider"]))
    proxy = ProxyServer(loop, config)
    proxy.start()
    try:
        yield proxy.url, upstream, proxy
    finally:
        proxy.stop()
        loop.run(upstream.server.aclose())
        loop.close()


def test_a_new_dialect_is_served_metered_and_recorded(toy_stack: tuple[str, ReplayUpstream, Any]) -> None:
    url, upstream, proxy = toy_stack
    upstream.script = Script(body=b'{"text": "hi", "tokens": {"in": 7, "out": 3}}', content_type=b"application/json")
    reply = httpx.post(f"{url}/toy/generate", json={"model": "toy-1"}, headers={"x-toy-key": CLIENT_KEY})
    assert reply.status_code == 200 and reply.json()["text"] == "hi"
    [seen] = upstream.requests
    assert (seen.path, seen.header(b"x-toy-upstream-key")) == ("/generate", UPSTREAM_SECRET.encode())

    wrong = httpx.post(f"{url}/toy/generate", json={"model": "toy-1"}, headers={"x-toy-key": "nope"})
    assert (wrong.status_code, wrong.json()) == (401, {"toy_error": "Incorrect API key provided."})

    state = proxy.app.state
    proxy._loop.run(state.ledger.flush())
    [record] = state.ledger.query(None, None)
    assert (record.provider, record.model, record.input_tokens, record.output_tokens) == ("toy-provider", "toy-1", 7, 3)
