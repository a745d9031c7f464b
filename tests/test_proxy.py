"""The spine, end to end: real hypercorn, real openai SDK and httpx over loopback, a replay upstream."""

from __future__ import annotations

import asyncio
import json
import logging
import pathlib
import time
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from tests.servers import CLIENT_KEY, UPSTREAM_KEY_ENV, UPSTREAM_SECRET, Script, Stack, h11_post, start_stack

SMALL_CHAT_STREAM = (
    b'data: {"id":"c1","object":"chat.completion.chunk","created":1,"model":"gpt-4o-mini","choices":[{"index":0,'
    b'"delta":{"role":"assistant","content":""},"finish_reason":null}]}\n\n'
    b'data: {"id":"c1","object":"chat.completion.chunk","created":1,"model":"gpt-4o-mini","choices":[{"index":0,'
    b'"delta":{"content":"Hello"},"finish_reason":null}]}\n\n'
    b'data: {"id":"c1","object":"chat.completion.chunk","created":1,"model":"gpt-4o-mini","choices":[{"index":0,'
    b'"delta":{"content":" world"},"finish_reason":null}]}\n\n'
    b'data: {"id":"c1","object":"chat.completion.chunk","created":1,"model":"gpt-4o-mini","choices":[{"index":0,'
    b'"delta":{},"finish_reason":"stop"}]}\n\n'
    b'data: {"id":"c1","object":"chat.completion.chunk","created":1,"model":"gpt-4o-mini","choices":[],'
    b'"usage":{"prompt_tokens":9,"completion_tokens":2,"total_tokens":11}}\n\n'
    b"data: [DONE]\n\n"
)
SMALL_CHAT_JSON = json.dumps(
    {
        "id": "c2",
        "object": "chat.completion",
        "created": 1,
        "model": "gpt-4o-mini",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hi there"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7},
    }
).encode()


@pytest.fixture
def stack(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Stack]:
    monkeypatch.setenv(UPSTREAM_KEY_ENV, UPSTREAM_SECRET)
    yield from start_stack(tmp_path)


def sdk(stack: Stack, **kwargs: Any) -> openai.OpenAI:
    return openai.OpenAI(base_url=stack.url + "/v1", api_key=CLIENT_KEY, max_retries=0, **kwargs)


def capture_text(raw: bytes) -> str:
    """The assistant text in an OpenAI chat stream, read independently of the proxy's parser."""
    text = []
    for line in raw.split(b"\n"):
        if line.startswith(b"data: {"):
            chunk = json.loads(line[6:])
            for choice in chunk.get("choices") or []:
                text.append((choice.get("delta") or {}).get("content") or "")
    return "".join(text)


MESSAGES = [{"role": "user", "content": "Say hello"}]


# --- streaming through the real SDK ------------------------------------------------------------------------


@pytest.mark.parametrize("capture", ["openai/chat_usage_basic.sse", "openai/chat_usage_n3_choices.sse"])
def test_sdk_sync_stream_content_equals_capture(stack: Stack, shared_fixtures: pathlib.Path, capture: str) -> None:
    body = (shared_fixtures / capture).read_bytes()
    stack.upstream.script = Script(body=body, chunk_sizes=[97, 13, 1024])
    client = sdk(stack)
    with client:
        stream = client.chat.completions.create(model="gpt-4o", messages=MESSAGES, stream=True)  # type: ignore[arg-type]
        got = "".join(
            (choice.delta.content or "") for chunk in stream for choice in chunk.choices if choice.delta is not None
        )
    assert got == capture_text(body)
    assert got


def test_sdk_async_stream_content_equals_capture(stack: Stack, shared_fixtures: pathlib.Path) -> None:
    body = (shared_fixtures / "openai/chat_usage_tool_calls.sse").read_bytes()
    stack.upstream.script = Script(body=body, chunk_sizes=[7, 300])

    async def run() -> list[Any]:
        async with openai.AsyncOpenAI(base_url=stack.url + "/v1", api_key=CLIENT_KEY, max_retries=0) as client:
            stream = await client.chat.completions.create(
                model="gpt-4o",
                messages=MESSAGES,  # type: ignore[arg-type]
                stream=True,
                stream_options={"include_usage": True},
            )
            return [chunk async for chunk in stream]

    chunks = asyncio.run(run())
    expected = [json.loads(line[6:]) for line in body.split(b"\n") if line.startswith(b"data: {")]
    assert [c.model_dump(exclude_unset=True)["id"] for c in chunks] == [e["id"] for e in expected]
    assert chunks[-1].usage is not None and chunks[-1].usage.prompt_tokens == 44


