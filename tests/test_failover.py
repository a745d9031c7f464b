"""Failover and retries before the first byte, as a client sees them: the answer comes from the provider that
could serve, the headers say how many attempts it took and why, the ledger keeps one record with the provider
that served; once a byte has reached the client nothing is retried; a client that leaves while the proxy waits
ends the wait at once."""

from __future__ import annotations

import json
import pathlib
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import anthropic
import httpx
import openai
import pytest

from proxy.config import parse_config
from proxy.failover import Plan, attempt_order, backoff_s, retry_after_s
from tests.servers import (
    CLIENT_KEY,
    CLIENT_KEY_SHA256,
    UPSTREAM_KEY_ENV,
    UPSTREAM_SECRET,
    LoopThread,
    ProxyServer,
    ReplayUpstream,
    Script,
    free_port,
)

CHAT = b'data: {"id":"c","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"content":"hi"}}]}\n\ndata: {"id":"c","object":"chat.completion.chunk","choices":[],"usage":{"prompt_tokens":3,"completion_tokens":1,"total_tokens":4}}\n\ndata: [DONE]\n\n'  # noqa: E501
ANTHROPIC = (
    b'event: message_start\ndata: {"type":"message_start","message":{"id":"m","type":"message","role":"assistant",'
    b'"content":[],"model":"claude-x","usage":{"input_tokens":5,"output_tokens":1}}}\n\n'
    b'event: message_delta\ndata: {"type":"message_delta","delta":{"stop_reason":"end_turn"},'
    b'"usage":{"output_tokens":2}}\n\n'
    b'event: message_stop\ndata: {"type":"message_stop"}\n\n'
)
REQUEST = {"model": "gpt-4o-mini", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
AUTH = {"authorization": f"Bearer {CLIENT_KEY}"}


@dataclass
class TwoProviders:
    loop: LoopThread
    a: ReplayUpstream
    b: ReplayUpstream
    proxy: ProxyServer

    @property
    def url(self) -> str:
        return self.proxy.url

    def records(self, at_least: int = 1) -> list[Any]:
        state = self.proxy.app.state
        deadline = time.monotonic() + 10
        while True:
            self.loop.run(state.ledger.flush())
            records = state.ledger.query(None, None)
            if len(records) >= at_least or time.monotonic() > deadline:
                return records
            time.sleep(0.02)


def config_text(a_url: str, b_url: str, tmp: pathlib.Path, route_extra: str, provider_extra: str) -> str:
    return f"""
[server]
bind = "127.0.0.1:0"

[ledger]
path = "{tmp / "ledger.db"}"

[retry]
backoff_initial_s = 0.05
backoff_max_s = 0.2
retry_after_cap_s = 1.0

[[providers]]
name = "a"
base_url = "{a_url}"
api_key_env = "{UPSTREAM_KEY_ENV}"
{provider_extra}

[[providers]]
name = "b"
base_url = "{b_url}"
api_key_env = "{UPSTREAM_KEY_ENV}"

[[providers]]
name = "claude-a"
dialect = "anthropic"
base_url = "{a_url.removesuffix("/v1")}"
api_key_env = "{UPSTREAM_KEY_ENV}"

[[providers]]
name = "claude-b"
dialect = "anthropic"
base_url = "{b_url.removesuffix("/v1")}"
api_key_env = "{UPSTREAM_KEY_ENV}"

[[routes]]
models = ["gpt-*"]
providers = ["a", "b"]
{route_extra}

[[routes]]
models = ["claude-*"]
providers = ["claude-a", "claude-b"]

[[keys]]
name = "tester"
sha256 = "{CLIENT_KEY_SHA256}"
"""


def start(
    tmp: pathlib.Path, route_extra: str = "", provider_extra: str = "", a_unreachable: bool = False
) -> Iterator[TwoProviders]:
    loop = LoopThread()
    a, b = ReplayUpstream(), ReplayUpstream()
    loop.run(a.server.start())
    loop.run(b.server.start())
    a_url = f"http://127.0.0.1:{free_port()}/v1" if a_unreachable else a.base_url
    config = parse_config(config_text(a_url, b.base_url, tmp, route_extra, provider_extra), "failover-test")
    proxy = ProxyServer(loop, config)
    proxy.start()
    try:
        yield TwoProviders(loop, a, b, proxy)
    finally:
        proxy.stop()
        loop.run(a.server.aclose())
        loop.run(b.server.aclose())
        loop.close()


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(UPSTREAM_KEY_ENV, UPSTREAM_SECRET)


@pytest.fixture
def pair(tmp_path: pathlib.Path, env: None) -> Iterator[TwoProviders]:
    yield from start(tmp_path)


def post(pair: TwoProviders, body: dict[str, Any] | None = None, path: str = "/v1/chat/completions") -> httpx.Response:
    return httpx.post(pair.url + path, json=body or REQUEST, headers=AUTH, timeout=20)


@pytest.mark.parametrize("status", [408, 429, 500, 502, 503, 504, 529])
def test_a_failing_first_provider_moves_to_the_second(pair: TwoProviders, status: int) -> None:
    pair.a.script = Script(body=b'{"error": {"message": "busy"}}', status=status, content_type=b"application/json")
    pair.b.script = Script(body=CHAT)
    reply = post(pair)
    assert reply.status_code == 200
    assert b"data: [DONE]" in reply.content
    assert reply.headers["x-teeproxy-attempts"] == "2"
    assert reply.headers["x-teeproxy-reason"] == f"failover:{status}"
    assert reply.headers["x-teeproxy-provider"] == "b"
    [record] = pair.records()
    assert (record.provider, record.attempts, record.outcome, record.input_tokens) == ("b", 2, "completed", 3)
    assert len(pair.a.requests) == len(pair.b.requests) == 1


def test_other_client_errors_go_to_the_client_as_they_are(pair: TwoProviders) -> None:
    pair.a.script = Script(body=b'{"error": {"message": "bad"}}', status=400, content_type=b"application/json")
    reply = post(pair)
    assert (reply.status_code, reply.json()) == (400, {"error": {"message": "bad"}})
    assert (reply.headers["x-teeproxy-attempts"], reply.headers["x-teeproxy-reason"]) == ("1", "routed")
    assert pair.b.requests == []
    [record] = pair.records()
    assert (record.provider, record.attempts, record.http_status) == ("a", 1, 400)


def test_the_last_failure_reaches_the_client_when_every_provider_fails(pair: TwoProviders) -> None:
    pair.a.script = Script(body=b'{"error": {"message": "a down"}}', status=503, content_type=b"application/json")
    pair.b.script = Script(body=b'{"error": {"message": "b down"}}', status=502, content_type=b"application/json")
    reply = post(pair)
    assert (reply.status_code, reply.json()) == (502, {"error": {"message": "b down"}})
    assert reply.headers["x-teeproxy-attempts"] == "2"
    [record] = pair.records()
    assert (record.provider, record.attempts, record.http_status) == ("b", 2, 502)


def test_unreachable_first_provider_fails_over(tmp_path: pathlib.Path, env: None) -> None:
    for pair in start(tmp_path, a_unreachable=True):
        pair.b.script = Script(body=CHAT)
        reply = post(pair)
        assert reply.status_code == 200
        assert reply.headers["x-teeproxy-reason"] == "failover:connect"
        [record] = pair.records()
        assert (record.provider, record.attempts) == ("b", 2)


def test_no_response_head_in_time_fails_over(tmp_path: pathlib.Path, env: None) -> None:
    for pair in start(tmp_path, provider_extra="first_byte_timeout_s = 0.3"):
        pair.a.script = Script(body=CHAT, head_pause_s=5)
        pair.b.script = Script(body=CHAT)
        started = time.monotonic()
        reply = post(pair)
        assert reply.status_code == 200 and time.monotonic() - started < 3
        assert reply.headers["x-teeproxy-reason"] == "failover:first_byte_timeout"


def test_weights_choose_the_first_attempt(tmp_path: pathlib.Path, env: None) -> None:
    for pair in start(tmp_path, route_extra="weights = [0, 1]"):
        pair.b.script = Script(body=CHAT)
        for _ in range(3):
            reply = post(pair)
            assert (reply.headers["x-teeproxy-provider"], reply.headers["x-teeproxy-reason"]) == ("b", "weighted")
        assert pair.a.requests == []


def one_provider(tmp: pathlib.Path, route_extra: str) -> Iterator[tuple[ReplayUpstream, ProxyServer]]:
    """A route with a single provider (`a`), for repeats on the same provider."""
    loop = LoopThread()
    a = ReplayUpstream()
    loop.run(a.server.start())
    text = config_text(a.base_url, a.base_url, tmp, route_extra, "").replace(
        'providers = ["a", "b"]', 'providers = ["a"]'
    )
    proxy = ProxyServer(loop, parse_config(text, "one-provider"))
    proxy.start()
    try:
        yield a, proxy
    finally:
        proxy.stop()
        loop.run(a.server.aclose())
        loop.close()


def too_many(retry_after: bytes) -> Script:
    return Script(
        body=b'{"error": {"message": "slow down"}}',
        status=429,
        content_type=b"application/json",
        headers=[(b"retry-after", retry_after)],
    )


def test_retry_after_within_the_cap_is_waited_for_on_the_same_provider(tmp_path: pathlib.Path, env: None) -> None:
    for a, proxy in one_provider(tmp_path, "max_attempts = 2"):
        scripts = iter([too_many(b"1"), Script(body=CHAT)])
        a.script = lambda request, scripts=scripts: next(scripts)
        started = time.monotonic()
        reply = httpx.post(proxy.url + "/v1/chat/completions", json=REQUEST, headers=AUTH, timeout=20)
        waited = time.monotonic() - started
        assert reply.status_code == 200
        assert (reply.headers["x-teeproxy-attempts"], reply.headers["x-teeproxy-reason"]) == ("2", "failover:429")
        assert 0.9 < waited < 5  # the upstream asked for one second, within the 1 s cap


def test_retry_after_beyond_the_cap_with_no_one_else_goes_to_the_client(tmp_path: pathlib.Path, env: None) -> None:
    for a, proxy in one_provider(tmp_path, "max_attempts = 3"):
        a.script = too_many(b"3600")
        started = time.monotonic()
        reply = httpx.post(proxy.url + "/v1/chat/completions", json=REQUEST, headers=AUTH, timeout=20)
        assert time.monotonic() - started < 2
        assert (reply.status_code, reply.headers["retry-after"]) == (429, "3600")  # the client can wait it out
        assert reply.headers["x-teeproxy-attempts"] == "1"
        assert len(a.requests) == 1


def test_retry_after_beyond_the_cap_moves_on_at_once(pair: TwoProviders) -> None:
    pair.a.script = Script(
        body=b'{"error": {}}', status=429, content_type=b"application/json", headers=[(b"retry-after", b"3600")]
    )
    pair.b.script = Script(body=CHAT)
    started = time.monotonic()
    reply = post(pair)
    assert reply.status_code == 200 and time.monotonic() - started < 2
    assert reply.headers["x-teeproxy-provider"] == "b"


def test_an_error_as_first_event_fails_over_with_the_gate(tmp_path: pathlib.Path, env: None) -> None:
    error_first = b'data: {"error": {"message": "overloaded", "type": "server_error"}}\n\n'
    for pair in start(tmp_path, route_extra="gate_first_chunk = true"):
        pair.a.script = Script(body=error_first)
        pair.b.script = Script(body=CHAT)
        reply = post(pair)
        assert reply.status_code == 200 and b"overloaded" not in reply.content
        assert reply.headers["x-teeproxy-reason"] == "failover:error_event"
    (tmp_path / "nogate").mkdir()
    for pair in start(tmp_path / "nogate"):
        pair.a.script = Script(body=error_first)
        pair.b.script = Script(body=CHAT)
        assert b"overloaded" in post(pair).content  # without the gate the first provider's 200 stands


def test_nothing_is_retried_after_the_first_byte(pair: TwoProviders) -> None:
    pair.a.script = Script(body=CHAT, chunk_sizes=[40], cut_after=40)
    pair.b.script = Script(body=CHAT)
    reply = post(pair)
    assert reply.status_code == 200
    assert reply.content.startswith(CHAT[:40])
    assert b'"upstream_protocol_error"' in reply.content  # the in-stream error, not a second answer
    assert pair.b.requests == []
    [record] = pair.records()
    assert (record.provider, record.attempts, record.outcome) == ("a", 1, "upstream_error")


def test_anthropic_529_fails_over_and_the_sdk_sees_one_answer(pair: TwoProviders) -> None:
    overloaded = b'{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}'
    pair.a.script = Script(body=overloaded, status=529, content_type=b"application/json")
    pair.b.script = Script(body=ANTHROPIC)
    with anthropic.Anthropic(base_url=pair.url, api_key=CLIENT_KEY, max_retries=0) as client:
        events = list(client.messages.create(model="claude-x", max_tokens=5, messages=[], stream=True))
    assert [e.type for e in events] == ["message_start", "message_delta", "message_stop"]
    [record] = pair.records()
    assert (record.provider, record.attempts, record.output_tokens) == ("claude-b", 2, 2)


def test_openai_sdk_sees_the_failover_answer(pair: TwoProviders) -> None:
    pair.a.script = Script(body=b'{"error": {"message": "busy"}}', status=503, content_type=b"application/json")
    pair.b.script = Script(body=CHAT)
    client = openai.OpenAI(base_url=pair.url + "/v1", api_key=CLIENT_KEY, max_retries=0)
    with client:
        text = "".join(
            c.choices[0].delta.content or ""
            for c in client.chat.completions.create(model="gpt-4o-mini", messages=[], stream=True)
            if c.choices
        )
    assert text == "hi"


def raw_request(port: int, body: bytes) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    head = (
        f"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {CLIENT_KEY}\r\n"
        f"content-type: application/json\r\ncontent-length: {len(body)}\r\n\r\n"
    )
    sock.sendall(head.encode() + body)
    return sock


def test_a_client_leaving_before_the_head_ends_the_wait(pair: TwoProviders) -> None:
    pair.a.script = Script(body=CHAT, head_pause_s=30)
    sock = raw_request(pair.proxy.port, json.dumps(REQUEST).encode())
    deadline = time.monotonic() + 5
    while not pair.a.requests and time.monotonic() < deadline:
        time.sleep(0.01)
    left = time.monotonic()
    sock.close()
    [record] = pair.records()
    assert record.outcome == "client_disconnected"
    assert record.duration_ms < 5_000  # not the read timeout
    assert time.monotonic() - left < 5


def test_a_client_leaving_during_backoff_ends_it(tmp_path: pathlib.Path, env: None) -> None:
    for pair in start(tmp_path, route_extra="max_attempts = 4"):
        pair.a.script = Script(
            body=b"{}", status=429, content_type=b"application/json", headers=[(b"retry-after", b"1")]
        )
        pair.b.script = Script(
            body=b"{}", status=429, content_type=b"application/json", headers=[(b"retry-after", b"1")]
        )
        sock = raw_request(pair.proxy.port, json.dumps(REQUEST).encode())
        deadline = time.monotonic() + 5
        while not pair.b.requests and time.monotonic() < deadline:
            time.sleep(0.01)
        sock.close()  # the proxy is now waiting out b's Retry-After before trying a again
        [record] = pair.records()
        assert record.outcome == "client_disconnected"
        time.sleep(1.5)
        assert len(pair.a.requests) == 1  # no attempt after the client left


# --- the plan itself ----------------------------------------------------------------------------------------------


def test_attempt_order_wraps_and_weights_pick_the_start() -> None:
    import random

    from proxy.config import ProviderConfig
    from proxy.providers.base import Upstream

    ups = tuple(Upstream(ProviderConfig(name=n, base_url="http://x"), "http://x", None) for n in "abc")
    order, reason = attempt_order(Plan(ups, None, 5, False))
    assert [u.provider.name for u in order] == ["a", "b", "c", "a", "b"] and reason == "routed"
    order, reason = attempt_order(Plan(ups, (0, 0, 1), 3, False), random.Random(1))
    assert [u.provider.name for u in order] == ["c", "a", "b"] and reason == "weighted"


def test_retry_after_and_backoff() -> None:
    import random

    assert retry_after_s("7") == 7.0
    assert retry_after_s("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412470.0) == 10.0
    assert retry_after_s("soon") is None and retry_after_s(None) is None
    rng = random.Random(0)
    draws = [backoff_s(n, 0.1, 1.0, rng) for n in range(8) for _ in range(50)]
    assert all(0 <= d < 1.0 for d in draws)
    assert max(backoff_s(0, 0.1, 1.0, rng) for _ in range(100)) < 0.1
