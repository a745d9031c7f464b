"""The sidecar's invariants, stated once; `tests/test_parser_fuzz.py` (hypothesis, in CI) and
`fuzz/fuzz_parsers.py` (atheris, for long runs) both check them on whatever bytes they make up.

A parser failure costs usage accuracy, never a forwarded byte (STYLE.md §5). So, for any bytes cut anywhere:

* each framing parser (`SSEParser`, `JSONArrayParser`, `EventStreamDecoder`) gives events or raises
  `FrameError`, nothing else; and how the bytes are cut changes neither the events nor whether it fails;
* each dialect's stream meter, for each streaming route kind, never raises from `feed` or `close` (closed twice,
  as a cancelled request can), its `status` is reported, missing or unparsed, and how the bytes are cut does not
  change the usage it reads;
* the body meter (a non-streaming response read whole) never raises, whatever the dialect's `body_usage` does;
* `first_chunk_failed` (the failover gate) never raises;
* a frame filter (OpenAI's usage-frame remover, the inline comment) never raises, forwards the bytes unchanged
  when it has nothing to remove, and puts the comment line at the start of a line, once.

Any other exception, or a failed assertion, is a finding. The first ones (the Gemini meters and two body meters
let UnicodeDecodeError or RecursionError out into the relay; the inline comment glued to an unfinished last line)
are fixed, and have regression tests of their own in tests/test_parser_fuzz.py.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from proxy.metering import BodyMeter
from proxy.parsers.eventstream import EventStreamDecoder
from proxy.parsers.jsonarray import JSONArrayParser
from proxy.parsers.sse import FrameError, SSEParser
from proxy.providers import DIALECTS
from proxy.providers.base import Route
from proxy.providers.gemini import KIND_STREAM_ARRAY, KIND_STREAM_SSE
from proxy.usage import Usage

PARSERS: dict[str, Callable[[], Any]] = {
    "sse": SSEParser,
    "jsonarray": JSONArrayParser,
    "eventstream": EventStreamDecoder,
}
# (dialect, Route.kind) for every route whose response is metered as a stream (see each dialect's match()).
STREAM_ROUTES: list[tuple[str, str]] = [
    ("openai", "chat"),
    ("openai", "completions"),
    ("openai", "responses"),
    ("anthropic", "messages"),
    ("gemini", KIND_STREAM_SSE),
    ("gemini", KIND_STREAM_ARRAY),
    ("bedrock", "converse_stream"),
    ("bedrock", "invoke_stream"),
]
# (dialect, Route.kind) for every billable route whose plain body is read whole.
BODY_ROUTES: list[tuple[str, str]] = [
    ("openai", "chat"),
    ("openai", "responses"),
    ("openai", "embeddings"),
    ("anthropic", "messages"),
    ("gemini", "generateContent"),
    ("gemini", KIND_STREAM_SSE),  # an error status's body, or a stream read whole
    ("gemini", "embedContent"),
    ("bedrock", "converse"),
    ("bedrock", "invoke"),
]
# Dialects whose frame filter can carry the inline comment (SSE ones, less Gemini's: see its frame_filter).
FILTER_ROUTES: list[tuple[str, str]] = [("openai", "chat"), ("openai", "responses"), ("anthropic", "messages")]
STATUSES = frozenset({"reported", "missing", "unparsed"})
COMMENT = b": x-teeproxy-usage {}\n"
# Bedrock's invoke reports usage in headers; the fuzzers pick from these.
BEDROCK_COUNT_HEADERS = (b"x-amzn-bedrock-input-token-count", b"x-amzn-bedrock-output-token-count")


def split(data: bytes, cuts: Sequence[int]) -> list[bytes]:
    """`data` cut at the given offsets (taken modulo its length + 1, in order); empty pieces included."""
    points = sorted(c % (len(data) + 1) for c in cuts)
    pieces, start = [], 0
    for point in points:
        pieces.append(data[start:point])
        start = point
    pieces.append(data[start:])
    return pieces


def route(dialect: str, kind: str) -> Route:
    stream = (
        None
        if dialect in ("openai", "anthropic")
        else kind in (KIND_STREAM_SSE, KIND_STREAM_ARRAY) or kind.endswith("stream")
    )
    return Route(kind=kind, upstream_path="", model="m" if stream is not None else None, stream=stream)


def parse(name: str, pieces: list[bytes]) -> tuple[list[Any], bool]:
    """Feed the pieces, then close: (every event, whether it ended in FrameError). Anything else propagates."""
    parser = PARSERS[name]()
    events: list[Any] = []
    try:
        for piece in pieces:
            events += parser.feed(piece)
        events += parser.close()
    except FrameError:
        return events, True
    return events, False


def check_parser(name: str, data: bytes, cuts: Sequence[int]) -> None:
    whole = parse(name, [data])
    cut = parse(name, split(data, cuts))
    assert cut == whole, f"{name}: cutting the input changed the outcome"


def meter_result(dialect: str, kind: str, pieces: list[bytes]) -> tuple[Usage | None, str, bool]:
    meter = DIALECTS[dialect].stream_meter(route(dialect, kind))
    for piece in pieces:
        meter.feed(piece)
    meter.close()
    meter.close()
    status = meter.status
    assert status in STATUSES, status
    assert meter.usage is None or isinstance(meter.usage, Usage)
    assert isinstance(meter.finished, bool)
    return meter.usage, status, meter.finished


def check_meter(dialect: str, kind: str, data: bytes, cuts: Sequence[int]) -> None:
    whole = meter_result(dialect, kind, [data])
    cut = meter_result(dialect, kind, split(data, cuts))
    assert cut == whole, f"{dialect}/{kind}: cutting the stream changed the usage read: {whole} vs {cut}"


def check_body(dialect: str, kind: str, data: bytes, cuts: Sequence[int], headers: list[tuple[bytes, bytes]]) -> None:
    meter = BodyMeter(DIALECTS[dialect], route(dialect, kind), headers)
    for piece in split(data, cuts):
        meter.feed(piece)
    meter.close()
    usage, status = meter.usage, meter.status
    assert status in STATUSES and (usage is None or isinstance(usage, Usage))


def check_first_chunk(dialect: str, kind: str, data: bytes) -> None:
    assert isinstance(DIALECTS[dialect].first_chunk_failed(route(dialect, kind), data), bool)


def check_filter(
    dialect: str,
    kind: str,
    data: bytes,
    cuts: Sequence[int],
    strip: bool,
    comment: bool,
) -> None:
    r = route(dialect, kind)
    meter = DIALECTS[dialect].stream_meter(r)
    made = DIALECTS[dialect].frame_filter(r, meter, strip, (lambda: COMMENT) if comment else None)
    if made is None:
        return
    out = b"".join(made.feed(piece) for piece in split(data, cuts)) + made.close()
    assert meter.status in STATUSES
    if comment and COMMENT in data:
        return  # the made-up stream holds the comment itself: nothing to tell them apart by
    if comment:
        at = out.find(COMMENT)
        assert at >= 0, "the inline comment is missing"
        assert at == 0 or out[at - 1 : at] in (b"\n", b"\r"), "the inline comment does not start a line"
        out = out[:at] + out[at + len(COMMENT) :]
        if out == data + b"\n" and data[-1:] not in (b"\n", b"\r"):
            out = data  # the line end put before a comment that follows an unfinished last line
    if not strip or b'"usage"' not in data:
        assert out == data, "the filter changed bytes it had no reason to touch"
    else:
        assert len(out) <= len(data)