def test_raw_bytes_equal_upstream_bytes(stack: Stack, shared_fixtures: pathlib.Path) -> None:
    """A client that asked for usage itself gets the upstream's stream byte for byte."""
    body = (shared_fixtures / "openai/chat_usage_basic.sse").read_bytes()
    stack.upstream.script = Script(body=body, chunk_sizes=[1, 2, 3, 500])
    client = sdk(stack)
    with (
        client,
        client.chat.completions.with_streaming_response.create(
            model="gpt-4o",
            messages=MESSAGES,  # type: ignore[arg-type]
            stream=True,
            stream_options={"include_usage": True},
        ) as response,
    ):
        raw = b"".join(response.iter_bytes())
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["cache-control"] == "no-cache"
        assert response.headers["x-accel-buffering"] == "no"
    assert raw == body


def test_sdk_sync_and_async_non_streaming(stack: Stack) -> None:
    stack.upstream.script = Script(body=SMALL_CHAT_JSON, content_type=b"application/json", content_length=True)
    client = sdk(stack)
    with client:
        completion = client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)  # type: ignore[arg-type]
    assert completion.choices[0].message.content == "Hi there"
    assert completion.usage is not None and completion.usage.total_tokens == 7

    async def run() -> str | None:
        async with openai.AsyncOpenAI(base_url=stack.url + "/v1", api_key=CLIENT_KEY, max_retries=0) as client:
            result = await client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)  # type: ignore[arg-type]
            return result.choices[0].message.content

    assert asyncio.run(run()) == "Hi there"


def test_non_streaming_body_and_length_pass_through(stack: Stack) -> None:
    stack.upstream.script = Script(body=SMALL_CHAT_JSON, content_type=b"application/json", content_length=True)
    response = httpx.post(
        stack.url + "/v1/chat/completions",
        json={"model": "gpt-4o-mini", "messages": MESSAGES},
        headers={"authorization": f"Bearer {CLIENT_KEY}"},
    )
    assert response.status_code == 200
    assert response.content == SMALL_CHAT_JSON
    assert response.headers["content-length"] == str(len(SMALL_CHAT_JSON))
    assert "content-encoding" not in response.headers
    # We asked the upstream for identity so the meter reads plain bytes and the length stays true.
    assert stack.upstream.requests[0].header(b"accept-encoding") == b"identity"


# --- flushing --------------------------------------------------------------------------------------------


def test_each_chunk_is_flushed_as_it_arrives(stack: Stack) -> None:
    frames = [f + b"\n\n" for f in SMALL_CHAT_STREAM.split(b"\n\n") if f]
    stack.upstream.script = Script(body=SMALL_CHAT_STREAM, chunk_sizes=[len(f) for f in frames], pause_s=0.2)
    arrivals: list[tuple[float, bytes]] = []
    with (
        httpx.Client() as client,
        client.stream(
            "POST",
            stack.url + "/v1/chat/completions",
            json={
                "model": "gpt-4o-mini",
                "messages": MESSAGES,
                "stream": True,
                "stream_options": {"include_usage": True},
            },
            headers={"authorization": f"Bearer {CLIENT_KEY}"},
        ) as response,
    ):
        for piece in response.iter_raw():
            arrivals.append((time.monotonic(), piece))
    assert b"".join(p for _, p in arrivals) == SMALL_CHAT_STREAM
    # One upstream write, one client read: each frame arrives on its own, in order ...
    assert [p for _, p in arrivals] == frames
    # ... and about 200 ms after the one before it, never all at the end.
    gaps = [b[0] - a[0] for a, b in itertools_pairwise(arrivals)]
    assert all(gap > 0.12 for gap in gaps), gaps
    assert arrivals[-1][0] - arrivals[0][0] > 0.12 * (len(frames) - 1)


def itertools_pairwise(items: list[Any]) -> list[tuple[Any, Any]]:
    return list(zip(items, items[1:], strict=False))


# --- errors, in OpenAI's format, before anything goes upstream --------------------------------------------


def _assert_openai_error(response: httpx.Response, status: int, code: str | None = None) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["message"]
    if code is not None:
        assert error["code"] == code
    assert response.headers["x-teeproxy-request-id"]
    return dict(error)


