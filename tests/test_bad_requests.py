"""Requests a client (or an attacker) shapes badly: each is refused, by hypercorn/h11 before the app or by the
proxy in the dialect's format, and none reaches an upstream or picks another host."""

from __future__ import annotations

import json
import pathlib
from collections.abc import Iterator

import pytest

from tests.servers import CLIENT_KEY, UPSTREAM_KEY_ENV, UPSTREAM_SECRET, Script, Stack, send_raw, start_stack

BODY = json.dumps({"model": "gpt-4o-mini", "messages": []}).encode()


@pytest.fixture
def stack(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Stack]:
    monkeypatch.setenv(UPSTREAM_KEY_ENV, UPSTREAM_SECRET)
    yield from start_stack(tmp_path)


def exchange(stack: Stack, raw: bytes) -> bytes:
    return send_raw(stack.proxy.port, raw)


def request(target: bytes, extra: bytes = b"", host: bytes = b"127.0.0.1") -> bytes:
    return (
        b"POST " + target + b" HTTP/1.1\r\nhost: " + host + b"\r\nauthorization: Bearer " + CLIENT_KEY.encode()
        + b"\r\ncontent-type: application/json\r\ncontent-length: " + str(len(BODY)).encode() + b"\r\n"
        + extra + b"\r\n" + BODY
    )  # fmt: skip


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        (request(b"/v1/chat/completions", b"x-evil: a\rb\r\n"), b"400"),  # CR inside a header value: h11
        (request(b"/v1/chat/completions", b"x-evil: a\x00b\r\n"), b"400"),  # NUL in a header value: h11
        (request(b"http://169.254.169.254/v1/chat/completions"), b"404"),  # absolute-form: no host is chosen
        (request(b"/v1/../v1/chat/completions"), b"404"),  # not normalized into a known path
        (request(b"/v1/chat/completions\x01"), b"400"),  # a control character in the target: h11
        (request(b"/v1/chat/completions", b"x-a: 1\nx-b: 2\r\n"), b"400"),  # a bare LF in the head: h11_strict
    ],
    ids=["cr-in-header", "nul-in-header", "absolute-form", "dot-dot", "control-in-target", "bare-lf-in-head"],
)
def test_malformed_requests_are_refused_and_reach_no_upstream(stack: Stack, raw: bytes, status: bytes) -> None:
    out = exchange(stack, raw)
    assert out.startswith(b"HTTP/1.1 " + status), out[:200]
    assert stack.upstream.requests == []


def test_the_host_header_chooses_nothing(stack: Stack) -> None:
    stack.upstream.script = Script(body=b'{"ok": true}', content_type=b"application/json")
    out = exchange(stack, request(b"/v1/chat/completions?key=x", host=b"api.evil.example"))
    assert out.startswith(b"HTTP/1.1 200")
    [seen] = stack.upstream.requests  # served by the configured upstream, whatever Host said
    assert seen.header(b"host") == f"127.0.0.1:{stack.upstream.server.port}".encode()


def test_a_websocket_upgrade_is_refused(stack: Stack) -> None:
    raw = (
        b"GET /v1/chat/completions HTTP/1.1\r\nhost: x\r\nconnection: Upgrade\r\nupgrade: websocket\r\n"
        b"sec-websocket-version: 13\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    )
    out = exchange(stack, raw)
    assert out.startswith(b"HTTP/1.1 403")
    assert b"Traceback" not in out
    assert stack.upstream.requests == []


# --- CORS -----------------------------------------------------------------------------------------------------


def test_cors_is_off_by_default(stack: Stack) -> None:
    import httpx

    reply = httpx.options(stack.url + "/v1/chat/completions", headers={"origin": "http://localhost:3000"})
    assert reply.status_code == 401  # no key: a preflight is just an unauthenticated request
    assert "access-control-allow-origin" not in reply.headers


def test_cors_preflight_and_response_headers_for_a_listed_origin(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import httpx

    monkeypatch.setenv(UPSTREAM_KEY_ENV, UPSTREAM_SECRET)
    for stack in start_stack(tmp_path, server_extra='cors_origins = ["http://localhost:3000"]'):
        preflight = httpx.options(
            stack.url + "/v1/chat/completions",
            headers={
                "origin": "http://localhost:3000",
                "access-control-request-method": "POST",
                "access-control-request-headers": "authorization, content-type",
            },
        )
        assert preflight.status_code == 204
        assert preflight.headers["access-control-allow-origin"] == "http://localhost:3000"
        assert preflight.headers["access-control-allow-headers"] == "authorization, content-type"
        stack.upstream.script = Script(body=b'{"ok": true}', content_type=b"application/json")
        reply = httpx.post(
            stack.url + "/v1/chat/completions",
            content=BODY,
            headers={"origin": "http://localhost:3000", "authorization": f"Bearer {CLIENT_KEY}"},
        )
        assert reply.status_code == 200
        assert reply.headers["access-control-allow-origin"] == "http://localhost:3000"
        assert "x-teeproxy-request-id" in reply.headers["access-control-expose-headers"]
        other = httpx.options(stack.url + "/v1/chat/completions", headers={"origin": "http://evil.example"})
        assert other.status_code == 401 and "access-control-allow-origin" not in other.headers
