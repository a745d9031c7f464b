"""Every dialect end to end: the real anthropic, google-genai and boto3 clients through a real teeproxy (hypercorn
on loopback, TLS for boto3) against a replay upstream serving the provider captures byte for byte.

What a user of each SDK would notice: the content the SDK returns is the capture's; the bytes on the wire are
the upstream's; the ledger holds the exact normalized usage and price; the trailers carry the same figures;
errors made by the proxy come in the provider's own format (and the SDK raises the right exception), with
nothing sent upstream; the provider's key never reaches the client, a log line or the ledger.
"""

from __future__ import annotations

import asyncio
import base64
import gc
import json
import logging
import pathlib
import ssl
from collections.abc import Callable, Iterator
from decimal import Decimal
from typing import Any

import anthropic
import boto3
import botocore.exceptions
import genai_prices
import h11
import pytest
import trustme
from google import genai
from google.genai import errors as genai_errors

from proxy.parsers.eventstream import EventStreamDecoder, event_frame
from tests.conftest import load_expected
from tests.servers import CLIENT_KEY, UPSTREAM_KEY_ENV, UPSTREAM_SECRET, Script, Stack, h11_post, start_stack

ROWS = load_expected()
ANTHROPIC_ROWS = [row for row in ROWS if row["format"] == "anthropic"]
GEMINI_ROWS = [row for row in ROWS if row["format"] == "gemini"]
BEDROCK_ROWS = [row for row in ROWS if row["format"] == "bedrock_converse"]
SSE = b"text/event-stream; charset=utf-8"
EVENTSTREAM = b"application/vnd.amazon.eventstream"
BEDROCK_MODEL = "anthropic.claude-3-5-sonnet-20240620-v1:0"
PRICE_IDS = {"anthropic": "anthropic", "gemini": "google", "bedrock": "aws"}


@pytest.fixture
def stack(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Stack]:
    monkeypatch.setenv(UPSTREAM_KEY_ENV, UPSTREAM_SECRET)
    yield from start_stack(tmp_path)


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str, str]:
    """A throwaway CA and a server certificate for 127.0.0.1 (cert, key, CA bundle)."""
    folder = tmp_path_factory.mktemp("tls")
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    cert_path, key_path, ca_path = folder / "cert.pem", folder / "key.pem", folder / "ca.pem"
    cert.cert_chain_pems[0].write_to_path(str(cert_path))
    for extra in cert.cert_chain_pems[1:]:
        extra.write_to_path(str(cert_path), append=True)
    cert.private_key_pem.write_to_path(str(key_path))
    ca.cert_pem.write_to_path(str(ca_path))
    return str(cert_path), str(key_path), str(ca_path)


@pytest.fixture
def tls_stack(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch, tls_files: tuple[str, str, str]
) -> Iterator[Stack]:
    monkeypatch.setenv(UPSTREAM_KEY_ENV, UPSTREAM_SECRET)
    # boto3 sends AWS_BEARER_TOKEN_BEDROCK as `Authorization: Bearer` (to https endpoints only): the teeproxy key.
    monkeypatch.setenv("AWS_BEARER_TOKEN_BEDROCK", CLIENT_KEY)
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    yield from start_stack(tmp_path, tls=(tls_files[0], tls_files[1]))


# --- what each capture must yield, normalized (proxy.usage) -------------------------------------------------------


def normalized(row: dict[str, Any]) -> dict[str, int]:
    """The expected row in teeproxy's normalized terms: input includes cache reads and writes, output includes
    reasoning (Gemini reports its thoughts apart and bills them as output)."""
    exp = row["expected"]
    cached = exp.get("cached_input_tokens") or 0
    written = exp.get("cache_creation_input_tokens") or 0
    if row["format"] == "anthropic" and "iterations_sum" in exp:
        its = exp["iterations_sum"]
        cached, written = its["cache_read_input_tokens"], its["cache_creation_input_tokens"]
        return {
            "input_tokens": its["input_tokens"] + cached + written,
            "output_tokens": its["output_tokens"],
            "cached_tokens": cached,
            "cache_write_tokens": written,
            "reasoning_tokens": 0,
        }
    if row["format"] == "gemini":
        reasoning = exp.get("reasoning_tokens") or 0
        return {
            "input_tokens": exp["input_tokens"] + (exp.get("tool_use_prompt_tokens") or 0),
            "output_tokens": exp["output_tokens"] + reasoning,
            "cached_tokens": cached,
            "cache_write_tokens": 0,
            "reasoning_tokens": reasoning,
        }
    return {
        "input_tokens": exp["input_tokens"] + cached + written,
        "output_tokens": exp["output_tokens"],
        "cached_tokens": cached,
        "cache_write_tokens": written,
        "reasoning_tokens": 0,
    }


