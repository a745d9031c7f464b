"""The Bedrock dialect: every ConverseStream capture gives its expected usage (whole, byte by byte, in any chunks);
synthetic invoke streams (Anthropic and not) and cache counters; failures cost usage accuracy only; model ids
travel exactly as botocore encodes them; SigV4 and Bedrock-key auth; and real boto3 reads our errors."""

from __future__ import annotations

import base64
import hashlib
import hmac
import http.server
import json
import pathlib
import threading
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote, urlsplit

import boto3
import botocore.session
import msgspec
import pytest
from botocore import serialize
from botocore.config import Config
from botocore.exceptions import ClientError, EventStreamError
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.config import ProviderConfig
from proxy.errors import (
    BadRequest,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    ProxyError,
    Unauthorized,
    UpstreamConnectError,
    UpstreamError,
    UpstreamProtocolError,
    UpstreamTimeout,
)
from proxy.parsers.eventstream import event_frame, exception_frame
from proxy.providers import bedrock
from proxy.providers.base import Dialect, Incoming, Outgoing, Route, StreamMeter, Upstream
from proxy.usage import Usage
from tests.conftest import SHARED_FIXTURES, load_expected

DIALECT: Dialect = bedrock.DIALECT
ROWS = [row for row in load_expected() if row["format"] == "bedrock_converse"]
ARN = "arn:aws:bedrock:us-east-1:123456789012:inference-profile/us.anthropic.claude-3-5-sonnet-20240620-v1:0"
ENCODED_ARN = ARN.replace(":", "%3A").replace("/", "%2F")
SERVICE_MODEL = botocore.session.get_session().get_service_model("bedrock-runtime")
OPERATIONS = {
    "converse": "Converse",
    "converse-stream": "ConverseStream",
    "invoke": "InvokeModel",
    "invoke-with-response-stream": "InvokeModelWithResponseStream",
    "count-tokens": "CountTokens",
}


def route(operation: str, model: str = "anthropic.claude-3-haiku-20240307-v1:0") -> Route:
    found = DIALECT.match(incoming(f"/model/{quote(model, safe='')}/{operation}".encode()))
    assert found is not None
    return found


def incoming(raw_path: bytes, method: str = "POST", headers: list[tuple[bytes, bytes]] | None = None) -> Incoming:
    return Incoming(method=method, path="", raw_path=raw_path, query=b"", headers=headers or [])


def run(meter: StreamMeter, data: bytes, sizes: list[int] | None = None) -> StreamMeter:
    pos = 0
    for size in sizes or []:
        meter.feed(data[pos : pos + size])
        pos += size
    meter.feed(data[pos:])
    meter.close()
    return meter


def stripped(usage: Usage | None) -> Usage | None:
    return None if usage is None else msgspec.structs.replace(usage, raw="")


# --- the captures -------------------------------------------------------------------------------------------------


def check(row: dict[str, Any], meter: StreamMeter) -> None:
    exp = row["expected"]
    if exp["status"] == "error":
        assert (meter.usage, meter.status, meter.finished) == (None, "missing", False)
        return
    cached, written = exp["cached_input_tokens"], exp["cache_creation_input_tokens"]
    assert (meter.status, meter.finished) == ("reported", True)
    assert stripped(meter.usage) == Usage(
        input_tokens=exp["input_tokens"] + cached + written,  # Bedrock's inputTokens exclude the cache
        cached_tokens=cached,
        cache_write_tokens=written,
        output_tokens=exp["output_tokens"],
    )
    assert meter.usage is not None
    raw = json.loads(meter.usage.raw)  # the upstream's own usage object, verbatim
    assert (raw["inputTokens"], raw["totalTokens"]) == (exp["input_tokens"], exp["total_tokens"])


@pytest.mark.parametrize("row", ROWS, ids=[r["file"] for r in ROWS])
def test_capture_whole_byte_by_byte_and_with_trailing_data(shared_fixtures: pathlib.Path, row: dict[str, Any]) -> None:
    body = (shared_fixtures / row["file"]).read_bytes()
    check(row, run(DIALECT.stream_meter(route("converse-stream")), body))
    check(row, run(DIALECT.stream_meter(route("converse-stream")), body, [1] * len(body)))
    # A stream cut inside a frame after its final usage: nothing could change the count.
    check(row, run(DIALECT.stream_meter(route("converse-stream")), body + body[:20]))


@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_capture_in_random_chunks(shared_fixtures: pathlib.Path, data: st.DataObject) -> None:
    row = data.draw(st.sampled_from(ROWS))
    body = (shared_fixtures / row["file"]).read_bytes()
    sizes = data.draw(st.lists(st.integers(min_value=1, max_value=1024), max_size=40))
    check(row, run(DIALECT.stream_meter(route("converse-stream")), body, sizes))


