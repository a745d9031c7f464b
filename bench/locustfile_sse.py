"""Streaming load for teeproxy with locust: users that each read one stream to its end, then start the next.

    locust -f bench/locustfile_sse.py --headless -u 20 -r 20 -t 60s --host http://127.0.0.1:8080
    LOAD_DIALECT=bedrock locust -f bench/locustfile_sse.py --headless -u 20 -r 20 -t 60s --host URL
    make load                  # the same against `make run`'s demo (or LOAD_HOST), then the summary

Environment:
    TEEPROXY_API_KEY  the client key (default: the demo key, tp-demo-key)
    LOAD_DIALECT      openai (the default), anthropic, gemini or bedrock: which API the users speak, each with
                      its own streaming endpoint, key header and wire format
    LOAD_MODEL        the model (default: gpt-4o-mini, claude-haiku-4-5, gemini-2.5-flash or
                      anthropic.claude-3-5-haiku-20241022-v1:0, by dialect)

There is no wait between streams, so `-u N` holds N streams open at once. A chunk is one event of the stream:
an SSE event, or a message of Bedrock's binary AWS event stream (decoded with proxy/parsers/eventstream.py).
Each stream is reported as three locust rows, named by dialect:

    STREAM  request sent → stream ended. A failure when the response is not a 200, when the stream ends
            without the dialect's end event (OpenAI `data: [DONE]`, Anthropic `message_stop`, Gemini a chunk with
            a finishReason, Bedrock a `metadata` event), when it carries an in-stream error, or on a network error
    TTFC    request sent → first chunk
    GAP     the largest gap between two chunks of the stream

so the summary's percentiles are over streams: e.g. GAP's 99%ile is the p99 of each stream's largest gap.
"""

from __future__ import annotations

import logging
import os
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import msgspec
import requests
from locust import User, constant, events, task
from locust.env import Environment

from proxy.parsers.eventstream import EventStreamDecoder, Message
from proxy.parsers.sse import FrameError, SSEEvent, SSEParser

API_KEY = os.environ.get("TEEPROXY_API_KEY") or "tp-demo-key"
PROMPT = "Hello"
MAX_TOKENS = 256
CONNECT_TIMEOUT_S = 10.0
READ_TIMEOUT_S = 120.0  # the longest silence tolerated between two reads of a stream

_decode = msgspec.json.Decoder().decode


@dataclass(frozen=True, slots=True)
class Verdict:
    """What one chunk says about its stream: it is the end event, or an in-stream error (described)."""

    end: bool = False
    error: str | None = None


def _json_error(data: bytes) -> str | None:
    """The top-level `error` of an SSE data payload, if it has one (OpenAI's and Gemini's in-stream errors)."""
    if b'"error"' not in data:
        return None
    try:
        payload = _decode(data)
    except msgspec.DecodeError:
        return None
    if isinstance(payload, dict) and "error" in payload:
        return str(payload["error"])[:200]
    return None


def _openai(event: SSEEvent) -> Verdict:
    if event.data == b"[DONE]":
        return Verdict(end=True)
    return Verdict(error=_json_error(event.data))


def _anthropic(event: SSEEvent) -> Verdict:
    if event.event == "error":
        return Verdict(error=event.data.decode(errors="replace")[:200])
    return Verdict(end=event.event == "message_stop")


def _gemini(event: SSEEvent) -> Verdict:
    error = _json_error(event.data)
    return Verdict(end=error is None and b'"finishReason"' in event.data, error=error)


def _bedrock(message: Message) -> Verdict:
    if message.headers.get(":message-type") == "exception":
        kind = message.headers.get(":exception-type", "exception")
        return Verdict(error=f"{kind!s}: {message.payload.decode(errors='replace')[:200]}")
    return Verdict(end=message.headers.get(":event-type") == "metadata")


@dataclass(frozen=True)
class Dialect:
    """How to ask one API for a stream, and how to read it."""

    name: str
    default_model: str
    path: Callable[[str], str]
    headers: Callable[[str], dict[str, str]]
    body: Callable[[str], dict[str, Any]]
    verdict: Callable[[Any], Verdict]
    binary: bool = False  # an AWS event stream rather than SSE