def expected_cost(dialect: str, model: str, figures: dict[str, int]) -> Decimal | None:
    usage = genai_prices.Usage(
        input_tokens=figures["input_tokens"],
        cache_read_tokens=figures["cached_tokens"],
        cache_write_tokens=figures["cache_write_tokens"],
        output_tokens=figures["output_tokens"],
    )
    try:
        return genai_prices.calc_price(usage, model_ref=model, provider_id=PRICE_IDS[dialect]).total_price
    except LookupError:
        return None


def assert_record(record: Any, figures: dict[str, int], dialect: str, model: str, outcome: str = "completed") -> None:
    got = {name: getattr(record, name) for name in figures}
    assert got == figures
    assert record.usage_status == "reported"
    assert record.model == model
    assert record.outcome == outcome
    assert record.provider == f"replay-{dialect}"
    assert record.raw_usage and json.loads(record.raw_usage)
    cost = expected_cost(dialect, model, figures)
    if cost is None:
        assert (record.cost, record.cost_status) == (None, "unpriced")
    else:
        assert record.cost_status == "priced"
        assert Decimal(record.cost) == cost


def assert_trailers(trailers: dict[bytes, bytes], figures: dict[str, int]) -> None:
    for name, value in figures.items():
        assert (
            trailers[b"x-teeproxy-" + name.replace("_tokens", "-tokens").replace("_", "-").encode()]
            == str(value).encode()
        )
    assert trailers[b"x-teeproxy-usage"] == b"reported"


# --- a raw HTTP/1.1 client: the exact bytes and the trailers ------------------------------------------------------


def raw_exchange(
    stack: Stack, target: str, body: bytes, headers: list[tuple[str, str]], ca: str | None = None
) -> tuple[h11.Response, bytes, dict[bytes, bytes]]:
    """A POST to the proxy that asks for trailers."""
    return h11_post(stack.proxy.port, target, body, [("te", "trailers"), *headers], ca)


def sse_json(body: bytes) -> list[dict[str, Any]]:
    """The JSON of every data line of a capture, independently of the proxy's parser."""
    out = []
    for line in body.replace(b"\r\n", b"\n").split(b"\n"):
        if line.startswith(b"data:"):
            out.append(json.loads(line[5:]))
    return out


# --- Anthropic ----------------------------------------------------------------------------------------------------


def capture_text_anthropic(body: bytes) -> str:
    return "".join(
        event["delta"]["text"]
        for event in sse_json(body)
        if event.get("type") == "content_block_delta" and event["delta"].get("type") == "text_delta"
    )


def capture_model_anthropic(body: bytes) -> str:
    return next(str(e["message"]["model"]) for e in sse_json(body) if e.get("type") == "message_start")


def sdk_text_anthropic(events: list[Any]) -> str:
    return "".join(
        e.delta.text for e in events if e.type == "content_block_delta" and getattr(e.delta, "type", "") == "text_delta"
    )


@pytest.mark.filterwarnings("ignore:The model .* is deprecated:DeprecationWarning")  # the SDK on a capture's model
@pytest.mark.parametrize("mode", ["sync", "async"])
@pytest.mark.parametrize("row", ANTHROPIC_ROWS, ids=[row["file"] for row in ANTHROPIC_ROWS])
def test_anthropic_sdk_streams_through_and_is_metered_exactly(
    stack: Stack, shared_fixtures: pathlib.Path, row: dict[str, Any], mode: str
) -> None:
    body = (shared_fixtures / row["file"]).read_bytes()
    model = capture_model_anthropic(body)
    stack.upstream.script = Script(body=body, chunk_sizes=[113, 7, 4096])
    args: dict[str, Any] = {"model": model, "max_tokens": 1024, "messages": [{"role": "user", "content": "hi"}]}
    if mode == "sync":
        with anthropic.Anthropic(base_url=stack.url, api_key=CLIENT_KEY, max_retries=0) as client:
            events = list(client.messages.create(stream=True, **args))
    else:

        async def run() -> list[Any]:
            async with anthropic.AsyncAnthropic(base_url=stack.url, api_key=CLIENT_KEY, max_retries=0) as client:
                return [event async for event in await client.messages.create(stream=True, **args)]

        events = asyncio.run(run())
    assert sdk_text_anthropic(events) == capture_text_anthropic(body)
    [record] = stack.records()
    assert_record(record, normalized(row), "anthropic", model)
    [seen] = stack.upstream.requests
    assert seen.path == "/v1/messages"
    assert seen.header(b"x-api-key") == UPSTREAM_SECRET.encode()
    assert seen.header(b"anthropic-version") is not None  # the SDK's own, passed through
    assert CLIENT_KEY.encode() not in b"".join(value for _, value in seen.headers)


