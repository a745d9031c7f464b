"""Fuzzing the sidecar in CI (hypothesis): whatever bytes an upstream sends, cut however the network cuts them,
the parsers give events or FrameError and the meters never raise. The invariants are `fuzz.invariants`; the
long-running twin of this file is the atheris harness, `make fuzz`.

Inputs are random bytes, soups of the tokens the parsers look for, and mutated well-formed streams (the soak's
own and the real captures, `fuzz.seeds`). Example counts are kept moderate: CI has 2 cores.
"""

from __future__ import annotations

import contextlib
import os
import random
from unittest import mock

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fuzz import invariants as inv
from fuzz.seeds import STREAMS, TOKENS, mutate
from proxy.metering import BodyMeter
from proxy.parsers import sse
from proxy.providers import DIALECTS
from proxy.providers import anthropic as anthropic_provider
from proxy.providers import openai as openai_provider

# Per test; `FUZZ_EXAMPLES=5000 pytest tests/test_parser_fuzz.py` for a deeper local run.
EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "150"))
FAST = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
FEWER = settings(max_examples=max(1, EXAMPLES // 2), deadline=None, suppress_health_check=[HealthCheck.too_slow])
FAMILY_OF_PARSER = {"sse": "sse", "jsonarray": "array", "eventstream": "eventstream"}
FAMILY_OF_ROUTE = {"gemini": "sse", "openai": "sse", "anthropic": "sse", "bedrock": "eventstream"}

cuts = st.lists(st.integers(min_value=0, max_value=1 << 16), max_size=12)


def stream_bytes(family: str) -> st.SearchStrategy[bytes]:
    soup = st.lists(st.sampled_from(TOKENS) | st.binary(max_size=6), max_size=40).map(b"".join)
    mutated = st.builds(
        lambda seed, salt, rounds: mutate(seed, random.Random(salt), rounds),
        st.sampled_from(STREAMS[family]),
        st.integers(0, 2**32),
        st.integers(0, 6),
    )
    return st.one_of(st.binary(max_size=512), soup, mutated)


def family_for(dialect: str, kind: str) -> str:
    return "array" if kind == inv.KIND_STREAM_ARRAY else FAMILY_OF_ROUTE[dialect]


@pytest.mark.parametrize("name", sorted(inv.PARSERS))
def test_parser_gives_events_or_frame_error_however_cut(name: str) -> None:
    @FAST
    @given(data=stream_bytes(FAMILY_OF_PARSER[name]), at=cuts)
    def check(data: bytes, at: list[int]) -> None:
        inv.check_parser(name, data, at)

    check()


@pytest.mark.parametrize(("dialect", "kind"), inv.STREAM_ROUTES, ids=[f"{d}-{k}" for d, k in inv.STREAM_ROUTES])
def test_stream_meter_never_raises_and_cutting_changes_nothing(dialect: str, kind: str) -> None:
    @FAST
    @given(data=stream_bytes(family_for(dialect, kind)), at=cuts)
    def check(data: bytes, at: list[int]) -> None:
        inv.check_meter(dialect, kind, data, at)

    check()


@pytest.mark.parametrize(("dialect", "kind"), inv.BODY_ROUTES, ids=[f"{d}-{k}" for d, k in inv.BODY_ROUTES])
def test_body_meter_never_raises(dialect: str, kind: str) -> None:
    counts = st.lists(
        st.tuples(st.sampled_from(inv.BEDROCK_COUNT_HEADERS), st.sampled_from([b"12", b"-1", b"x", b"9" * 5000])),
        max_size=2,
    )

    @FEWER
    @given(data=stream_bytes("array") | stream_bytes(family_for(dialect, kind)), at=cuts, headers=counts)
    def check(data: bytes, at: list[int], headers: list[tuple[bytes, bytes]]) -> None:
        inv.check_body(dialect, kind, data, at, headers)

    check()


@pytest.mark.parametrize(("dialect", "kind"), inv.STREAM_ROUTES, ids=[f"{d}-{k}" for d, k in inv.STREAM_ROUTES])
def test_first_chunk_gate_never_raises(dialect: str, kind: str) -> None:
    @FEWER
    @given(data=stream_bytes(family_for(dialect, kind)))
    def check(data: bytes) -> None:
        inv.check_first_chunk(dialect, kind, data)

    check()


@pytest.mark.parametrize(("dialect", "kind"), inv.FILTER_ROUTES, ids=[f"{d}-{k}" for d, k in inv.FILTER_ROUTES])
def test_frame_filter_forwards_what_it_does_not_remove(dialect: str, kind: str) -> None:
    @FAST
    @given(data=stream_bytes("sse"), at=cuts, strip=st.booleans(), comment=st.booleans())
    def check(data: bytes, at: list[int], strip: bool, comment: bool) -> None:
        inv.check_filter(dialect, kind, data, at, strip, comment)

    check()


SSE_ROUTES = [(d, k) for d, k in inv.STREAM_ROUTES if family_for(d, k) == "sse"]


@pytest.mark.parametrize(("dialect", "kind"), SSE_ROUTES, ids=[f"{d}-{k}" for d, k in SSE_ROUTES])
def test_a_line_past_the_limit_changes_nothing_read_before_it_however_cut(dialect: str, kind: str) -> None:
    # The limit is made small and a line past it put anywhere in a stream: the usage read before it, and the status
    # ("unparsed" once the parser met the line), are the same however the stream is cut, and so is what the frame
    # filter forwards. (Before the parser gave the events a read completed ahead of its fault, a usage frame and the
    # broken line in one read lost the usage.)
    limit = 2048
    long_line = b"data: " + b"x" * limit + b"\n\n"
    limits = [
        mock.patch.object(sse, "MAX_LINE_BYTES", limit),
        mock.patch.object(sse, "MAX_EVENT_BYTES", 4 * limit),
        mock.patch.object(openai_provider, "MAX_LINE_BYTES", limit),
        mock.patch.object(anthropic_provider, "MAX_LINE_BYTES", limit),
    ]

    @FEWER
    @given(seed=st.sampled_from(STREAMS["sse"]), where=st.integers(0, 1 << 16), at=cuts, strip=st.booleans())
    def check(seed: bytes, where: int, at: list[int], strip: bool) -> None:
        where %= len(seed) + 1
        data = seed[:where] + long_line + seed[where:]
        with contextlib.ExitStack() as stack:
            for patch in limits:
                stack.enter_context(patch)
            inv.check_meter(dialect, kind, data, at)
            if (dialect, kind) in inv.FILTER_ROUTES:
                inv.check_filter(dialect, kind, data, at, strip, comment=not strip)

    check()


# The fuzzers' first findings, each fixed since; kept as plain regression tests.


@pytest.mark.parametrize("tail", [b"data: [DONE]", b'data: {"choi'])
def test_inline_comment_starts_a_line_after_an_unfinished_last_line(tail: bytes) -> None:
    stream = b'data: {"choices":[{"delta":{"content":"hi"}}]}\n\n' + tail
    inv.check_filter("openai", "chat", stream, [], strip=False, comment=True)


@pytest.mark.parametrize(
    ("kind", "stream"),
    [
        (inv.KIND_STREAM_SSE, b'data: {"candidates":[{"finishReason":"ST\xffOP"}]}\r\n\r\n'),
        (inv.KIND_STREAM_ARRAY, b'[{"candidates":[{"finishReason":"\xff"}]}]'),
        (inv.KIND_STREAM_SSE, b'data: {"usageMetadata":' + b"[" * 1000 + b"]" * 1000 + b"}\r\n\r\n"),
    ],
    ids=["sse-invalid-utf8", "array-invalid-utf8", "sse-deep-nesting"],
)
def test_gemini_stream_meter_never_raises(kind: str, stream: bytes) -> None:
    inv.meter_result("gemini", kind, [stream])


@pytest.mark.parametrize(
    ("dialect", "kind", "body"),
    [
        ("gemini", "generateContent", b'{"usageMetadata":' + b"[" * 1000 + b"]" * 1000 + b"}"),
        ("bedrock", "converse", b'{"usage":' + b"[" * 1000 + b"]" * 1000 + b"}"),
    ],
    ids=["gemini-generateContent", "bedrock-converse"],
)
def test_body_meter_never_raises_on_deep_nesting(dialect: str, kind: str, body: bytes) -> None:
    meter = BodyMeter(DIALECTS[dialect], inv.route(dialect, kind), [])
    meter.feed(body)
    meter.close()
