"""Faults and bad input, as a client sees them: keep-alives during a silent upstream that no SDK notices, a
cut-short plain body that does not look complete, and bad requests refused in the dialect's format before
anything reaches an upstream."""

from __future__ import annotations

import json
import pathlib
from collections.abc import Iterator

import anthropic
import httpx
import openai
import pytest
from google import genai

from tests.servers import CLIENT_KEY, UPSTREAM_KEY_ENV, UPSTREAM_SECRET, Script, Stack, send_raw, start_stack

AUTH = {"authorization": f"Bearer {CLIENT_KEY}"}
REQUEST = {"model": "gpt-4o-mini", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
CHUNK = b'data: {"id":"c","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"content":"%s"}}]}\n\n'


@pytest.fixture
def stack(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Stack]:
    monkeypatch.setenv(UPSTREAM_KEY_ENV, UPSTREAM_SECRET)
    yield from start_stack(tmp_path, server_extra="keepalive_ping_s = 0.2\nbody_timeout_s = 0.5")


# --- keep-alives --------------------------------------------------------------------------------------------------


def test_a_silent_upstream_gets_pings_between_frames_only(stack: Stack) -> None:
    body = CHUNK % b"one" + CHUNK % b"two" + b"data: [DONE]\n\n"
    first = len(CHUNK % b"one")
    # The first frame, then 1 s of silence; then half a frame, 1 s of silence inside it, and the rest.
    half = first + 30
    stack.upstream.script = Script(body=body, chunk_sizes=[first, 30, len(body)], pause_s=1.0)
    with httpx.stream("POST", stack.url + "/v1/chat/completions", json=REQUEST, headers=AUTH, timeout=10) as reply:
        got = b"".join(reply.iter_raw())
    ping = b": ping\n\n"
    pings = got.count(ping)
    assert pings >= 3  # about five in the first second of silence
    assert got.replace(ping, b"") == body  # nothing else changed ...
    assert got[first : first + pings * len(ping)] == ping * pings  # ... all of them between the first two frames
    assert got[first + pings * len(ping) :] == body[first:]  # none in the silence inside the half-sent frame
    assert half > first


def test_every_sdk_ignores_its_keepalive(stack: Stack, shared_fixtures: pathlib.Path) -> None:
    chat = CHUNK % b"one" + CHUNK % b"two" + b"data: [DONE]\n\n"
    stack.upstream.script = Script(body=chat, chunk_sizes=[len(CHUNK % b"one")], pause_s=0.7)
    with openai.OpenAI(base_url=stack.url + "/v1", api_key=CLIENT_KEY, max_retries=0) as client:
        text = "".join(
            c.choices[0].delta.content or ""
            for c in client.chat.completions.create(model="gpt-4o-mini", messages=[], stream=True)
            if c.choices
        )
    assert text == "onetwo"

    messages = (shared_fixtures / "anthropic/messages_basic.sse").read_bytes()
    cut = messages.index(b"\n\n") + 2
    stack.upstream.script = Script(body=messages, chunk_sizes=[cut, len(messages)], pause_s=0.7)
    with anthropic.Anthropic(base_url=stack.url, api_key=CLIENT_KEY, max_retries=0) as ac:
        events = list(ac.messages.create(model="claude-x", max_tokens=5, messages=[], stream=True))
    assert events[0].type == "message_start"
    assert "".join(e.delta.text for e in events if e.type == "content_block_delta") == "Hello there!"

    gemini = (shared_fixtures / "gemini/stream_basic.sse").read_bytes()
    cut = gemini.index(b"\r\n\r\n") + 4
    stack.upstream.script = Script(body=gemini, chunk_sizes=[cut, len(gemini)], pause_s=0.7)
    gc = genai.Client(api_key=CLIENT_KEY, http_options={"base_url": stack.url})
    chunks = list(gc.models.generate_content_stream(model="gemini-2.0-flash", contents="hi"))
    assert "".join(c.text or "" for c in chunks).startswith("The")

    records = stack.records(at_least=3)
    assert [r.usage_status for r in records] == ["missing", "reported", "reported"]  # the chat capture had no usage


def test_keepalive_can_be_turned_off(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(UPSTREAM_KEY_ENV, UPSTREAM_SECRET)
    for stack in start_stack(tmp_path, server_extra="keepalive_ping_s = 0"):
        body = CHUNK % b"one" + b"data: [DONE]\n\n"
        stack.upstream.script = Script(body=body, chunk_sizes=[len(CHUNK % b"one")], pause_s=0.6)
        reply = httpx.post(stack.url + "/v1/chat/completions", json=REQUEST, headers=AUTH, timeout=10)
        assert reply.content == body


# --- a plain body cut short ---------------------------------------------------------------------------------------


def test_a_cut_short_json_body_does_not_end_cleanly(stack: Stack) -> None:
    body = json.dumps({"id": "x", "choices": [{"message": {"content": "y" * 5000}}]}).encode()
    stack.upstream.script = Script(body=body, content_type=b"application/json", chunk_sizes=[1000], cut_after=2000)
    with pytest.raises(httpx.RemoteProtocolError):
        httpx.post(stack.url + "/v1/chat/completions", json={**REQUEST, "stream": False}, headers=AUTH, timeout=10)
    [record] = stack.records()
    assert record.outcome == "upstream_error"


# --- what the proxy refuses before any upstream call --------------------------------------------------------------


def raw(stack: Stack, head: bytes, body: bytes = b"", read_s: float = 3.0) -> bytes:
    return send_raw(stack.proxy.port, head + body, read_s)


def post_head(length: int, extra: str = "") -> bytes:
    return (
        f"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {CLIENT_KEY}\r\n"
        f"content-type: application/json\r\ncontent-length: {length}\r\n{extra}\r\n"
    ).encode()


@pytest.mark.parametrize(
    ("body", "why"),
    [
        (b'{"model": "gpt-4o-mini", "messages": [], "x": "\xff\xfe"}', "invalid UTF-8"),
        (b'{"model": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", "nested 100,000 deep"),
        (json.dumps({"model": "gpt-4o-mini\r\nx-evil: 1", "messages": []}).encode(), "CR/LF in the model"),
        (json.dumps({"model": "gpt-4o\x00", "messages": []}).encode(), "NUL in the model"),
        (json.dumps({"model": "gpt-" + "a" * 600, "messages": []}).encode(), "a model name past the bound"),
        (json.dumps({"model": 42, "messages": []}).encode(), "a model that is not a string"),
        (b"[]", "not an object"),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_bad_bodies_get_a_clear_400_and_reach_no_upstream(stack: Stack, body: bytes, why: str) -> None:
    reply = httpx.post(
        stack.url + "/v1/chat/completions",
        content=body,
        headers={**AUTH, "content-type": "application/json"},
        timeout=10,
    )
    assert reply.status_code == 400, why
    assert reply.json()["error"]["type"] == "invalid_request_error"
    assert stack.upstream.requests == []


def test_too_many_headers_get_431(stack: Stack) -> None:
    headers = {**AUTH, **{f"x-h{i}": "v" for i in range(200)}}
    reply = httpx.post(stack.url + "/v1/chat/completions", json=REQUEST, headers=headers, timeout=10)
    assert reply.status_code == 431
    assert stack.upstream.requests == []


def test_content_length_with_transfer_encoding_is_refused_and_the_connection_closed(stack: Stack) -> None:
    body = json.dumps(REQUEST).encode()
    smuggled = b"GET /v1/models HTTP/1.1\r\nhost: x\r\nauthorization: Bearer " + CLIENT_KEY.encode() + b"\r\n\r\n"
    chunked = hex(len(body))[2:].encode() + b"\r\n" + body + b"\r\n0\r\n\r\n"
    out = raw(stack, post_head(len(body), "transfer-encoding: chunked\r\n"), chunked + smuggled)
    assert out.startswith(b"HTTP/1.1 400")
    assert out.count(b"HTTP/1.1 ") == 1  # the bytes after the body were not answered as a second request
    assert stack.upstream.requests == []


def test_a_client_that_stalls_its_body_gets_408(stack: Stack) -> None:
    out = raw(stack, post_head(100), b'{"model": "gpt-4o-mini"', read_s=3.0)
    assert out.startswith(b"HTTP/1.1 408")
    assert b"request_timeout" in out
    assert stack.upstream.requests == []


def test_upstream_cannot_spoof_the_proxys_headers(stack: Stack) -> None:
    stack.upstream.script = Script(
        body=CHUNK % b"x" + b"data: [DONE]\n\n",
        headers=[(b"x-teeproxy-provider", b"spoofed"), (b"x-teeproxy-cost-usd", b"0"), (b"cache-control", b"no-cache")],
    )
    reply = httpx.post(stack.url + "/v1/chat/completions", json=REQUEST, headers=AUTH, timeout=10)
    assert reply.headers.get_list("x-teeproxy-provider") == ["replay"]
    assert "x-teeproxy-cost-usd" not in reply.headers
    assert reply.headers.get_list("cache-control") == ["no-cache"]  # not twice


def test_openai_responses_stream_yields_error_and_failed_events_after_a_cut(
    stack: Stack, shared_fixtures: pathlib.Path
) -> None:
    """The Responses stream does not raise on errors; it yields the API's `error` and `response.failed` events,
    which the proxy sends (in the API's own shape) when the upstream fails mid-stream."""
    body = (shared_fixtures / "openai_responses/responses_basic.sse").read_bytes()
    cut = body.index(b"\n\n", 1500) + 2
    stack.upstream.script = Script(body=body, chunk_sizes=[cut], cut_after=cut)
    with openai.OpenAI(base_url=stack.url + "/v1", api_key=CLIENT_KEY, max_retries=0) as client:
        events = list(client.responses.create(model="gpt-4o", input="hi", stream=True))
    kinds = [event.type for event in events]
    assert kinds[-2:] == ["error", "response.failed"]
    assert events[-2].code == "upstream_protocol_error"  # type: ignore[union-attr]
    [record] = stack.records()
    assert record.outcome == "upstream_error"