@pytest.mark.parametrize("row", ANTHROPIC_ROWS, ids=[row["file"] for row in ANTHROPIC_ROWS])
def test_anthropic_bytes_are_the_upstreams_and_trailers_carry_the_bill(
    stack: Stack, shared_fixtures: pathlib.Path, row: dict[str, Any]
) -> None:
    body = (shared_fixtures / row["file"]).read_bytes()
    model = capture_model_anthropic(body)
    stack.upstream.script = Script(body=body, chunk_sizes=[64, 3, 1000])
    request = json.dumps({"model": model, "max_tokens": 64, "stream": True, "messages": []}).encode()
    beta = ("anthropic-beta", "interleaved-thinking-2025-05-14")
    response, data, trailers = raw_exchange(stack, "/v1/messages", request, [("x-api-key", CLIENT_KEY), beta])
    assert response.status_code == 200
    assert data == body
    assert_trailers(trailers, normalized(row))
    [seen] = stack.upstream.requests
    assert seen.header(b"anthropic-version") == b"2023-06-01"  # added when the client sent none
    assert seen.header(b"anthropic-beta") == beta[1].encode()  # passed through


def test_anthropic_non_streaming_sync_and_async(stack: Stack) -> None:
    message = {
        "id": "msg_01",
        "type": "message",
        "role": "assistant",
        "model": "claude-sonnet-4-20250514",
        "content": [{"type": "text", "text": "Bonjour."}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": {
            "input_tokens": 20,
            "output_tokens": 7,
            "cache_read_input_tokens": 100,
            "cache_creation_input_tokens": 50,
            "cache_creation": {"ephemeral_5m_input_tokens": 30, "ephemeral_1h_input_tokens": 20},
        },
    }
    stack.upstream.script = Script(body=json.dumps(message).encode(), content_type=b"application/json")
    args: dict[str, Any] = {"model": "claude-sonnet-4-20250514", "max_tokens": 64, "messages": []}
    with anthropic.Anthropic(base_url=stack.url, api_key=CLIENT_KEY, max_retries=0) as client:
        sync_text = client.messages.create(**args).content[0].text  # type: ignore[union-attr]

    async def run() -> str:
        async with anthropic.AsyncAnthropic(base_url=stack.url, api_key=CLIENT_KEY, max_retries=0) as client:
            reply = await client.messages.create(**args)
            return reply.content[0].text  # type: ignore[union-attr]

    assert sync_text == asyncio.run(run()) == "Bonjour."
    records = stack.records(at_least=2)
    assert len(records) == 2
    figures = {
        "input_tokens": 170,
        "output_tokens": 7,
        "cached_tokens": 100,
        "cache_write_tokens": 50,
        "reasoning_tokens": 0,
    }
    for record in records:
        assert {name: getattr(record, name) for name in figures} == figures
    # 20 * 3 + 100 * 0.30 + 30 * 3.75 + 20 * 6.00 + 7 * 15, per million: the one-hour writes priced apart.
    expected = (20 * Decimal(3) + 100 * Decimal("0.3") + 30 * Decimal("3.75") + 20 * Decimal(6) + 7 * Decimal(15)) / (
        10**6
    )
    assert {Decimal(r.cost) for r in records} == {expected}


def test_anthropic_count_tokens_is_recorded_free(stack: Stack) -> None:
    stack.upstream.script = Script(body=b'{"input_tokens": 42}', content_type=b"application/json")
    with anthropic.Anthropic(base_url=stack.url, api_key=CLIENT_KEY, max_retries=0) as client:
        counted = client.messages.count_tokens(model="claude-sonnet-4-20250514", messages=[])
    assert counted.input_tokens == 42
    [record] = stack.records()
    assert record.endpoint == "/v1/messages/count_tokens"
    assert (record.input_tokens, record.output_tokens, record.cost, record.cost_status) == (0, 0, "0", "priced")


def test_anthropic_models_list_in_anthropics_format(stack: Stack) -> None:
    with anthropic.Anthropic(base_url=stack.url, api_key=CLIENT_KEY, max_retries=0) as client:
        ids = [model.id for model in client.models.list()]
    assert ids == []  # the only Anthropic route is a glob, and route globs are never listed as model ids
    assert stack.upstream.requests == []