@pytest.mark.parametrize(
    ("headers", "why"),
    [({}, "missing"), ({"authorization": "Bearer tp-wrong"}, "wrong"), ({"authorization": "Basic abc"}, "scheme")],
)
def test_401_without_valid_key(stack: Stack, headers: dict[str, str], why: str) -> None:
    response = httpx.post(stack.url + "/v1/chat/completions", json={"model": "gpt-4o"}, headers=headers)
    _assert_openai_error(response, 401, "invalid_api_key")
    assert stack.upstream.requests == []


def test_sdk_sees_authentication_error(stack: Stack) -> None:
    client = openai.OpenAI(base_url=stack.url + "/v1", api_key="tp-not-a-key", max_retries=0)
    with client, pytest.raises(openai.AuthenticationError) as info:
        client.chat.completions.create(model="gpt-4o", messages=MESSAGES)  # type: ignore[arg-type]
    assert info.value.status_code == 401
    assert stack.upstream.requests == []


def test_404_unknown_model(stack: Stack) -> None:
    response = httpx.post(
        stack.url + "/v1/chat/completions",
        json={"model": "claude-nope", "messages": MESSAGES},
        headers={"authorization": f"Bearer {CLIENT_KEY}"},
    )
    _assert_openai_error(response, 404, "model_not_found")
    assert stack.upstream.requests == []


@pytest.mark.parametrize("path", ["/v1/nope", "/v2/chat/completions", "/", "/v1/chat/completions/extra"])
def test_404_unknown_path(stack: Stack, path: str) -> None:
    response = httpx.post(stack.url + path, json={"model": "gpt-4o"}, headers={"authorization": f"Bearer {CLIENT_KEY}"})
    _assert_openai_error(response, 404)
    assert stack.upstream.requests == []


@pytest.mark.parametrize("body", [b"not json", b"[1, 2]", b'{"messages": []}', b""])
def test_400_body_not_a_json_object_with_model(stack: Stack, body: bytes) -> None:
    response = httpx.post(
        stack.url + "/v1/chat/completions",
        content=body,
        headers={"authorization": f"Bearer {CLIENT_KEY}", "content-type": "application/json"},
    )
    _assert_openai_error(response, 400)
    assert stack.upstream.requests == []


def test_413_over_the_body_limit(stack: Stack) -> None:
    big = json.dumps({"model": "gpt-4o", "messages": [{"role": "user", "content": "x" * (1024 * 1024)}]}).encode()
    response = httpx.post(
        stack.url + "/v1/chat/completions",
        content=big,
        headers={"authorization": f"Bearer {CLIENT_KEY}", "content-type": "application/json"},
    )
    _assert_openai_error(response, 413, "request_too_large")

    def chunked() -> Iterator[bytes]:  # no Content-Length: the limit holds while reading
        for i in range(0, len(big), 65536):
            yield big[i : i + 65536]

    response = httpx.post(
        stack.url + "/v1/chat/completions",
        content=chunked(),
        headers={"authorization": f"Bearer {CLIENT_KEY}", "content-type": "application/json"},
    )
    _assert_openai_error(response, 413, "request_too_large")
    assert stack.upstream.requests == []


# --- credentials and headers ------------------------------------------------------------------------------


