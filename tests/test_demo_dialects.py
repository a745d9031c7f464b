"""The demo upstream in every dialect, driven directly by each provider's real SDK (no proxy in between).

What a newcomer would notice: each SDK's README example works against the demo with no keys, the text is the
demo text (cut at the client's output limit), and usage arrives in the provider's own fields. The wire format
is held to the real captures in ../shared/fixtures: every field the demo sends appears there too.
"""

from __future__ import annotations

import asyncio
import base64
import json
import pathlib
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import anthropic
import boto3  # type: ignore[import-untyped]
import httpx
import openai
import pytest
from botocore.config import Config as BotoConfig
from google import genai
from google.genai import types as genai_types

from proxy.demo import DEMO_TEXT, DemoUpstream, H11Server, Reply, Request
from proxy.parsers.eventstream import EventStreamDecoder
from tests.servers import LoopThread

WORDS = [w if i == 0 else " " + w for i, w in enumerate(DEMO_TEXT.split(" "))]
ARN = "arn:aws:bedrock:us-east-1:123456789012:inference-profile/us.anthropic.claude-3-5-haiku-20241022-v1:0"
MESSAGES: Any = [{"role": "user", "content": "Hello"}]  # one literal for both SDKs' message types


def first(n: int) -> str:
    return "".join(WORDS[:n])


@pytest.fixture(scope="module")
def loop() -> Iterator[LoopThread]:
    thread = LoopThread()
    yield thread
    thread.close()


def serve(loop: LoopThread, **kwargs: Any) -> Iterator[str]:
    demo = DemoUpstream(**kwargs)
    loop.run(demo.server.start())
    try:
        yield demo.server.root_url
    finally:
        loop.run(demo.server.aclose())


@pytest.fixture(scope="module")
def root_url(loop: LoopThread) -> Iterator[str]:
    yield from serve(loop, tokens_per_s=5000, first_token_latency_s=0)


# --- OpenAI: unchanged ------------------------------------------------------------------------------------


def test_openai_chat_stream_and_json(root_url: str) -> None:
    with openai.OpenAI(base_url=root_url + "/v1", api_key="x", max_retries=0) as client:
        stream = client.chat.completions.create(
            model="gpt-4o-mini", messages=MESSAGES, stream=True, stream_options={"include_usage": True}
        )
        chunks = list(stream)
        reply = client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == DEMO_TEXT
    usage = chunks[-1].usage
    assert usage is not None and usage.completion_tokens == len(WORDS) and usage.prompt_tokens >= 1
    assert reply.choices[0].message.content == DEMO_TEXT
    assert reply.usage is not None and reply.usage.total_tokens == reply.usage.prompt_tokens + len(WORDS)