def test_model_lists_hold_concrete_ids_only(stack: Stack) -> None:
    import openai

    with openai.OpenAI(base_url=stack.url + "/v1", api_key=CLIENT_KEY, max_retries=0) as client:
        ids = [model.id for model in client.models.list()]
    assert ids == ["gpt-4o-mini"]  # priced in the config and served by the `gpt-*` route; no pattern listed


# --- Gemini -------------------------------------------------------------------------------------------------------


def capture_parts_gemini(body: bytes) -> list[str]:
    texts = []
    for chunk in sse_json(body):
        for candidate in chunk.get("candidates") or []:
            for part in (candidate.get("content") or {}).get("parts") or []:
                if "text" in part:
                    texts.append(part["text"])
    return texts


def capture_model_gemini(body: bytes) -> str:
    return next(str(chunk["modelVersion"]) for chunk in sse_json(body) if chunk.get("modelVersion"))


def gemini_client(stack: Stack) -> genai.Client:
    return genai.Client(api_key=CLIENT_KEY, http_options={"base_url": stack.url})


@pytest.mark.parametrize("row", GEMINI_ROWS, ids=[row["file"] for row in GEMINI_ROWS])
def test_gemini_sdk_streams_through_and_is_metered_exactly(
    stack: Stack, shared_fixtures: pathlib.Path, row: dict[str, Any]
) -> None:
    body = (shared_fixtures / row["file"]).read_bytes()
    model = capture_model_gemini(body)
    stack.upstream.script = Script(body=body, chunk_sizes=[113, 7, 4096])
    texts = []
    client = gemini_client(stack)  # kept: a google-genai Client closes its HTTP client when collected
    for chunk in client.models.generate_content_stream(model=model, contents="hi"):
        for candidate in chunk.candidates or []:
            for part in (candidate.content.parts if candidate.content else None) or []:
                if part.text is not None:
                    texts.append(part.text)
    assert "".join(texts) == "".join(capture_parts_gemini(body))
    [record] = stack.records()
    assert_record(record, normalized(row), "gemini", model)
    [seen] = stack.upstream.requests
    assert seen.path == f"/v1/models/{model}:streamGenerateContent"  # google-genai's default API version
    assert "alt=sse" in seen.target and "key=" not in seen.target
    assert seen.header(b"x-goog-api-key") == UPSTREAM_SECRET.encode()


@pytest.mark.parametrize("row", GEMINI_ROWS, ids=[row["file"] for row in GEMINI_ROWS])
def test_gemini_bytes_are_the_upstreams_and_trailers_carry_the_bill(
    stack: Stack, shared_fixtures: pathlib.Path, row: dict[str, Any]
) -> None:
    body = (shared_fixtures / row["file"]).read_bytes()
    model = capture_model_gemini(body)
    stack.upstream.script = Script(body=body, chunk_sizes=[50, 1, 999])
    # The key in the query string, as some clients send it: it must not travel on to the upstream's URL.
    response, data, trailers = raw_exchange(
        stack, f"/v1beta/models/{model}:streamGenerateContent?alt=sse&key={CLIENT_KEY}", b"{}", []
    )
    assert response.status_code == 200
    assert data == body
    assert_trailers(trailers, normalized(row))
    [seen] = stack.upstream.requests
    assert seen.target == f"/v1beta/models/{model}:streamGenerateContent?alt=sse"


def test_gemini_json_array_stream_is_metered(stack: Stack, shared_fixtures: pathlib.Path) -> None:
    row = next(r for r in GEMINI_ROWS if r["file"] == "gemini/stream_thinking.sse")
    chunks = sse_json((shared_fixtures / row["file"]).read_bytes())
    body = ("[" + ",\r\n".join(json.dumps(c, indent=2) for c in chunks) + "]").encode()
    stack.upstream.script = Script(body=body, content_type=b"application/json; charset=UTF-8", chunk_sizes=[77])
    response, data, trailers = raw_exchange(
        stack, "/v1beta/models/gemini-2.5-flash:streamGenerateContent", b"{}", [("x-goog-api-key", CLIENT_KEY)]
    )
    assert response.status_code == 200 and data == body
    assert_trailers(trailers, normalized(row))
    [record] = stack.records()
    assert_record(record, normalized(row), "gemini", "gemini-2.5-flash")