def test_upstream_secret_never_reaches_client_or_logs(
    stack: Stack, shared_fixtures: pathlib.Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    stack.upstream.script = Script(body=(shared_fixtures / "openai/chat_usage_basic.sse").read_bytes())
    seen = []
    for stream in (True, False):
        response = httpx.post(
            stack.url + "/v1/chat/completions",
            json={"model": "gpt-4o", "messages": MESSAGES, "stream": stream},
            headers={"authorization": f"Bearer {CLIENT_KEY}"},
        )
        seen.append(repr(response.headers.raw).encode() + response.content)
    stack.upstream.script = Script(body=b"", cut_after=0)
    response = httpx.post(
        stack.url + "/v1/chat/completions",
        json={"model": "gpt-4o", "messages": MESSAGES},
        headers={"authorization": f"Bearer {CLIENT_KEY}"},
    )
    seen.append(repr(response.headers.raw).encode() + response.content)
    records = stack.records(at_least=3)
    assert len(records) == 3
    secret = UPSTREAM_SECRET.encode()
    for blob in seen:
        assert secret not in blob
    assert UPSTREAM_SECRET not in caplog.text
    assert all(UPSTREAM_SECRET not in repr(record) for record in records)
    # The upstream got the provider's key, never the client's.
    for request in stack.upstream.requests:
        assert request.header(b"authorization") == b"Bearer " + secret
        assert CLIENT_KEY.encode() not in repr(request.headers).encode()


def test_hop_by_hop_headers_dropped_and_host_rewritten(stack: Stack) -> None:
    stack.upstream.script = Script(
        body=SMALL_CHAT_JSON,
        content_type=b"application/json",
        content_length=True,
        headers=[(b"x-upstream-note", b"kept"), (b"keep-alive", b"timeout=5"), (b"proxy-authenticate", b"Basic")],
    )
    response = httpx.post(
        stack.url + "/v1/chat/completions",
        json={"model": "gpt-4o", "messages": MESSAGES},
        headers={
            "authorization": f"Bearer {CLIENT_KEY}",
            "connection": "keep-alive, x-per-hop",
            "x-per-hop": "1",
            "keep-alive": "timeout=5",
            "proxy-authorization": "Basic Zm9v",
            "te": "gzip",
            "x-end-to-end": "yes",
        },
    )
    assert response.status_code == 200
    sent = dict(stack.upstream.requests[0].headers)
    for name in (b"x-per-hop", b"keep-alive", b"proxy-authorization", b"te", b"connection"):
        assert name not in sent or name == b"connection" and sent[name] != b"keep-alive, x-per-hop"
    assert sent[b"x-end-to-end"] == b"yes"
    port = stack.upstream.base_url.split(":")[2].split("/")[0]
    assert sent[b"host"] == f"127.0.0.1:{port}".encode()
    assert response.headers["x-upstream-note"] == "kept"
    assert "keep-alive" not in response.headers
    assert "proxy-authenticate" not in response.headers


def test_one_date_and_one_server_header(stack: Stack) -> None:
    """The upstream's Date and Server (a provider sends both) are not passed on beside the proxy's own."""
    stack.upstream.script = Script(
        body=SMALL_CHAT_JSON,
        content_type=b"application/json",
        content_length=True,
        headers=[(b"date", b"Mon, 01 Jan 2024 00:00:00 GMT"), (b"server", b"cloudflare")],
    )
    body = json.dumps({"model": "gpt-4o", "messages": MESSAGES}).encode()
    head, _, _ = h11_post(stack.proxy.port, "/v1/chat/completions", body, [("authorization", f"Bearer {CLIENT_KEY}")])
    names = [name for name, _ in head.headers]
    assert head.status_code == 200
    assert (names.count(b"date"), names.count(b"server")) == (1, 1)


def test_identity_headers(stack: Stack) -> None:
    stack.upstream.script = Script(body=SMALL_CHAT_JSON, content_type=b"application/json", content_length=True)
    auth = {"authorization": f"Bearer {CLIENT_KEY}"}
    payload = {"model": "gpt-4o", "messages": MESSAGES}
    kept = httpx.post(
        stack.url + "/v1/chat/completions", json=payload, headers={**auth, "x-teeproxy-request-id": "req-42.a"}
    )
    assert kept.headers["x-teeproxy-request-id"] == "req-42.a"
    assert kept.headers["x-teeproxy-provider"] == "replay"
    assert kept.headers["x-teeproxy-model"] == "gpt-4o"
    fresh = httpx.post(
        stack.url + "/v1/chat/completions", json=payload, headers={**auth, "x-teeproxy-request-id": "bad id!"}
    )
    assert fresh.headers["x-teeproxy-request-id"] not in ("bad id!", "")
    assert {r.request_id for r in stack.records(at_least=2)} == {"req-42.a", fresh.headers["x-teeproxy-request-id"]}


def test_models_lists_configured_models(stack: Stack) -> None:
    client = sdk(stack)
    with client:
        ids = [model.id for model in client.models.list()]
    assert ids == ["gpt-4o-mini"]  # the priced model a route serves; route globs are never model ids
    assert stack.upstream.requests == []


def test_embeddings_and_responses_forwarded(stack: Stack) -> None:
    body = json.dumps(
        {
            "object": "list",
            "data": [{"object": "embedding", "index": 0, "embedding": [0.5, 0.25]}],
            "model": "text-embedding-3-small",
            "usage": {"prompt_tokens": 3, "total_tokens": 3},
        }
    ).encode()
    stack.upstream.script = Script(body=body, content_type=b"application/json", content_length=True)
    client = sdk(stack)
    with client:
        result = client.embeddings.create(model="text-embedding-3-small", input="hey", encoding_format="float")
    assert result.data[0].embedding == [0.5, 0.25]
    assert stack.upstream.requests[0].path == "/v1/embeddings"