DIALECTS = {
    d.name: d
    for d in [
        Dialect(
            "openai",
            "gpt-4o-mini",
            lambda model: "/v1/chat/completions",
            lambda key: {"authorization": f"Bearer {key}"},
            lambda model: {"model": model, "stream": True, "messages": [{"role": "user", "content": PROMPT}]},
            _openai,
        ),
        Dialect(
            "anthropic",
            "claude-haiku-4-5",
            lambda model: "/v1/messages",
            lambda key: {"x-api-key": key, "anthropic-version": "2023-06-01"},
            lambda model: {
                "model": model,
                "max_tokens": MAX_TOKENS,
                "stream": True,
                "messages": [{"role": "user", "content": PROMPT}],
            },
            _anthropic,
        ),
        Dialect(
            "gemini",
            "gemini-2.5-flash",
            lambda model: f"/v1beta/models/{urllib.parse.quote(model, safe='')}:streamGenerateContent?alt=sse",
            lambda key: {"x-goog-api-key": key},
            lambda model: {"contents": [{"role": "user", "parts": [{"text": PROMPT}]}]},
            _gemini,
        ),
        Dialect(
            "bedrock",
            "anthropic.claude-3-5-haiku-20241022-v1:0",
            lambda model: f"/model/{urllib.parse.quote(model, safe='')}/converse-stream",
            lambda key: {"x-api-key": key},
            lambda model: {
                "messages": [{"role": "user", "content": [{"text": PROMPT}]}],
                "inferenceConfig": {"maxTokens": MAX_TOKENS},
            },
            _bedrock,
            binary=True,
        ),
    ]
}

_name = os.environ.get("LOAD_DIALECT") or "openai"
if _name not in DIALECTS:
    raise ValueError(f"LOAD_DIALECT={_name!r}: expected one of {', '.join(DIALECTS)}")
DIALECT = DIALECTS[_name]
MODEL = os.environ.get("LOAD_MODEL") or DIALECT.default_model


class IncompleteStream(Exception):
    """The stream ended (or broke) before the dialect's end event."""


@dataclass
class Reading:
    """One stream's figures, on the perf_counter clock."""

    started: float
    first: float | None = None
    last: float | None = None
    max_gap_s: float = 0.0
    chunks: int = 0
    bytes: int = 0
    complete: bool = False
    error: str | None = None

    def chunk(self, at: float, verdict: Verdict) -> None:
        if self.first is None:
            self.first = at
        elif self.last is not None:
            self.max_gap_s = max(self.max_gap_s, at - self.last)
        self.last = at
        self.chunks += 1
        self.complete = self.complete or verdict.end
        self.error = self.error or verdict.error


def read_stream(response: requests.Response, reading: Reading) -> None:
    """Feed each read to the dialect's parser as it arrives, timing every chunk."""
    parser: EventStreamDecoder | SSEParser = EventStreamDecoder() if DIALECT.binary else SSEParser()
    # chunk_size=None: each read as the server's HTTP chunks arrive, never waiting to fill a buffer.
    for data in response.iter_content(chunk_size=None):
        now = time.perf_counter()
        reading.bytes += len(data)
        for item in parser.feed(data):
            reading.chunk(now, DIALECT.verdict(item))
    for item in parser.close():
        reading.chunk(time.perf_counter(), DIALECT.verdict(item))


class StreamingUser(User):
    """One stream at a time, read to its end, then the next."""

    wait_time = constant(0)
    host = "http://127.0.0.1:8080"  # `make run`'s address; --host overrides it

    def on_start(self) -> None:
        self.session = requests.Session()

    def on_stop(self) -> None:
        self.session.close()

    @task
    def stream(self) -> None:
        url = self.environment.host or self.host
        reading = Reading(started=time.perf_counter())
        failure: Exception | None = None
        try:
            with self.session.post(
                url.rstrip("/") + DIALECT.path(MODEL),
                json=DIALECT.body(MODEL),
                headers=DIALECT.headers(API_KEY),
                stream=True,
                timeout=(CONNECT_TIMEOUT_S, READ_TIMEOUT_S),
            ) as response:
                if response.status_code != 200:
                    failure = requests.HTTPError(f"HTTP {response.status_code}: {response.text[:200]}")
                else:
                    read_stream(response, reading)
        except (requests.RequestException, FrameError) as exc:
            failure = exc
        if failure is None and reading.error is not None:
            failure = IncompleteStream(f"in-stream error: {reading.error}")
        if failure is None and not reading.complete:
            failure = IncompleteStream(f"ended after {reading.chunks} chunks without its end event")
        self._report(reading, failure)

    def _report(self, reading: Reading, failure: Exception | None) -> None:
        fire = self.environment.events.request.fire
        ended = time.perf_counter()
        fire(
            request_type="STREAM",
            name=DIALECT.name,
            response_time=(ended - reading.started) * 1000,
            response_length=reading.bytes,
            exception=failure,
            context={"model": MODEL, "chunks": reading.chunks},
        )
        if reading.first is not None:
            ttfc_ms = (reading.first - reading.started) * 1000
            fire(request_type="TTFC", name=DIALECT.name, response_time=ttfc_ms, response_length=0, exception=None)
            fire(
                request_type="GAP",
                name=DIALECT.name,
                response_time=reading.max_gap_s * 1000,
                response_length=0,
                exception=None,
            )


@events.test_start.add_listener
def _announce(environment: Environment, **_: Any) -> None:
    logging.getLogger("teeproxy.load").info(
        "streaming %s (%s) from %s", DIALECT.name, MODEL, environment.host or StreamingUser.host
    )