def test_gemini_non_streaming(stack: Stack) -> None:
    reply = {
        "candidates": [{"content": {"parts": [{"text": "Paris."}], "role": "model"}, "finishReason": "STOP"}],
        "usageMetadata": {
            "promptTokenCount": 40,
            "candidatesTokenCount": 3,
            "thoughtsTokenCount": 12,
            "cachedContentTokenCount": 32,
            "totalTokenCount": 55,
        },
        "modelVersion": "gemini-2.5-flash",
    }
    stack.upstream.script = Script(body=json.dumps(reply).encode(), content_type=b"application/json")
    client = gemini_client(stack)
    result = client.models.generate_content(model="gemini-2.5-flash", contents="capital of France?")
    assert result.text == "Paris."
    [record] = stack.records()
    figures = {
        "input_tokens": 40,
        "output_tokens": 15,
        "cached_tokens": 32,
        "cache_write_tokens": 0,
        "reasoning_tokens": 12,
    }
    assert_record(record, figures, "gemini", "gemini-2.5-flash")


# --- Bedrock (boto3 over TLS, bearer token) -----------------------------------------------------------------------


@pytest.fixture
def bedrock(tls_stack: Stack, tls_files: tuple[str, str, str]) -> Iterator[Callable[[], Any]]:
    """boto3 bedrock-runtime clients for the TLS proxy, closed before the proxy shuts down (a client keeps its
    TLS connections open otherwise, and hypercorn's graceful shutdown waits on them)."""
    clients: list[Any] = []

    def make() -> Any:
        client = boto3.client(
            "bedrock-runtime", endpoint_url=tls_stack.url, region_name="us-east-1", verify=tls_files[2]
        )
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()
    # A response that botocore raised from stays checked out of the pool, held by the exception's traceback
    # (a reference cycle): collect it, so its socket closes before hypercorn waits on it at shutdown.
    gc.collect()


def split_messages(body: bytes) -> list[bytes]:
    """An event stream cut into its messages by their length prefixes."""
    out, pos = [], 0
    while pos < len(body):
        size = int.from_bytes(body[pos : pos + 4], "big")
        out.append(body[pos : pos + size])
        pos += size
    return out


def capture_text_bedrock(body: bytes) -> str:
    texts = []
    for message in EventStreamDecoder().feed(body):
        if message.headers.get(":event-type") == "contentBlockDelta":
            delta = json.loads(message.payload)["delta"]
            texts.append(delta.get("text", ""))
    return "".join(texts)


@pytest.mark.parametrize("row", BEDROCK_ROWS, ids=[row["file"] for row in BEDROCK_ROWS])
def test_boto3_converse_stream_through_and_metered_exactly(
    tls_stack: Stack,
    tls_files: tuple[str, str, str],
    shared_fixtures: pathlib.Path,
    row: dict[str, Any],
    bedrock: Callable[[], Any],
) -> None:
    body = (shared_fixtures / row["file"]).read_bytes()
    tls_stack.upstream.script = Script(body=body, content_type=EVENTSTREAM, chunk_sizes=[113, 7, 4096])
    client = bedrock()
    reply = client.converse_stream(modelId=BEDROCK_MODEL, messages=[{"role": "user", "content": [{"text": "hi"}]}])
    texts = []
    if row["expected"]["status"] == "error":
        with pytest.raises(botocore.exceptions.EventStreamError, match="modelStreamErrorException"):
            list(reply["stream"])
        reply["stream"].close()  # botocore leaves the connection checked out after raising
        [record] = tls_stack.records()
        assert (record.usage_status, record.input_tokens, record.output_tokens) == ("missing", 0, 0)
        return
    for event in reply["stream"]:
        if "contentBlockDelta" in event:
            texts.append(event["contentBlockDelta"]["delta"].get("text", ""))
    assert "".join(texts) == capture_text_bedrock(body)
    [record] = tls_stack.records()
    assert_record(record, normalized(row), "bedrock", BEDROCK_MODEL)
    [seen] = tls_stack.upstream.requests
    assert seen.header(b"authorization") == b"Bearer " + UPSTREAM_SECRET.encode()
    assert seen.path == "/model/" + BEDROCK_MODEL.replace(":", "%3A") + "/converse-stream"


@pytest.mark.parametrize("row", BEDROCK_ROWS[:1], ids=[row["file"] for row in BEDROCK_ROWS[:1]])
def test_bedrock_bytes_are_the_upstreams_and_trailers_carry_the_bill(
    tls_stack: Stack, tls_files: tuple[str, str, str], shared_fixtures: pathlib.Path, row: dict[str, Any]
) -> None:
    body = (shared_fixtures / row["file"]).read_bytes()
    tls_stack.upstream.script = Script(body=body, content_type=EVENTSTREAM, chunk_sizes=[31])
    response, data, trailers = raw_exchange(
        tls_stack,
        f"/model/{BEDROCK_MODEL}/converse-stream",
        b"{}",
        [("authorization", f"Bearer {CLIENT_KEY}")],
        ca=tls_files[2],
    )
    assert response.status_code == 200 and data == body
    assert_trailers(trailers, normalized(row))