def test_corpus_is_present_when_shared_is() -> None:
    if SHARED_FIXTURES.is_dir():
        assert len(ROWS) == 4


# --- synthetic streams --------------------------------------------------------------------------------------------


def converse_stream(usage: dict[str, Any]) -> bytes:
    return b"".join(
        [
            event_frame("messageStart", b'{"role":"assistant"}'),
            event_frame("contentBlockDelta", b'{"contentBlockIndex":0,"delta":{"text":"Hi"}}'),
            event_frame("contentBlockStop", b'{"contentBlockIndex":0}'),
            event_frame("messageStop", b'{"stopReason":"end_turn"}'),
            event_frame("metadata", json.dumps({"usage": usage, "metrics": {"latencyMs": 300}}).encode()),
        ]
    )


def test_converse_stream_cache_reads_and_writes_are_added_to_input() -> None:
    usage = {
        "inputTokens": 12,
        "outputTokens": 30,
        "totalTokens": 1542,
        "cacheReadInputTokens": 1000,
        "cacheWriteInputTokens": 500,
        "cacheDetails": [{"ttl": "1h", "inputTokens": 200}, {"ttl": "5m", "inputTokens": 300}],
    }
    meter = run(DIALECT.stream_meter(route("converse-stream")), converse_stream(usage))
    assert (meter.status, meter.finished) == ("reported", True)
    assert stripped(meter.usage) == Usage(
        input_tokens=1512, cached_tokens=1000, cache_write_tokens=500, cache_write_1h_tokens=200, output_tokens=30
    )
    assert meter.usage is not None and json.loads(meter.usage.raw) == usage


def chunk(event: dict[str, Any], padding: str = "") -> bytes:
    payload: dict[str, str] = {"bytes": base64.b64encode(json.dumps(event).encode()).decode()}
    if padding:
        payload["p"] = padding  # Bedrock pads payloads to hide their lengths
    return event_frame("chunk", json.dumps(payload).encode())