def test_openai_responses_stream_helper_and_max_tokens(root_url: str) -> None:
    """The SDK's `responses.stream()` helper needs the whole event sequence (output_item.added, content_part.added,
    the .done events); chat honours max_tokens with finish_reason "length"."""
    with openai.OpenAI(base_url=root_url + "/v1", api_key="x", max_retries=0) as client:
        with client.responses.stream(model="gpt-4o-mini", input="hi") as stream:
            kinds = [event.type for event in stream]
            final = stream.get_final_response()
        cut = client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, max_tokens=3)
    assert final.output_text == DEMO_TEXT
    assert final.usage is not None and final.usage.output_tokens == len(WORDS)
    assert kinds[:4] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ]
    assert kinds[-4:] == [
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert cut.choices[0].message.content == first(3) and cut.choices[0].finish_reason == "length"


def test_openai_base_url_keeps_v1(loop: LoopThread) -> None:
    demo = DemoUpstream()
    loop.run(demo.server.start())
    try:
        assert demo.server.base_url == demo.server.root_url + "/v1"
        assert demo.server.root_url == f"http://127.0.0.1:{demo.server.port}"
    finally:
        loop.run(demo.server.aclose())


# --- Anthropic --------------------------------------------------------------------------------------------


@pytest.fixture
def claude(root_url: str) -> Iterator[anthropic.Anthropic]:
    with anthropic.Anthropic(base_url=root_url, api_key="x", max_retries=0) as client:
        yield client


def test_anthropic_message_is_cut_at_max_tokens(claude: anthropic.Anthropic) -> None:
    message = claude.messages.create(model="claude-haiku-4-5", max_tokens=5, messages=MESSAGES)
    [block] = message.content
    assert isinstance(block, anthropic.types.TextBlock) and block.text == first(5)
    assert message.stop_reason == "max_tokens" and message.model == "claude-haiku-4-5"
    assert message.id.startswith("msg_")
    usage = message.usage
    assert usage.output_tokens == 5 and usage.input_tokens >= 1
    assert usage.cache_creation_input_tokens == 0 and usage.cache_read_input_tokens == 0


@pytest.mark.parametrize(("max_tokens", "stop_reason"), [(1024, "end_turn"), (7, "max_tokens")])
def test_anthropic_stream(claude: anthropic.Anthropic, max_tokens: int, stop_reason: str) -> None:
    with claude.messages.stream(model="claude-haiku-4-5", max_tokens=max_tokens, messages=MESSAGES) as stream:
        pieces = list(stream.text_stream)
        final = stream.get_final_message()
    expected = min(max_tokens, len(WORDS))
    assert pieces == WORDS[:expected]  # one delta per word
    assert isinstance(final.content[0], anthropic.types.TextBlock) and final.content[0].text == first(expected)
    assert final.stop_reason == stop_reason
    assert final.usage.output_tokens == expected  # message_delta's cumulative count, not added to message_start's
    counted = claude.messages.count_tokens(model="claude-haiku-4-5", messages=MESSAGES)
    assert final.usage.input_tokens == counted.input_tokens >= 1


def test_anthropic_ids_are_unique(claude: anthropic.Anthropic) -> None:
    ids = {claude.messages.create(model="m", max_tokens=1, messages=MESSAGES).id for _ in range(3)}
    assert len(ids) == 3


def test_anthropic_stream_matches_the_real_wire(root_url: str, shared_fixtures: pathlib.Path) -> None:
    body = {"model": "claude-haiku-4-5", "max_tokens": 64, "stream": True, "messages": MESSAGES}
    raw = httpx.post(root_url + "/v1/messages", json=body).content
    ours = sse_events(raw)
    real = sse_events((shared_fixtures / "anthropic" / "messages_basic.sse").read_bytes())
    assert collapse([kind for kind, _ in ours]) == collapse([kind for kind, _ in real])
    assert raw.count(b'data: {"type": "ping"}') == 1  # spaced, as the API sends it
    assert_fields_are_real(
        ours, [e for p in (shared_fixtures / "anthropic").glob("*.sse") for e in sse_events(p.read_bytes())]
    )


# --- Gemini -----------------------------------------------------------------------------------------------


@pytest.fixture
def gemini(root_url: str) -> Iterator[genai.Client]:
    with genai.Client(api_key="x", http_options={"base_url": root_url}) as client:
        yield client


def test_gemini_generate_content(gemini: genai.Client) -> None:
    response = gemini.models.generate_content(model="gemini-2.0-flash", contents="Hello")
    assert response.text == DEMO_TEXT
    usage = response.usage_metadata
    assert usage is not None and usage.candidates_token_count == len(WORDS)
    assert usage.prompt_token_count is not None and usage.total_token_count == usage.prompt_token_count + len(WORDS)
    assert response.candidates and response.candidates[0].finish_reason == genai_types.FinishReason.STOP


def test_gemini_generate_content_is_cut_at_max_output_tokens(gemini: genai.Client) -> None:
    config = genai_types.GenerateContentConfig(max_output_tokens=4)
    response = gemini.models.generate_content(model="gemini-2.0-flash", contents="Hello", config=config)
    assert response.text == first(4)
    assert response.candidates and response.candidates[0].finish_reason == genai_types.FinishReason.MAX_TOKENS
    assert response.usage_metadata is not None and response.usage_metadata.candidates_token_count == 4


def test_gemini_stream(gemini: genai.Client) -> None:
    chunks = list(gemini.models.generate_content_stream(model="gemini-2.5-flash", contents="Hello"))
    assert "".join(c.text or "" for c in chunks) == DEMO_TEXT
    assert all(c.usage_metadata is not None for c in chunks)  # usage is live, on every chunk
    last = chunks[-1]
    assert last.usage_metadata is not None and last.usage_metadata.candidates_token_count == len(WORDS)
    assert last.candidates and last.candidates[0].finish_reason == genai_types.FinishReason.STOP
    counted = gemini.models.count_tokens(model="gemini-2.5-flash", contents="Hello")
    assert counted.total_tokens == last.usage_metadata.prompt_token_count


def test_gemini_embeddings(gemini: genai.Client) -> None:
    result = gemini.models.embed_content(model="gemini-embedding-001", contents=["one", "two"])
    assert result.embeddings is not None and len(result.embeddings) == 2 and result.embeddings[0].values


@pytest.mark.parametrize("version", ["v1beta", "v1"])
def test_gemini_json_array_stream_parses_when_joined(root_url: str, version: str) -> None:
    url = f"{root_url}/{version}/models/gemini-2.0-flash:streamGenerateContent"
    body = {"contents": [{"role": "user", "parts": [{"text": "Hello"}]}], "generationConfig": {"maxOutputTokens": 6}}
    with httpx.stream("POST", url, json=body) as response:
        pieces = list(response.iter_raw())
    assert response.headers["content-type"].startswith("application/json")
    raw = b"".join(pieces)
    assert raw.startswith(b"[{") and raw.count(b"\r\n,\r\n") == 5
    elements = json.loads(raw)
    assert "".join(e["candidates"][0]["content"]["parts"][0]["text"] for e in elements) == first(6)
    assert elements[-1]["candidates"][0]["finishReason"] == "MAX_TOKENS"
    assert elements[-1]["usageMetadata"]["candidatesTokenCount"] == 6


def test_gemini_sse_matches_the_real_wire(root_url: str, shared_fixtures: pathlib.Path) -> None:
    url = root_url + "/v1beta/models/gemini-2.0-flash:streamGenerateContent?alt=sse"
    raw = httpx.post(url, json={"contents": [{"parts": [{"text": "Hi"}]}]}).content
    assert raw.startswith(b'data: {"candidates": [{') and raw.endswith(b"}\r\n\r\n")  # Google's spacing, CRLF
    ours = sse_events(raw)
    assert len(ours) == len(WORDS)
    real = [e for p in (shared_fixtures / "gemini").glob("*.sse") for e in sse_events(p.read_bytes())]
    assert_fields_are_real(ours, real)


# --- Bedrock ----------------------------------------------------------------------------------------------


@pytest.fixture
def bedrock(root_url: str) -> Any:
    return boto3.client(
        "bedrock-runtime",
        endpoint_url=root_url,
        region_name="us-east-1",
        aws_access_key_id="AKIDEXAMPLE",
        aws_secret_access_key="secret",
        config=BotoConfig(retries={"max_attempts": 1}),
    )


CONVERSE_MESSAGES = [{"role": "user", "content": [{"text": "Hello"}]}]


@pytest.mark.parametrize("model_id", ["anthropic.claude-3-haiku-20240307-v1:0", ARN])
def test_bedrock_converse(bedrock: Any, model_id: str) -> None:
    response = bedrock.converse(modelId=model_id, messages=CONVERSE_MESSAGES, inferenceConfig={"maxTokens": 3})
    assert response["output"]["message"] == {"role": "assistant", "content": [{"text": first(3)}]}
    assert response["stopReason"] == "max_tokens"
    usage = response["usage"]
    assert usage["outputTokens"] == 3 and usage["totalTokens"] == usage["inputTokens"] + 3
    assert response["metrics"]["latencyMs"] >= 0
    counted = bedrock.count_tokens(modelId=model_id, input={"converse": {"messages": CONVERSE_MESSAGES}})
    assert counted["inputTokens"] == usage["inputTokens"]


def test_bedrock_converse_stream(bedrock: Any) -> None:
    response = bedrock.converse_stream(modelId=ARN, messages=CONVERSE_MESSAGES)
    events = list(response["stream"])
    kinds = [next(iter(e)) for e in events]
    assert collapse(kinds) == ["messageStart", "contentBlockDelta", "contentBlockStop", "messageStop", "metadata"]
    text = "".join(e["contentBlockDelta"]["delta"]["text"] for e in events if "contentBlockDelta" in e)
    assert text == DEMO_TEXT and kinds.count("contentBlockDelta") == len(WORDS)
    assert events[-2]["messageStop"]["stopReason"] == "end_turn"
    metadata = events[-1]["metadata"]
    assert metadata["usage"]["outputTokens"] == len(WORDS) and metadata["usage"]["inputTokens"] >= 1
    assert metadata["metrics"]["latencyMs"] >= 0


def test_bedrock_invoke_model(bedrock: Any) -> None:
    body = {"anthropic_version": "bedrock-2023-05-31", "max_tokens": 5, "messages": MESSAGES}
    response = bedrock.invoke_model(modelId=ARN, body=json.dumps(body))
    message = json.loads(response["body"].read())
    assert message["type"] == "message" and message["model"] == "claude-3-5-haiku-20241022"
    assert message["content"] == [{"type": "text", "text": first(5)}] and message["stop_reason"] == "max_tokens"
    headers = response["ResponseMetadata"]["HTTPHeaders"]
    assert headers["x-amzn-bedrock-output-token-count"] == "5" == str(message["usage"]["output_tokens"])
    assert headers["x-amzn-bedrock-input-token-count"] == str(message["usage"]["input_tokens"])


def test_bedrock_invoke_model_with_response_stream(bedrock: Any) -> None:
    body = {"anthropic_version": "bedrock-2023-05-31", "max_tokens": 1000, "messages": MESSAGES}
    response = bedrock.invoke_model_with_response_stream(modelId=ARN, body=json.dumps(body))
    events = [json.loads(part["chunk"]["bytes"]) for part in response["body"]]
    kinds = [e["type"] for e in events]
    assert collapse(kinds) == [
        "message_start",
        "content_block_start",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    text = "".join(e["delta"]["text"] for e in events if e["type"] == "content_block_delta")
    assert text == DEMO_TEXT
    assert events[-2]["usage"]["output_tokens"] == len(WORDS)
    metrics = events[-1]["amazon-bedrock-invocationMetrics"]
    assert metrics["outputTokenCount"] == len(WORDS) and metrics["inputTokenCount"] >= 1
    assert metrics["invocationLatency"] >= metrics["firstByteLatency"] >= 0


def test_bedrock_invoke_other_families_is_a_validation_error(bedrock: Any) -> None:
    with pytest.raises(bedrock.exceptions.ValidationException):
        bedrock.invoke_model(modelId="meta.llama3-8b-instruct-v1:0", body=json.dumps({"prompt": "Hi"}))


def test_bedrock_stream_matches_the_real_wire(root_url: str, shared_fixtures: pathlib.Path) -> None:
    url = f"{root_url}/model/{quote(ARN, safe='')}/converse-stream"
    raw = httpx.post(url, json={"messages": CONVERSE_MESSAGES}).content
    ours = frames(raw)
    real = frames((shared_fixtures / "bedrock" / "converse_stream_basic.bin").read_bytes())
    assert collapse([kind for kind, _ in ours]) == collapse([kind for kind, _ in real])
    real_all = [f for p in (shared_fixtures / "bedrock").glob("converse_stream_*.bin") for f in frames(p.read_bytes())]
    assert_fields_are_real(ours, real_all)
    assert all(list(body) == sorted(body) and "p" in body for _, body in ours)  # sorted keys and padding


def test_bedrock_chunk_payloads_are_base64_anthropic_events(root_url: str) -> None:
    url = f"{root_url}/model/anthropic.claude-3-haiku-20240307-v1%3A0/invoke-with-response-stream"
    raw = httpx.post(url, json={"max_tokens": 2, "messages": MESSAGES}).content
    chunks = frames(raw)
    assert {kind for kind, _ in chunks} == {"chunk"}
    inner = [json.loads(base64.b64decode(body["bytes"])) for _, body in chunks]
    assert inner[0]["message"]["model"] == "claude-3-haiku-20240307"
    assert inner[-1]["type"] == "message_stop" and "amazon-bedrock-invocationMetrics" in inner[-1]


# --- errors in each dialect's own format ------------------------------------------------------------------

ERRORS = [
    ("/v1/chat/completions", lambda b: b["error"]["type"] == "invalid_request_error"),
    ("/v1/messages", lambda b: b["type"] == "error" and b["error"]["type"] == "invalid_request_error"),
    ("/v1beta/models/gemini-2.0-flash:generateContent", lambda b: b["error"]["status"] == "INVALID_ARGUMENT"),
    ("/model/anthropic.claude-3-haiku-20240307-v1%3A0/converse", lambda b: "message" in b),
]


@pytest.mark.parametrize(("path", "shape"), ERRORS)
def test_bad_json_is_a_400_in_the_dialects_format(root_url: str, path: str, shape: Any) -> None:
    response = httpx.post(root_url + path, content=b"{not json", headers={"content-type": "application/json"})
    assert response.status_code == 400 and shape(response.json())


NOT_FOUND = [
    ("/v1/nothing-here", lambda b: b["error"]["type"] == "invalid_request_error"),
    ("/v1/messages/batches", lambda b: b["type"] == "error" and b["error"]["type"] == "not_found_error"),
    ("/v1beta/models/gemini-2.0-flash:dance", lambda b: b["error"]["status"] == "NOT_FOUND"),
    ("/v1beta/files", lambda b: b["error"]["code"] == 404),
    ("/model/some-model/sing", lambda b: "message" in b),
]


@pytest.mark.parametrize(("path", "shape"), NOT_FOUND)
def test_unknown_path_is_a_404_in_the_dialects_format(root_url: str, path: str, shape: Any) -> None:
    response = httpx.post(root_url + path, json={})
    assert response.status_code == 404 and shape(response.json())


def test_bedrock_errors_name_their_type(bedrock: Any) -> None:
    with pytest.raises(bedrock.exceptions.ValidationException, match="max_tokens"):
        bedrock.invoke_model(modelId=ARN, body=json.dumps({"messages": MESSAGES}))


def test_anthropic_without_max_tokens_is_rejected_as_the_api_does(root_url: str) -> None:
    response = httpx.post(root_url + "/v1/messages", json={"model": "m", "messages": MESSAGES})
    assert response.status_code == 400 and "max_tokens" in response.json()["error"]["message"]


# --- pace --------------------------------------------------------------------------------------------------

FIRST_TOKEN_S = 0.25
FIRST_TOKEN_REQUESTS = [
    ("/v1/chat/completions", {"model": "m", "messages": MESSAGES, "stream": True}),
    ("/v1/messages", {"model": "m", "max_tokens": 2, "messages": MESSAGES, "stream": True}),
    ("/v1beta/models/g:streamGenerateContent?alt=sse", {"contents": []}),
    ("/model/m/converse-stream", {"messages": CONVERSE_MESSAGES}),
]


def test_every_dialect_waits_before_its_first_token(loop: LoopThread) -> None:
    for root in serve(loop, tokens_per_s=5000, first_token_latency_s=FIRST_TOKEN_S):
        with httpx.Client() as client:
            for path, body in FIRST_TOKEN_REQUESTS:
                started = time.monotonic()
                with client.stream("POST", root + path, json=body) as response:
                    next(response.iter_raw())
                    assert response.status_code == 200
                    assert time.monotonic() - started >= FIRST_TOKEN_S * 0.9, path


# --- helpers ----------------------------------------------------------------------------------------------


def sse_events(raw: bytes) -> list[tuple[str, dict[str, Any]]]:
    """(event type, JSON body) per SSE event; the type is the `event:` field, else the body's "type", else ""."""
    out = []
    for block in raw.replace(b"\r\n", b"\n").split(b"\n\n"):
        fields = dict(line.split(b": ", 1) for line in block.split(b"\n") if b": " in line)
        if b"data" in fields:
            body = json.loads(fields[b"data"])
            out.append((fields.get(b"event", str(body.get("type", "")).encode()).decode(), body))
    return out


def frames(raw: bytes) -> list[tuple[str, dict[str, Any]]]:
    decoder = EventStreamDecoder()
    messages = decoder.feed(raw) + decoder.close()
    return [(str(m.headers[":event-type"]), json.loads(m.payload)) for m in messages if ":event-type" in m.headers]


def collapse(kinds: list[str]) -> list[str]:
    """Runs of one kind as one, and pings dropped: the shape of a stream, whatever its length."""
    out: list[str] = []
    for kind in kinds:
        if kind != "ping" and (not out or out[-1] != kind):
            out.append(kind)
    return out


def field_paths(value: Any, prefix: str = "") -> set[str]:
    if isinstance(value, dict):
        paths = {prefix} if prefix else set()
        for key, item in value.items():
            paths |= field_paths(item, f"{prefix}.{key}" if prefix else key)
        return paths
    if isinstance(value, list):
        return {prefix}.union(*(field_paths(item, prefix + "[]") for item in value))
    return {prefix}


def assert_fields_are_real(ours: list[tuple[str, dict[str, Any]]], real: list[tuple[str, dict[str, Any]]]) -> None:
    """Every field the demo sends in an event of some type, a real capture has sent in an event of that type."""
    seen: dict[str, set[str]] = {}
    for kind, body in real:
        seen.setdefault(kind, set()).update(field_paths(body))
    for kind, body in ours:
        invented = field_paths(body) - seen.get(kind, set())
        assert not invented, f"{kind}: fields no capture has: {sorted(invented)}"


def test_openai_n_choices_and_a_forced_tool_call(root_url: str) -> None:
    """The demo answers `n` with n choices (interleaved in a stream, as OpenAI sends them) and a forced tool
    choice with a tool call, so SDK code that uses either runs against `make run`."""
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]
    with openai.OpenAI(base_url=root_url + "/v1", api_key="x", max_retries=0) as client:
        reply = client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, n=3, max_tokens=2)
        chunks = list(client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, n=2, stream=True))
        called = client.chat.completions.create(
            model="gpt-4o-mini",
            messages=MESSAGES,
            tools=tools,
            tool_choice="required",  # type: ignore[arg-type]
        )
        streamed = list(
            client.chat.completions.create(
                model="gpt-4o-mini",
                messages=MESSAGES,
                tools=tools,
                tool_choice="required",
                stream=True,  # type: ignore[arg-type]
            )
        )
        bad = client.with_options(max_retries=0).chat.completions.with_raw_response
        try:
            bad.create(model="gpt-4o-mini", messages=MESSAGES, n=0)
            refused = False
        except openai.BadRequestError:
            refused = True
    assert [c.message.content for c in reply.choices] == [first(2)] * 3
    texts = {
        i: "".join(c.choices[0].delta.content or "" for c in chunks if c.choices and c.choices[0].index == i)
        for i in (0, 1)
    }
    assert texts == {0: DEMO_TEXT, 1: DEMO_TEXT}
    [choice] = called.choices
    assert choice.finish_reason == "tool_calls"
    assert choice.message.tool_calls is not None and choice.message.tool_calls[0].function.name == "get_weather"
    assert streamed[-1].choices[0].finish_reason == "tool_calls"
    assert refused


def test_closing_the_server_ends_a_handler_still_answering() -> None:
    # A client that left mid-stream leaves its handler waiting; closing the server ends it there and then, so no
    # task of the server outlives its loop (asyncio would report each as "destroyed but pending").
    ended: list[str] = []

    async def stalled(request: Request, reply: Reply) -> None:
        await reply.start(200, [(b"content-type", b"text/event-stream")])
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            ended.append("cancelled")
            raise

    async def scenario() -> list[asyncio.Task[Any]]:
        server = H11Server(stalled)
        await server.start()
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        await reader.readuntil(b"\r\n\r\n")  # the handler is now waiting
        await server.aclose()
        writer.close()
        return [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]

    assert asyncio.run(scenario()) == []
    assert ended == ["cancelled"]