def anthropic_chunk(event: dict[str, Any]) -> bytes:
    return event_frame("chunk", json.dumps({"bytes": base64.b64encode(json.dumps(event).encode()).decode()}).encode())


def test_boto3_invoke_model_with_response_stream(
    tls_stack: Stack, tls_files: tuple[str, str, str], bedrock: Callable[[], Any]
) -> None:
    events = [
        {
            "type": "message_start",
            "message": {
                "id": "msg_bdrk_01",
                "type": "message",
                "role": "assistant",
                "model": "claude-3-5-sonnet-20240620",
                "content": [],
                "usage": {"input_tokens": 25, "output_tokens": 1},
            },
        },
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hi there"}},
        {"type": "content_block_stop", "index": 0},
        {"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 4}},
        {
            "type": "message_stop",
            "amazon-bedrock-invocationMetrics": {
                "inputTokenCount": 25,
                "outputTokenCount": 4,
                "invocationLatency": 300,
                "firstByteLatency": 120,
            },
        },
    ]
    body = b"".join(anthropic_chunk(event) for event in events)
    tls_stack.upstream.script = Script(body=body, content_type=EVENTSTREAM, chunk_sizes=[40])
    client = bedrock()
    reply = client.invoke_model_with_response_stream(
        modelId=BEDROCK_MODEL,
        body=json.dumps({"anthropic_version": "bedrock-2023-05-31", "max_tokens": 20, "messages": []}),
    )
    seen_events = [json.loads(part["chunk"]["bytes"]) for part in reply["body"]]
    assert seen_events == events
    [record] = tls_stack.records()
    figures = {
        "input_tokens": 25,
        "output_tokens": 4,
        "cached_tokens": 0,
        "cache_write_tokens": 0,
        "reasoning_tokens": 0,
    }
    assert_record(record, figures, "bedrock", BEDROCK_MODEL)


def test_boto3_converse_and_invoke_non_streaming(
    tls_stack: Stack, tls_files: tuple[str, str, str], bedrock: Callable[[], Any]
) -> None:
    converse = {
        "output": {"message": {"role": "assistant", "content": [{"text": "Hello"}]}},
        "stopReason": "end_turn",
        "usage": {"inputTokens": 9, "outputTokens": 2, "totalTokens": 11, "cacheReadInputTokens": 4},
        "metrics": {"latencyMs": 100},
    }
    invoke = {"id": "msg_1", "type": "message", "role": "assistant", "content": [{"type": "text", "text": "Yo"}]}
    scripts = iter(
        [
            Script(body=json.dumps(converse).encode(), content_type=b"application/json"),
            Script(
                body=json.dumps(invoke).encode(),
                content_type=b"application/json",
                headers=[(b"x-amzn-bedrock-input-token-count", b"31"), (b"x-amzn-bedrock-output-token-count", b"5")],
            ),
        ]
    )
    tls_stack.upstream.script = lambda request: next(scripts)
    client = bedrock()
    said = client.converse(modelId=BEDROCK_MODEL, messages=[{"role": "user", "content": [{"text": "hi"}]}])
    assert said["output"]["message"]["content"][0]["text"] == "Hello"
    invoked = client.invoke_model(modelId=BEDROCK_MODEL, body=b"{}")
    assert json.loads(invoked["body"].read()) == invoke
    first, second = sorted(tls_stack.records(at_least=2), key=lambda r: r.endpoint)
    assert (first.endpoint, first.input_tokens, first.cached_tokens, first.output_tokens) == (
        f"/model/{BEDROCK_MODEL}/converse",
        13,
        4,
        2,
    )
    assert (second.endpoint, second.input_tokens, second.output_tokens) == (f"/model/{BEDROCK_MODEL}/invoke", 31, 5)


def test_bedrock_arn_model_id_is_routed_and_re_encoded(
    tls_stack: Stack, tls_files: tuple[str, str, str], bedrock: Callable[[], Any]
) -> None:
    arn = "arn:aws:bedrock:us-east-1:123456789012:inference-profile/us.anthropic.claude-3-5-sonnet-20240620-v1:0"
    converse = {"output": {"message": {"role": "assistant", "content": [{"text": "ok"}]}}, "usage": {}}
    tls_stack.upstream.script = Script(body=json.dumps(converse).encode(), content_type=b"application/json")
    client = bedrock()
    client.converse(modelId=arn, messages=[{"role": "user", "content": [{"text": "hi"}]}])
    [seen] = tls_stack.upstream.requests
    assert seen.path == (
        "/model/arn%3Aaws%3Abedrock%3Aus-east-1%3A123456789012%3Ainference-profile"
        "%2Fus.anthropic.claude-3-5-sonnet-20240620-v1%3A0/converse"
    )
    [record] = tls_stack.records()
    assert record.model == arn


# --- errors the proxy makes, in each dialect's own format, with nothing sent upstream -----------------------------


def test_anthropic_errors_are_anthropic_shaped_and_sdk_raises(stack: Stack) -> None:
    args: dict[str, Any] = {"max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]}
    with anthropic.Anthropic(base_url=stack.url, api_key="tp-wrong", max_retries=0) as client:
        with pytest.raises(anthropic.AuthenticationError) as denied:
            client.messages.create(model="claude-sonnet-4-20250514", **args)
    assert denied.value.body == {
        "type": "error",
        "error": {"type": "authentication_error", "message": "Incorrect API key provided."},
    }
    with anthropic.Anthropic(base_url=stack.url, api_key=CLIENT_KEY, max_retries=0) as client:
        with pytest.raises(anthropic.NotFoundError) as missing:
            client.messages.create(model="gpt-4o-mini", **args)  # an OpenAI route: no translation between dialects
    assert missing.value.body["error"]["type"] == "not_found_error"  # type: ignore[index]
    response, data, _ = raw_exchange(stack, "/v1/messages", b"{not json", [("x-api-key", CLIENT_KEY)])
    assert response.status_code == 400
    assert json.loads(data)["error"]["type"] == "invalid_request_error"
    assert stack.upstream.requests == []


def test_gemini_errors_are_google_shaped_and_sdk_raises(stack: Stack) -> None:
    wrong = genai.Client(api_key="tp-wrong", http_options={"base_url": stack.url})
    with pytest.raises(genai_errors.ClientError) as denied:
        wrong.models.generate_content(model="gemini-2.5-flash", contents="hi")
    assert denied.value.code == 401 and denied.value.status == "UNAUTHENTICATED"
    client = gemini_client(stack)
    with pytest.raises(genai_errors.ClientError) as missing:
        client.models.generate_content(model="claude-sonnet-4", contents="hi")  # not a Gemini route
    assert missing.value.code == 404 and missing.value.status == "NOT_FOUND"
    response, data, _ = raw_exchange(
        stack, "/v1beta/models/gemini%0d%0aX:generateContent", b"{}", [("x-goog-api-key", CLIENT_KEY)]
    )
    assert response.status_code == 400
    assert json.loads(data)["error"]["status"] == "INVALID_ARGUMENT"
    assert stack.upstream.requests == []


def test_bedrock_errors_are_aws_shaped_and_boto3_raises(
    tls_stack: Stack, tls_files: tuple[str, str, str], monkeypatch: pytest.MonkeyPatch, bedrock: Callable[[], Any]
) -> None:
    client = bedrock()
    with pytest.raises(botocore.exceptions.ClientError) as missing:
        client.converse(modelId="gpt-4o-mini", messages=[{"role": "user", "content": [{"text": "hi"}]}])
    assert missing.value.response["Error"]["Code"] == "ResourceNotFoundException"
    monkeypatch.setenv("AWS_BEARER_TOKEN_BEDROCK", "tp-wrong")
    with pytest.raises(botocore.exceptions.ClientError) as denied:
        bedrock().converse(modelId=BEDROCK_MODEL, messages=[])
    assert denied.value.response["Error"]["Code"] == "AccessDeniedException"
    assert tls_stack.upstream.requests == []


def test_mid_stream_upstream_failure_makes_each_sdk_raise(
    tls_stack: Stack, tls_files: tuple[str, str, str], shared_fixtures: pathlib.Path, bedrock: Callable[[], Any]
) -> None:
    stack = tls_stack
    verify = ssl.create_default_context(cafile=tls_files[2])
    # Each upstream stops at a frame boundary after a few frames: the client has whole events so far, then the
    # proxy's in-stream error event in the dialect's own form, and each SDK raises on it.
    anthropic_body = (shared_fixtures / "anthropic/messages_tool_use.sse").read_bytes()
    cut = anthropic_body.index(b"\n\n", 600) + 2
    stack.upstream.script = Script(body=anthropic_body, chunk_sizes=[cut], cut_after=cut)
    with anthropic.Anthropic(
        base_url=stack.url, api_key=CLIENT_KEY, max_retries=0, http_client=anthropic.DefaultHttpxClient(verify=verify)
    ) as client:
        with pytest.raises(anthropic.APIStatusError, match="upstream"):
            list(client.messages.create(model="claude-sonnet-4-20250514", max_tokens=8, messages=[], stream=True))

    gemini_body = (shared_fixtures / "gemini/stream_thinking.sse").read_bytes()
    cut = gemini_body.index(b"\r\n\r\n", 1500) + 4
    stack.upstream.script = Script(body=gemini_body, chunk_sizes=[cut], cut_after=cut)
    client_g = genai.Client(api_key=CLIENT_KEY, http_options={"base_url": stack.url, "client_args": {"verify": verify}})
    with pytest.raises(genai_errors.APIError):
        list(client_g.models.generate_content_stream(model="gemini-2.5-flash", contents="hi"))

    bedrock_body = (shared_fixtures / "bedrock/converse_stream_basic.bin").read_bytes()
    cut = sum(len(m) for m in split_messages(bedrock_body)[:5])
    stack.upstream.script = Script(body=bedrock_body, content_type=EVENTSTREAM, chunk_sizes=[cut], cut_after=cut)
    reply = bedrock().converse_stream(modelId=BEDROCK_MODEL, messages=[])
    with pytest.raises(botocore.exceptions.EventStreamError):
        list(reply["stream"])
    reply["stream"].close()

    records = stack.records(at_least=3)
    assert sorted(r.outcome for r in records) == ["upstream_error"] * 3


# --- the provider's key never reaches a client, a log line or the ledger ------------------------------------------


class _EchoAuth:
    """An upstream that answers 401 and echoes every credential header it got, as some do."""

    def __call__(self, request: Any) -> Script:
        echoed = {
            k.decode(): v.decode()
            for k, v in request.headers
            if k in (b"authorization", b"x-api-key", b"x-goog-api-key")
        }
        return Script(
            body=json.dumps({"error": {"message": f"bad key {echoed}"}}).encode(),
            status=401,
            content_type=b"application/json",
        )


def test_upstream_key_reaches_no_client_log_or_ledger(
    tls_stack: Stack, tls_files: tuple[str, str, str], shared_fixtures: pathlib.Path, caplog: pytest.LogCaptureFixture
) -> None:
    stack = tls_stack
    caplog.set_level(logging.DEBUG)
    seen: list[bytes] = []
    cases = [
        (
            "/v1/messages",
            [("x-api-key", CLIENT_KEY)],
            "anthropic/messages_basic.sse",
            SSE,
            b'{"model":"claude-x","stream":true}',
        ),
        (
            "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse",
            [("x-goog-api-key", CLIENT_KEY)],
            "gemini/stream_basic.sse",
            SSE,
            b"{}",
        ),
        (
            f"/model/{BEDROCK_MODEL}/converse-stream",
            [("authorization", f"Bearer {CLIENT_KEY}")],
            "bedrock/converse_stream_basic.bin",
            EVENTSTREAM,
            b"{}",
        ),
        (
            "/v1/chat/completions",
            [("authorization", f"Bearer {CLIENT_KEY}")],
            "openai/chat_usage_basic.sse",
            SSE,
            b'{"model":"gpt-4o","stream":true}',
        ),
    ]
    for target, headers, capture, content_type, body in cases:
        stack.upstream.script = Script(body=(shared_fixtures / capture).read_bytes(), content_type=content_type)
        response, data, trailers = raw_exchange(stack, target, body, headers, ca=tls_files[2])
        seen.append(repr(response.headers).encode() + data + repr(trailers).encode())
        stack.upstream.script = _EchoAuth()
        response, data, trailers = raw_exchange(stack, target, body, headers, ca=tls_files[2])
        seen.append(repr(response.headers).encode() + data + repr(trailers).encode())
    # The upstream did get the key each time (so the check below is not vacuous) ...
    assert len(stack.upstream.requests) == 8
    for request in stack.upstream.requests:
        assert UPSTREAM_SECRET.encode() in b"".join(value for _, value in request.headers)
    # ... and nothing the clients saw, no log line and no ledger row holds it.
    for answer in seen:
        assert UPSTREAM_SECRET.encode() not in answer
    assert UPSTREAM_SECRET not in caplog.text
    records = stack.records(at_least=8)
    assert len(records) == 8
    assert UPSTREAM_SECRET not in repr(records)