METRICS = {"inputTokenCount": 10, "outputTokenCount": 25, "invocationLatency": 812, "firstByteLatency": 301}
ANTHROPIC_START = {
    "type": "message_start",
    "message": {
        "id": "msg_bdrk_01",
        "type": "message",
        "role": "assistant",
        "model": "claude-3-5-sonnet-20240620",
        "content": [],
        "stop_reason": None,
        "usage": {
            "input_tokens": 10,
            "cache_read_input_tokens": 100,
            "cache_creation_input_tokens": 50,
            "cache_creation": {"ephemeral_5m_input_tokens": 20, "ephemeral_1h_input_tokens": 30},
            "output_tokens": 1,
        },
    },
}
ANTHROPIC_BODY = [
    chunk(ANTHROPIC_START, padding="abcdefgh"),
    chunk({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
    chunk({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hello"}}),
    chunk({"type": "content_block_stop", "index": 0}),
    chunk({"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 25}}),
]


def anthropic_stream(metrics: dict[str, Any] | None) -> bytes:
    stop: dict[str, Any] = {"type": "message_stop"}
    if metrics is not None:
        stop["amazon-bedrock-invocationMetrics"] = metrics
    return b"".join([*ANTHROPIC_BODY, chunk(stop)])


def test_invoke_stream_anthropic_invocation_metrics_are_the_bill() -> None:
    metrics = {**METRICS, "cacheReadInputTokenCount": 100, "cacheWriteInputTokenCount": 50, "outputTokenCount": 26}
    meter = run(DIALECT.stream_meter(route("invoke-with-response-stream")), anthropic_stream(metrics))
    assert (meter.status, meter.finished) == ("reported", True)
    # Bedrock's count (26) wins over the model's own (25); the one-hour share of the writes comes from Anthropic.
    assert stripped(meter.usage) == Usage(
        input_tokens=160, cached_tokens=100, cache_write_tokens=50, cache_write_1h_tokens=30, output_tokens=26
    )
    assert meter.usage is not None and json.loads(meter.usage.raw) == metrics


def test_invoke_stream_anthropic_without_metrics_uses_the_model_usage() -> None:
    meter = run(DIALECT.stream_meter(route("invoke-with-response-stream")), anthropic_stream(None))
    assert (meter.status, meter.finished) == ("reported", True)  # message_stop
    assert stripped(meter.usage) == Usage(
        input_tokens=160, cached_tokens=100, cache_write_tokens=50, cache_write_1h_tokens=30, output_tokens=25
    )


@settings(max_examples=40, deadline=None)
@given(sizes=st.lists(st.integers(min_value=1, max_value=200), max_size=30))
def test_invoke_stream_in_random_chunks(sizes: list[int]) -> None:
    whole = run(DIALECT.stream_meter(route("invoke-with-response-stream")), anthropic_stream(METRICS))
    chunked = run(DIALECT.stream_meter(route("invoke-with-response-stream")), anthropic_stream(METRICS), sizes)
    assert (chunked.usage, chunked.status, chunked.finished) == (whole.usage, "reported", True)


def test_invoke_stream_is_recognized_as_anthropic_by_content_not_model_id() -> None:
    profile = "arn:aws:bedrock:us-east-1:123456789012:application-inference-profile/a1b2c3"
    meter = run(DIALECT.stream_meter(route("invoke-with-response-stream", profile)), b"".join(ANTHROPIC_BODY))
    assert meter.usage is not None and meter.usage.output_tokens == 25
    assert (meter.status, meter.finished) == ("reported", False)  # cut before message_stop: a lower bound


@pytest.mark.parametrize(
    ("model", "events"),
    [
        (
            "meta.llama3-70b-instruct-v1:0",
            [
                {"generation": "Hi", "prompt_token_count": 10, "generation_token_count": 1, "stop_reason": None},
                {"generation": " there", "prompt_token_count": None, "generation_token_count": 2, "stop_reason": None},
                {"generation": "", "generation_token_count": 25, "stop_reason": "stop"},
            ],
        ),
        (
            "amazon.nova-lite-v1:0",
            [
                {"messageStart": {"role": "assistant"}},
                {"contentBlockDelta": {"delta": {"text": "Hi"}, "contentBlockIndex": 0}},
                {"messageStop": {"stopReason": "end_turn"}},
                {"metadata": {"usage": {"inputTokens": 10, "outputTokens": 25}}},
            ],
        ),
    ],
)
def test_invoke_stream_non_anthropic_model_billed_by_invocation_metrics(model: str, events: list[Any]) -> None:
    events[-1]["amazon-bedrock-invocationMetrics"] = METRICS
    stream = b"".join(chunk(e) for e in events)
    meter = run(DIALECT.stream_meter(route("invoke-with-response-stream", model)), stream)
    assert (meter.status, meter.finished) == ("reported", True)
    assert stripped(meter.usage) == Usage(input_tokens=10, output_tokens=25)
    before = run(DIALECT.stream_meter(route("invoke-with-response-stream", model)), stream[: -len(chunk(events[-1]))])
    assert (before.usage, before.status, before.finished) == (None, "missing", False)


def corrupt(frame: bytes) -> bytes:
    return frame[:-6] + bytes([frame[-6] ^ 0x20]) + frame[-5:]  # a payload byte: the message CRC fails


def test_corrupt_frame_mid_stream_is_unparsed_with_the_usage_seen_before() -> None:
    # One read per frame here; messages completed earlier in the same read as a corrupt one are kept too.
    frames = [ANTHROPIC_BODY[0], ANTHROPIC_BODY[1], corrupt(ANTHROPIC_BODY[2]), anthropic_stream(METRICS)]
    meter = run(DIALECT.stream_meter(route("invoke-with-response-stream")), b"".join(frames), [len(f) for f in frames])
    assert (meter.status, meter.finished) == ("unparsed", False)
    assert meter.usage is not None and (meter.usage.input_tokens, meter.usage.output_tokens) == (160, 1)
    converse = converse_stream({"inputTokens": 3, "outputTokens": 4, "totalTokens": 7})
    meter = run(DIALECT.stream_meter(route("converse-stream")), corrupt(converse[:100]) + converse[100:])
    assert (meter.usage, meter.status, meter.finished) == (None, "unparsed", False)


def test_stream_cut_inside_a_frame_before_the_bill_is_unparsed() -> None:
    stream = anthropic_stream(METRICS)
    meter = run(DIALECT.stream_meter(route("invoke-with-response-stream")), stream[:-10])
    assert (meter.status, meter.finished) == ("unparsed", False)
    assert meter.usage is not None and meter.usage.output_tokens == 25  # message_delta was read: a lower bound


def test_undecodable_chunk_marks_doubt_until_the_metrics_settle_it() -> None:
    bad = event_frame("chunk", b'{"bytes":"not base64!"}')
    meter = run(DIALECT.stream_meter(route("invoke-with-response-stream")), ANTHROPIC_BODY[0] + bad)
    assert meter.status == "unparsed"
    meter = run(
        DIALECT.stream_meter(route("invoke-with-response-stream")),
        ANTHROPIC_BODY[0] + bad + chunk({"type": "message_stop", "amazon-bedrock-invocationMetrics": METRICS}),
    )
    assert (meter.status, meter.finished) == ("reported", True)


def test_exception_frame_keeps_usage_and_leaves_the_stream_unfinished() -> None:
    error = exception_frame("throttlingException", b'{"message":"Too many tokens"}')
    stream = ANTHROPIC_BODY[0] + error + anthropic_stream(METRICS)  # nothing after the exception is read
    meter = run(DIALECT.stream_meter(route("invoke-with-response-stream")), stream)
    assert (meter.status, meter.finished) == ("reported", False)
    assert meter.usage is not None and (meter.usage.input_tokens, meter.usage.output_tokens) == (160, 1)


@settings(max_examples=200, deadline=None)
@given(data=st.binary(max_size=300), kind=st.sampled_from(["converse-stream", "invoke-with-response-stream"]))
def test_meter_never_raises_on_random_bytes(data: bytes, kind: str) -> None:
    meter = run(DIALECT.stream_meter(route(kind)), data)
    assert meter.status in ("missing", "unparsed")


# --- non-streaming bodies -----------------------------------------------------------------------------------------


def test_converse_body_usage() -> None:
    body = json.dumps(
        {
            "output": {"message": {"role": "assistant", "content": [{"text": "Hi"}]}},
            "stopReason": "end_turn",
            "usage": {"inputTokens": 7, "outputTokens": 3, "totalTokens": 30, "cacheReadInputTokens": 20},
            "metrics": {"latencyMs": 100},
        }
    ).encode()
    usage = DIALECT.body_usage(route("converse"), body, [])
    assert stripped(usage) == Usage(input_tokens=27, cached_tokens=20, output_tokens=3)
    assert DIALECT.body_usage(route("converse"), b'{"output":{}}', []) is None
    with pytest.raises(ValueError):
        DIALECT.body_usage(route("converse"), b'{"usage": {"inputTokens": "many"', [])


def test_invoke_body_usage_from_headers_then_from_an_anthropic_body() -> None:
    headers = [
        (b"content-type", b"application/json"),
        (b"x-amzn-bedrock-input-token-count", b"11"),
        (b"x-amzn-bedrock-output-token-count", b"5"),
        (b"x-amzn-bedrock-cache-read-input-token-count", b"300"),
        (b"x-amzn-bedrock-cache-write-input-token-count", b"40"),
    ]
    body = b'{"type":"message","usage":{"input_tokens":1,"output_tokens":1}}'  # the headers win
    usage = DIALECT.body_usage(route("invoke"), body, headers)
    assert stripped(usage) == Usage(input_tokens=351, cached_tokens=300, cache_write_tokens=40, output_tokens=5)
    assert usage is not None and json.loads(usage.raw)["x-amzn-bedrock-input-token-count"] == "11"
    body = b'{"type":"message","usage":{"input_tokens":9,"cache_read_input_tokens":4,"output_tokens":2}}'
    assert stripped(DIALECT.body_usage(route("invoke"), body, [])) == Usage(
        input_tokens=13, cached_tokens=4, output_tokens=2
    )
    assert DIALECT.body_usage(route("invoke"), b'{"generation":"hi"}', []) is None
    with pytest.raises(ValueError):
        DIALECT.body_usage(route("invoke"), b"{}", [(b"x-amzn-bedrock-input-token-count", b"eleven")])


# --- routes -------------------------------------------------------------------------------------------------------


def botocore_path(operation: str, model_id: str) -> str:
    """The request path botocore's own rest-json serializer writes for this call."""
    op = SERVICE_MODEL.operation_model(OPERATIONS[operation])
    params: dict[str, Any] = {"modelId": model_id}
    if operation.startswith("converse"):
        params["messages"] = []
    elif operation == "count-tokens":
        params["input"] = {"converse": {"messages": []}}
    else:
        params["body"] = b"{}"
    path: str = serialize.create_serializer("rest-json").serialize_to_request(params, op)["url_path"]
    return path


@pytest.mark.parametrize("operation", list(OPERATIONS))
def test_arn_model_id_is_decoded_and_re_encoded_as_botocore_does(operation: str) -> None:
    found = DIALECT.match(incoming(f"/model/{ENCODED_ARN}/{operation}".encode()))
    assert found is not None
    assert found.model == ARN
    assert found.upstream_path == botocore_path(operation, ARN) == f"/model/{ENCODED_ARN}/{operation}"
    assert found.stream is operation.endswith("stream")


@settings(max_examples=200, deadline=None)
@given(model=st.text(min_size=1, max_size=80).filter(lambda s: s.isprintable() and s not in (".", "..")))
def test_any_printable_model_id_round_trips_through_botocore_encoding(model: str) -> None:
    path = botocore_path("converse", model)
    found = DIALECT.match(incoming(path.encode()))
    assert found is not None and (found.model, found.upstream_path) == (model, path)


def test_count_tokens_is_routed_and_free() -> None:
    r = route("count-tokens")
    assert (r.kind, r.stream, r.billable) == ("count_tokens", False, False)
    assert DIALECT.body_usage(r, b'{"inputTokens": 42}', []) is None


def test_lenient_client_encoding_is_normalized_to_botocores() -> None:
    found = DIALECT.match(incoming(b"/model/us.anthropic.claude-3-5-haiku-20241022-v1:0/converse-stream"))
    assert found is not None
    assert found.upstream_path == "/model/us.anthropic.claude-3-5-haiku-20241022-v1%3A0/converse-stream"
    assert (found.kind, found.stream) == ("converse_stream", True)


@pytest.mark.parametrize(
    ("raw_path", "method", "error"),
    [
        (b"/model/x/converse", "GET", MethodNotAllowed),
        (b"/model//converse", "POST", BadRequest),
        (b"/model/%2E%2E/invoke", "POST", BadRequest),  # would be /invoke once httpx resolves the dot segment
        (b"/model/./converse", "POST", BadRequest),
        (b"/model/bad%0Aid/invoke", "POST", BadRequest),
        (b"/model/bad%7Fid/invoke", "POST", BadRequest),
        (b"/model/%FF%FE/invoke", "POST", BadRequest),
        (b"/model/arn:aws:bedrock:us-east-1:1:inference-profile/us.x/converse", "POST", BadRequest),
    ],
)
def test_bad_requests_on_bedrock_paths(raw_path: bytes, method: str, error: type[ProxyError]) -> None:
    with pytest.raises(error):
        DIALECT.match(incoming(raw_path, method))


@pytest.mark.parametrize(
    "raw_path", [b"/v1/chat/completions", b"/model/x/other", b"/model/converse", b"/models", b"/model/x/converse/"]
)
def test_other_paths_are_not_bedrocks(raw_path: bytes) -> None:
    assert DIALECT.match(incoming(raw_path)) is None


def test_client_key_bearer_or_x_api_key() -> None:
    bearer = incoming(b"/", headers=[(b"authorization", b"Bearer tp-123")])
    assert DIALECT.client_key(bearer) == b"tp-123"
    sigv4 = b"AWS4-HMAC-SHA256 Credential=AKID/20250101/us-east-1/bedrock/aws4_request, SignedHeaders=host, Signature=0"
    hooked = incoming(b"/", headers=[(b"authorization", sigv4), (b"x-api-key", b"tp-456")])
    assert DIALECT.client_key(hooked) == b"tp-456"
    assert DIALECT.client_key(incoming(b"/", headers=[(b"authorization", sigv4)])) is None


def test_the_rest_of_the_seam() -> None:
    r = route("converse-stream")
    assert DIALECT.is_stream(r, "application/vnd.amazon.eventstream")
    assert not DIALECT.is_stream(r, "application/json")
    assert DIALECT.frame_filter(r, DIALECT.stream_meter(r), False, lambda: b"usage") is None
    assert DIALECT.request_fields(r, {}, provider()) is None
    assert json.loads(DIALECT.models_body([("amazon.nova-lite-v1:0", "amazon")])) == {
        "modelSummaries": [{"modelId": "amazon.nova-lite-v1:0", "providerName": "amazon"}]
    }


# --- credentials --------------------------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def hermetic_aws(monkeypatch: pytest.MonkeyPatch, tmp_path: pathlib.Path) -> Iterator[None]:
    """No credentials but the ones a test sets, and botocore's per-process lookup cleared on both sides."""
    for name in (
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "AWS_PROFILE",
        "AWS_DEFAULT_PROFILE",
        "AWS_BEARER_TOKEN_BEDROCK",
        "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
        "AWS_CONTAINER_CREDENTIALS_FULL_URI",
        "AWS_WEB_IDENTITY_TOKEN_FILE",
        "AWS_ROLE_ARN",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    bedrock.aws_credentials.cache_clear()
    yield
    bedrock.aws_credentials.cache_clear()


def keys(monkeypatch: pytest.MonkeyPatch, access: str, secret: str, token: str | None = None) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", access)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
    if token is not None:
        monkeypatch.setenv("AWS_SESSION_TOKEN", token)


def provider(region: str | None = "us-west-2", base_url: str = "https://bedrock.example") -> ProviderConfig:
    return ProviderConfig(name="bedrock", base_url=base_url, dialect="bedrock", region=region)


CLIENT_HEADERS = [
    (b"content-type", b"application/json"),
    (b"accept", b"application/json"),
    (b"x-amzn-bedrock-trace", b"ENABLED"),
    (b"user-agent", b"Boto3/1.44 md/Botocore#1.44"),
    (b"authorization", b"AWS4-HMAC-SHA256 Credential=CLIENTKEY/20200101/us-east-1/bedrock/aws4_request, Signature=1"),
    (b"x-amz-date", b"20200101T000000Z"),
    (b"x-amz-security-token", b"client-session-token"),
    (b"x-amz-content-sha256", b"UNSIGNED-PAYLOAD"),
    (b"amz-sdk-invocation-id", b"5f0c"),
    (b"amz-sdk-request", b"attempt=1; max=3"),
    (b"x-api-key", b"tp-teeproxy-key"),
]


def outgoing(base_url: str = "https://bedrock-runtime.us-west-2.amazonaws.com") -> Outgoing:
    path = DIALECT.match(incoming(f"/model/{ENCODED_ARN}/converse".encode()))
    assert path is not None
    return Outgoing("POST", base_url + path.upstream_path, list(CLIENT_HEADERS), b'{"messages":[]}')


def verify_sigv4(out: Outgoing, secret: str) -> dict[str, str]:
    """Check the signature as AWS would (SigV4 by the spec, not by botocore) from the request as sent; return
    the Authorization fields."""
    sent: dict[str, list[str]] = {}
    for name, value in out.headers:
        sent.setdefault(name.decode(), []).append(value.decode())
    assert len(sent["authorization"]) == 1
    algorithm, _, rest = sent["authorization"][0].partition(" ")
    assert algorithm == "AWS4-HMAC-SHA256"
    fields = dict(part.strip().split("=", 1) for part in rest.split(","))
    _access, date, region, service, terminator = fields["Credential"].split("/")
    url = urlsplit(out.url)
    signed = fields["SignedHeaders"].split(";")
    values = {name: url.netloc if name == "host" else ",".join(v.strip() for v in sent[name]) for name in signed}
    canonical = "\n".join(
        [
            out.method,
            quote(url.path, safe="/~"),  # all services but S3 encode each path segment twice
            url.query,
            *(f"{name}:{values[name]}" for name in signed),
            "",
            fields["SignedHeaders"],
            hashlib.sha256(out.body).hexdigest(),
        ]
    )
    scope = f"{date}/{region}/{service}/{terminator}"
    to_sign = "\n".join(
        ["AWS4-HMAC-SHA256", sent["x-amz-date"][0], scope, hashlib.sha256(canonical.encode()).hexdigest()]
    )
    key = ("AWS4" + secret).encode()
    for part in (date, region, service, terminator):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    assert fields["Signature"] == hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
    return fields


def test_sigv4_signature_replaces_the_clients(monkeypatch: pytest.MonkeyPatch) -> None:
    keys(monkeypatch, "AKIDPROXY", "proxy-secret", token="proxy-session-token")
    out = outgoing()
    DIALECT.attach_credentials(out, Upstream(provider(), "https://bedrock-runtime.us-west-2.amazonaws.com", None))
    fields = verify_sigv4(out, "proxy-secret")
    assert fields["Credential"].startswith("AKIDPROXY/") and fields["Credential"].endswith(
        "/us-west-2/bedrock/aws4_request"
    )
    signed = fields["SignedHeaders"].split(";")
    assert signed == ["accept", "content-type", "host", "x-amz-date", "x-amz-security-token", "x-amzn-bedrock-trace"]
    names = [name for name, _ in out.headers]
    assert names.count(b"authorization") == 1 and b"x-api-key" not in names
    assert not [n for n in names if n.startswith(b"amz-sdk-")]
    amz = {n.decode(): v for n, v in out.headers if n.startswith(b"x-amz-")}
    assert set(amz) == {"x-amz-date", "x-amz-security-token"}  # the proxy's, all signed; the client's are gone
    assert amz["x-amz-security-token"] == b"proxy-session-token" and amz["x-amz-date"] != b"20200101T000000Z"


def test_region_comes_from_a_bedrock_runtime_url(monkeypatch: pytest.MonkeyPatch) -> None:
    keys(monkeypatch, "AKIDPROXY", "proxy-secret")
    base = "https://bedrock-runtime-fips.eu-central-1.amazonaws.com"
    out = outgoing(base)
    DIALECT.attach_credentials(out, Upstream(provider(region=None, base_url=base), base, None))
    assert "/eu-central-1/bedrock/" in verify_sigv4(out, "proxy-secret")["Credential"]
    with pytest.raises(ProxyError, match="no AWS region"):
        DIALECT.attach_credentials(outgoing(), Upstream(provider(region=None), "http://127.0.0.1:9", None))


def test_no_credentials_is_a_clear_proxy_error() -> None:
    with pytest.raises(ProxyError, match="no AWS credentials") as caught:
        DIALECT.attach_credentials(outgoing(), Upstream(provider(), "https://bedrock.example", None))
    assert type(caught.value) is ProxyError


def test_credentials_are_looked_up_once_per_process(monkeypatch: pytest.MonkeyPatch) -> None:
    keys(monkeypatch, "AKIDFIRST", "first-secret")
    out = outgoing()
    DIALECT.attach_credentials(out, Upstream(provider(), "https://bedrock.example", None))
    assert verify_sigv4(out, "first-secret")["Credential"].startswith("AKIDFIRST/")
    keys(monkeypatch, "AKIDSECOND", "second-secret")
    out = outgoing()
    DIALECT.attach_credentials(out, Upstream(provider(), "https://bedrock.example", None))
    assert verify_sigv4(out, "first-secret")["Credential"].startswith("AKIDFIRST/")  # the cached lookup
    bedrock.aws_credentials.cache_clear()  # what the autouse fixture does between tests
    out = outgoing()
    DIALECT.attach_credentials(out, Upstream(provider(), "https://bedrock.example", None))
    assert verify_sigv4(out, "second-secret")["Credential"].startswith("AKIDSECOND/")


def test_bedrock_api_key_is_sent_as_bearer_without_any_aws_lookup() -> None:
    out = outgoing()
    DIALECT.attach_credentials(out, Upstream(provider(), "https://bedrock.example", "bedrock-api-key"))
    assert [v for n, v in out.headers if n == b"authorization"] == [b"Bearer bedrock-api-key"]
    assert not [n for n, _ in out.headers if n.startswith((b"x-amz-", b"amz-sdk-")) or n == b"x-api-key"]
    assert bedrock.aws_credentials.cache_info().misses == 0


# --- real boto3 against our bytes ---------------------------------------------------------------------------------


class Replay(http.server.ThreadingHTTPServer):
    reply: tuple[int, list[tuple[str, str]], bytes] = (200, [], b"")


class _Handler(http.server.BaseHTTPRequestHandler):
    server: Replay

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("content-length") or 0))
        status, headers, body = self.server.reply
        self.send_response(status)
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def replay() -> Iterator[Replay]:
    server = Replay(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join()


@pytest.fixture
def client(replay: Replay) -> Iterator[Any]:
    c = boto3.session.Session().client(
        "bedrock-runtime",
        endpoint_url=f"http://127.0.0.1:{replay.server_address[1]}",
        region_name="us-east-1",
        aws_access_key_id="AKIDCLIENT",
        aws_secret_access_key="client-secret",
        config=Config(retries={"total_max_attempts": 1}),
    )
    yield c
    c.close()


def call(client: Any, operation: str) -> Any:
    if operation == "converse_stream":
        return client.converse_stream(modelId=ARN, messages=[{"role": "user", "content": [{"text": "Hi"}]}])
    return client.invoke_model_with_response_stream(modelId=ARN, body=b"{}")


class _RateLimited(ProxyError):
    status = 429


@pytest.mark.parametrize(
    ("exc", "code"),
    [
        (BadRequest("body is not JSON"), "ValidationException"),
        (Unauthorized("unknown key"), "AccessDeniedException"),
        (NotFound("no such path"), "ResourceNotFoundException"),
        (MethodNotAllowed("use POST"), "ValidationException"),
        (PayloadTooLarge("too large"), "ValidationException"),
        (_RateLimited("slow down"), "ThrottlingException"),
        (ProxyError("no AWS region for provider"), "InternalServerException"),
        (UpstreamConnectError("could not connect"), "ServiceUnavailableException"),
        (UpstreamTimeout("upstream timed out"), "ModelTimeoutException"),
    ],
)
def test_error_response_is_what_boto3_raises(replay: Replay, client: Any, exc: ProxyError, code: str) -> None:
    status, headers, body = DIALECT.error_response(exc)
    replay.reply = (status, [(n.decode(), v.decode()) for n, v in headers], body)
    with pytest.raises(ClientError) as caught:
        client.converse(modelId=ARN, messages=[{"role": "user", "content": [{"text": "Hi"}]}])
    response = caught.value.response
    assert (response["Error"]["Code"], response["Error"]["Message"]) == (code, exc.message)
    assert response["ResponseMetadata"]["HTTPStatusCode"] == exc.status


@pytest.mark.parametrize("operation", ["converse_stream", "invoke_model_with_response_stream"])
@pytest.mark.parametrize(
    ("exc", "code"),
    [
        (UpstreamTimeout("upstream went quiet"), "modelStreamErrorException"),
        (UpstreamProtocolError("upstream broke the stream"), "modelStreamErrorException"),
        (UpstreamError("upstream failed"), "serviceUnavailableException"),
        (ProxyError("proxy failed"), "internalServerException"),
    ],
)
def test_stream_error_is_what_boto3_raises(
    replay: Replay, client: Any, operation: str, exc: ProxyError, code: str
) -> None:
    if operation == "converse_stream":
        r = route("converse-stream", ARN)
        head = event_frame("messageStart", b'{"role":"assistant"}')
        head += event_frame("contentBlockDelta", b'{"contentBlockIndex":0,"delta":{"text":"Hi"}}')
    else:
        r = route("invoke-with-response-stream", ARN)
        head = ANTHROPIC_BODY[0] + ANTHROPIC_BODY[1]
    replay.reply = (200, [("content-type", "application/vnd.amazon.eventstream")], head + DIALECT.stream_error(r, exc))
    events = []
    with pytest.raises(EventStreamError) as caught:
        for event in call(client, operation)["stream" if operation == "converse_stream" else "body"]:
            events.append(event)
    assert len(events) == 2  # the normal events came through first
    assert (caught.value.response["Error"]["Code"], caught.value.response["Error"]["Message"]) == (code, exc.message)


class _Sent(Exception):
    pass


def sent_by_boto3(hook: Any = None) -> Incoming:
    """The request boto3 would send for a Converse call, caught before it leaves (botocore's before-send)."""
    captured: list[Any] = []

    def catch(request: Any, **_: Any) -> None:
        captured.append(request)
        raise _Sent

    # A fresh session: boto3's default one would keep the credentials an earlier test resolved.
    c = boto3.session.Session().client("bedrock-runtime", region_name="us-east-1")
    c.meta.events.register("before-send.bedrock-runtime.Converse", catch)
    if hook is not None:
        c.meta.events.register("before-sign.bedrock-runtime.Converse", hook)
    try:
        with pytest.raises(_Sent):
            c.converse(modelId=ARN, messages=[{"role": "user", "content": [{"text": "Hi"}]}])
    finally:
        c.close()
    [request] = captured
    headers = [(k.lower().encode(), v if isinstance(v, bytes) else v.encode()) for k, v in request.headers.items()]
    return incoming(urlsplit(request.url).path.encode(), headers=headers)


def test_boto3_bearer_token_is_the_client_key_and_its_path_is_ours(monkeypatch: pytest.MonkeyPatch) -> None:
    # botocore sends a bearer token over HTTPS only: such clients need teeproxy behind TLS.
    monkeypatch.setenv("AWS_BEARER_TOKEN_BEDROCK", "tp-from-boto3")
    sent = sent_by_boto3()
    assert DIALECT.client_key(sent) == b"tp-from-boto3"
    found = DIALECT.match(sent)
    assert found is not None and (found.model, found.upstream_path) == (ARN, sent.raw_path.decode())


def test_boto3_sigv4_client_with_a_key_hook(monkeypatch: pytest.MonkeyPatch) -> None:
    keys(monkeypatch, "AKIDCLIENT", "client-secret")

    def add_key(request: Any, **_: Any) -> None:
        request.headers["x-api-key"] = "tp-hooked"

    sent = sent_by_boto3(add_key)
    assert DIALECT.client_key(sent) == b"tp-hooked"
    assert b"Credential=AKIDCLIENT/" in dict(sent.headers)[b"authorization"]  # the client signed it itself
    out = Outgoing("POST", "https://bedrock.example" + sent.raw_path.decode(), list(sent.headers), b"{}")
    keys(monkeypatch, "AKIDPROXY", "proxy-secret")
    DIALECT.attach_credentials(out, Upstream(provider(), "https://bedrock.example", None))
    assert verify_sigv4(out, "proxy-secret")["Credential"].startswith("AKIDPROXY/")
    assert b"AKIDCLIENT" not in b"".join(v for _, v in out.headers) and b"tp-hooked" not in b"".join(
        v for _, v in out.headers
    )
