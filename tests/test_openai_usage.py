"""The OpenAI dialect's conformance corpus: every OpenAI-style capture gives exactly its expected usage, fed
whole, byte by byte, and in random chunks; the frame filter removes exactly the usage-only frame."""

from __future__ import annotations

import json
import pathlib
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.parsers import sse
from proxy.parsers.sse import MAX_LINE_BYTES
from proxy.providers import openai as openai_provider
from proxy.providers.openai import OpenAIFrameFilter, OpenAIStreamMeter, body_usage, usage_from_body
from proxy.usage import Usage
from tests.conftest import SHARED_FIXTURES, load_expected

ROWS = [row for row in load_expected() if row["format"] in ("openai_chat", "openai_responses")]


def endpoint(row: dict[str, Any]) -> str:
    if row["format"] == "openai_responses":
        return "responses"
    return "completions" if "completions_legacy" in row["file"] else "chat"


def meter(row: dict[str, Any], body: bytes, sizes: list[int] | None = None) -> OpenAIStreamMeter:
    m = OpenAIStreamMeter(endpoint(row))
    if sizes is None:
        m.feed(body)
    else:
        pos = 0
        for size in sizes:
            m.feed(body[pos : pos + size])
            pos += size
        m.feed(body[pos:])
    m.close()
    return m


def check(row: dict[str, Any], m: OpenAIStreamMeter) -> None:
    exp = row["expected"]
    if "input_tokens" not in exp:
        assert m.usage is None
        assert m.status == "missing"
        return
    assert m.status == "reported"
    assert m.usage is not None
    got = (m.usage.input_tokens, m.usage.output_tokens, m.usage.cached_tokens, m.usage.reasoning_tokens)
    want = (
        exp["input_tokens"],
        exp["output_tokens"],
        exp.get("cached_input_tokens") or 0,
        exp.get("reasoning_tokens") or 0,
    )
    assert got == want
    assert m.usage.cache_write_tokens == 0
    raw = json.loads(m.usage.raw)  # the upstream's own usage object, kept verbatim for audit
    assert raw.get("prompt_tokens", raw.get("input_tokens")) == exp["input_tokens"]


@pytest.mark.parametrize("row", ROWS, ids=[r["file"] for r in ROWS])
def test_capture_whole_and_byte_by_byte(shared_fixtures: pathlib.Path, row: dict[str, Any]) -> None:
    body = (shared_fixtures / row["file"]).read_bytes()
    check(row, meter(row, body))
    check(row, meter(row, body, [1] * len(body)))
    check(row, meter(row, body + b'data: {"trailing": '))  # an unfinished trailing frame changes nothing


@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_capture_in_random_chunks(shared_fixtures: pathlib.Path, data: st.DataObject) -> None:
    row = data.draw(st.sampled_from(ROWS))
    body = (shared_fixtures / row["file"]).read_bytes()
    sizes = data.draw(st.lists(st.integers(min_value=1, max_value=2048), max_size=60))
    check(row, meter(row, body, sizes))


def test_corpus_is_present_when_shared_is() -> None:
    if SHARED_FIXTURES.is_dir():
        assert len(ROWS) >= 20


# --- small fixtures of our own -----------------------------------------------------------------------------


def test_last_usage_wins_and_null_usage_is_ignored() -> None:
    stream = (
        b'data: {"choices":[{"index":0,"delta":{"content":"a"}}],"usage":null}\n\n'
        b'data: {"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":1}}\n\n'
        b'data: {"choices":[],"usage":{"prompt_tokens":5,"completion_tokens":2}}\n\n'
        b"data: [DONE]\n\n"
    )
    m = OpenAIStreamMeter("chat")
    m.feed(stream)
    m.close()
    assert m.usage is not None and (m.usage.input_tokens, m.usage.output_tokens) == (5, 2)


def test_malformed_usage_frame_is_unparsed_not_raised() -> None:
    m = OpenAIStreamMeter("chat")
    m.feed(b'data: {"choices":[],"usage":{"prompt_tokens":"many"}}\n\n')
    m.close()
    assert (m.usage, m.status) == (None, "unparsed")


def test_frame_limit_is_unparsed_not_raised() -> None:
    m = OpenAIStreamMeter("chat")
    m.feed(b"data: " + b"x" * (MAX_LINE_BYTES + 1))
    m.close()
    assert m.status == "unparsed"


@pytest.mark.parametrize(
    ("endpoint_name", "body", "expected"),
    [
        (
            "chat",
            b'{"id":"x","choices":[{"message":{"content":"hi"}}],"usage":{"prompt_tokens":9,"completion_tokens":4,'
            b'"prompt_tokens_details":{"cached_tokens":8},"completion_tokens_details":{"reasoning_tokens":2}}}',
            Usage(input_tokens=9, cached_tokens=8, output_tokens=4, reasoning_tokens=2),
        ),
        (
            "responses",
            b'{"id":"resp","output":[],"usage":{"input_tokens":20,"input_tokens_details":{"cached_tokens":16},'
            b'"output_tokens":7,"output_tokens_details":{"reasoning_tokens":5},"total_tokens":27}}',
            Usage(input_tokens=20, cached_tokens=16, output_tokens=7, reasoning_tokens=5),
        ),
        (
            "embeddings",
            b'{"object":"list","data":[{"embedding":[0.1]}],"usage":{"prompt_tokens":6,"total_tokens":6}}',
            Usage(input_tokens=6),
        ),
        ("chat", b'{"choices":[],"usage":null}', None),
        ("chat", b'{"error":{"message":"nope"}}', None),
    ],
)
def test_non_streaming_bodies(endpoint_name: str, body: bytes, expected: Usage | None) -> None:
    usage = usage_from_body(endpoint_name, body)
    if expected is None:
        assert usage is None
    else:
        assert usage is not None
        assert msgspec.structs.replace(usage, raw="") == expected
        assert json.loads(usage.raw) == json.loads(body)["usage"]


def test_non_streaming_garbage_raises_decode_error() -> None:
    with pytest.raises(msgspec.DecodeError):
        usage_from_body("chat", b'{"usage": {')


# --- the frame filter --------------------------------------------------------------------------------------


def frames(body: bytes) -> list[bytes]:
    parts = body.split(b"\n\n")
    return [p + b"\n\n" for p in parts[:-1]] + ([parts[-1]] if parts[-1] else [])


def usage_only(frame: bytes) -> bool:
    if not frame.startswith(b"data: {"):
        return False
    chunk = json.loads(frame[6:])
    return chunk.get("choices") == [] and isinstance(chunk.get("usage"), dict) and "error" not in chunk


def run_filter(
    body: bytes, sizes: list[int], strip: bool, comment: bytes | None, reading: bool = False
) -> tuple[bytes, OpenAIStreamMeter]:
    """The filter's output and its meter. With `reading`, the comment also says what the meter had read when the
    comment was made (as the inline usage comment does)."""
    m = OpenAIStreamMeter("chat")

    def make_comment() -> bytes:
        assert comment is not None
        return comment + (b"%r\n" % ((m.usage, m.status, m.finished),) if reading else b"")

    f = OpenAIFrameFilter(m, strip_usage_chunk=strip, make_comment=make_comment if comment else None)
    out = b""
    pos = 0
    for size in sizes:
        out += f.feed(body[pos : pos + size])
        pos += size
    out += f.feed(body[pos:])
    out += f.close()
    return out, m


CHAT_ROWS = [r for r in ROWS if r["format"] == "openai_chat"]


@pytest.mark.parametrize("row", CHAT_ROWS, ids=[r["file"] for r in CHAT_ROWS])
def test_filter_removes_exactly_the_usage_only_frame(shared_fixtures: pathlib.Path, row: dict[str, Any]) -> None:
    body = (shared_fixtures / row["file"]).read_bytes()
    out, m = run_filter(body, [1] * 200 + [777] * 40, strip=True, comment=None)
    assert out == b"".join(f for f in frames(body) if not usage_only(f))
    check(row, m)
    unchanged, _ = run_filter(body, [4096], strip=False, comment=None)
    assert unchanged == body


def test_filter_keeps_azure_prompt_filter_chunk(shared_fixtures: pathlib.Path) -> None:
    body = (shared_fixtures / "openai/chat_azure_content_filter.sse").read_bytes()
    out, _ = run_filter(body, [50], strip=True, comment=None)
    assert b"prompt_filter_results" in frames(body)[0]
    assert out.startswith(frames(body)[0])  # choices: [] without usage is forwarded


def test_filter_keeps_an_error_chunk_that_carries_usage(shared_fixtures: pathlib.Path) -> None:
    body = (shared_fixtures / "compat/openrouter_midstream_error_with_usage.sse").read_bytes()
    out, m = run_filter(body, [64], strip=True, comment=None)
    assert out == body
    assert m.usage is not None and m.usage.input_tokens == 43


def test_comment_goes_just_before_done_or_at_the_end() -> None:
    stream = b'data: {"choices":[],"usage":{"prompt_tokens":1,"completion_tokens":1}}\n\ndata: [DONE]\n\n'
    out, _ = run_filter(stream, [3, 9], strip=False, comment=b": x-teeproxy-usage {}\n")
    assert out == stream.replace(b"data: [DONE]", b": x-teeproxy-usage {}\ndata: [DONE]")
    no_done = b'data: {"choices":[{"index":0}]}\n\n'
    out, _ = run_filter(no_done, [5], strip=False, comment=b": c\n")
    assert out == no_done + b": c\n"


def test_keepalive_comments_are_not_held_back() -> None:
    m = OpenAIStreamMeter("chat")
    f = OpenAIFrameFilter(m, strip_usage_chunk=True)
    assert f.feed(b": keep-alive\n\n") == b": keep-alive\n\n"
    assert f.feed(b'data: {"choices":[{"index":0}]}\n') == b""  # half a frame waits ...
    assert f.feed(b"\n") == b'data: {"choices":[{"index":0}]}\n\n'  # ... for its blank line


def test_filter_passes_everything_through_after_a_frame_error() -> None:
    m = OpenAIStreamMeter("chat")
    f = OpenAIFrameFilter(m, strip_usage_chunk=True)
    head = b'data: {"choices":[]}\n\ndata: ' + b"x" * 1000
    out = f.feed(head)
    huge = b"y" * (MAX_LINE_BYTES + 10)
    out += f.feed(huge)
    out += f.feed(b"\n\ndata: [DONE]\n\n") + f.close()
    assert out == head + huge + b"\n\ndata: [DONE]\n\n"
    assert m.status == "unparsed"


@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_filter_output_does_not_depend_on_chunking(shared_fixtures: pathlib.Path, data: st.DataObject) -> None:
    row = data.draw(st.sampled_from(CHAT_ROWS))
    body = (shared_fixtures / row["file"]).read_bytes()
    sizes = data.draw(st.lists(st.integers(min_value=1, max_value=1500), max_size=50))
    strip = data.draw(st.booleans())
    assert run_filter(body, sizes, strip, b": c\n")[0] == run_filter(body, [len(body)], strip, b": c\n")[0]


@pytest.mark.parametrize("row", ROWS, ids=[r["file"] for r in ROWS])
def test_frame_aligned_chunks_take_the_fast_path_and_agree(shared_fixtures: pathlib.Path, row: dict[str, Any]) -> None:
    """Upstreams usually write one frame per chunk: those chunks skip the parser unless they can matter."""
    body = (shared_fixtures / row["file"]).read_bytes()
    sizes = [len(f) for f in frames(body)]
    check(row, meter(row, body, sizes))
    if row["format"] == "openai_chat":
        out, m = run_filter(body, sizes, strip=True, comment=b": c\n")
        expected = b"".join(f for f in frames(body) if not usage_only(f))
        assert out == (
            expected.replace(b"data: [DONE]", b": c\ndata: [DONE]") if b"[DONE]" in body else expected + b": c\n"
        )
        check(row, m)


_USAGE_ONLY = b'data: {"choices":[],"usage":{"prompt_tokens":7,"completion_tokens":3}}\n\n'
_FRAMES = st.sampled_from(
    [
        b'data: {"choices":[{"index":0,"delta":{"content":"hi"}}],"usage":null}\n\n',
        _USAGE_ONLY,
        b'data: {"choices":[{"index":0}],"usage":{"prompt_tokens":5,"completion_tokens":1}}\n\n',
        b'data:{"choices":[],"usage":{"prompt_tokens":9}}\n\n',  # no space after the colon
        b'data: {"choices":[],"usage":{"prompt_tokens":"x"}}\n\n',  # undecodable usage
        b"data: [DONE]\n\n",
        b"data: [DONE]\r\n\r\n",
        b": keep-alive\n\n",
        b"event: x\ndata: " + _USAGE_ONLY[6:],
        b"id: 4\n" + _USAGE_ONLY,
        b"data: a\ndata: b\n\n",
        b"data: a\r\n\n",
        b"data:\n\n",
        b'data: {"choices":[{"index":0,"delta":{"content":"say [DONE]"}}]}\n\n',  # [DONE], but not the event
        b"data: [DONE] and more\n\n",  # not the event, and no JSON either: nothing to read, nothing in doubt
        b'data: {"choices":[{"index":0,"delta":{"content":"x"}}]}\n\n',
        b'data: {"choices":[{"index":0,"delta":{"content":"x"}}]}\n\n' * 3,
        b"data:[DONE]\n\n",
        b"\n",
    ]
)


def filtered(
    frames: list[bytes], sizes: list[int], strip: bool, comment: bytes | None = None
) -> tuple[bytes, tuple[Any, ...], tuple[Any, ...]]:
    """The filter's output and reading, and the reading of a meter alone (no filter) fed the same pieces."""
    body = b"".join(frames)
    out, m = run_filter(body, sizes, strip, comment, reading=True)
    alone = OpenAIStreamMeter("chat")
    pos = 0
    for size in [*sizes, len(body)]:
        alone.feed(body[pos : pos + size])
        pos += size
    alone.close()
    return out, (m.usage, m.status, m.finished), (alone.usage, alone.status, alone.finished)


@settings(max_examples=400, deadline=None)
@given(
    st.lists(_FRAMES, max_size=12),
    st.lists(st.integers(min_value=1, max_value=400), max_size=8),
    st.booleans(),
    st.sampled_from([None, b": c "]),
)
def test_frames_read_where_they_lie_give_what_the_parser_gives(
    frames_: list[bytes], sizes: list[int], strip: bool, comment: bytes | None
) -> None:
    # A read from a frame boundary takes the fast path (frames without a marker passed over, frames of one `data:`
    # line read in place, the rest by the parser), in the filter and in a meter alone; a byte at a time never holds
    # a whole frame, so the parser reads everything. They must agree on the bytes out (the comment, made before
    # [DONE], included: it says what the meter had read by then) and on the meter's reading, however the stream is
    # cut.
    body = b"".join(frames_)
    by_parser = filtered(frames_, [1] * len(body), strip, comment)
    assert filtered(frames_, [len(body)], strip, comment) == by_parser
    assert filtered(frames_, sizes, strip, comment) == by_parser
    assert by_parser[1] == by_parser[2]
    out = by_parser[0]
    assert (_USAGE_ONLY[6:] in out) == (not strip and _USAGE_ONLY[6:] in body)
    assert strip or comment or out == body
    assert comment is None or out.count(comment) == 1


@pytest.mark.parametrize(
    ("before", "first", "finished"),
    [
        (b"", b"data: [DONE]\n\n", True),
        # After the stream's first byte a BOM is no BOM: `\ufeffdata` is no field, and this frame no [DONE].
        (b"data: x\n\n", b"\xef\xbb\xbfdata: [DONE]\n\n", False),
    ],
    ids=["done", "bom-mid-stream"],
)
def test_a_done_passed_over_counts_as_the_parser_counts_it(
    monkeypatch: pytest.MonkeyPatch, before: bytes, first: bytes, finished: bool
) -> None:
    # The read ends in a [DONE] frame, so the frames before it are read for usage only; the fast path stops at a frame
    # of another shape, and the parser then fails (a line past the limit) before the last [DONE]. A [DONE] frame the
    # fast path passed over still counts, as it does when the parser reads everything.
    monkeypatch.setattr(sse, "MAX_LINE_BYTES", 90)
    monkeypatch.setattr(openai_provider, "MAX_LINE_BYTES", 90)
    # The frame the parser takes holds counts: they are read before the fault, however the stream is cut.
    stop = b'event: x\ndata: {"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":4}}\n\n'
    body = before + first + stop + b"data: " + b"x" * 100 + b"\n\n" + b"data: [DONE]\n\n"
    readings = []
    for sizes in ([len(before), len(body) - len(before)], [1] * len(body)):
        m = OpenAIStreamMeter("chat")
        pos = 0
        for size in sizes:
            m.feed(body[pos : pos + size])
            pos += size
        m.close()
        readings.append((m.usage, m.status, m.finished))
    assert readings[0] == readings[1]
    usage, status, done = readings[0]
    assert usage is not None and (usage.input_tokens, usage.output_tokens) == (3, 4)
    assert (status, done) == ("unparsed", finished)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.binary(max_size=80),
            st.sampled_from([b"data: ", b'"usage"', b":{", b"}", b"\n\n", b"[DONE]", b'"choices":[]', b"null"]),
        ),
        max_size=30,
    ),
    st.sampled_from(["chat", "completions", "responses"]),
)
def test_meter_and_filter_never_raise_and_never_lose_a_byte(pieces: list[bytes], endpoint_name: str) -> None:
    """Mutated input: the sidecar may fail to find usage, never break the stream."""
    m = OpenAIStreamMeter(endpoint_name)
    for piece in pieces:
        m.feed(piece)
    m.close()
    assert m.status in ("reported", "missing", "unparsed")
    body = b"".join(pieces)
    f = OpenAIFrameFilter(OpenAIStreamMeter(endpoint_name), strip_usage_chunk=False)
    assert b"".join(f.feed(p) for p in pieces) + f.close() == body


# --- normalization and status details ----------------------------------------------------------------------


def feed_all(endpoint_name: str, *pieces: bytes) -> OpenAIStreamMeter:
    m = OpenAIStreamMeter(endpoint_name)
    for piece in pieces:
        m.feed(piece)
    m.close()
    return m


def test_cache_writes_and_lax_number_types() -> None:
    # OpenRouter reports cache writes in prompt_tokens_details; LiteLLM-style gateways at the top level.
    body = b'{"usage":{"prompt_tokens":50.0,"completion_tokens":"3","prompt_tokens_details":{"cache_write_tokens":40}}}'
    assert msgspec.structs.replace(usage_from_body("chat", body) or Usage(), raw="") == Usage(
        input_tokens=50, output_tokens=3, cache_write_tokens=40
    )
    body = b'{"usage":{"prompt_tokens":9,"completion_tokens":1,"cache_creation_input_tokens":7,'
    body += b'"prompt_tokens_details":null}}'
    assert (usage_from_body("chat", body) or Usage()).cache_write_tokens == 7


def test_groq_usage_only_in_x_groq() -> None:
    m = feed_all(
        "chat",
        b'data: {"choices":[{"index":0,"delta":{},"finish_reason":"stop"}],"usage":null,'
        b'"x_groq":{"id":"r","usage":{"prompt_tokens":4,"completion_tokens":2}}}\n\ndata: [DONE]\n\n',
    )
    assert m.status == "reported" and m.usage is not None and (m.usage.input_tokens, m.usage.output_tokens) == (4, 2)
    assert m.finished


@pytest.mark.parametrize(
    ("event_type", "usage", "expected"),
    [
        ("response.completed", b'{"input_tokens":5,"output_tokens":2}', (5, 2)),
        ("response.incomplete", b'{"input_tokens":6,"output_tokens":9}', (6, 9)),
        ("response.failed", b'{"input_tokens":7,"output_tokens":0}', (7, 0)),
        ("response.failed", b"null", None),
        ("response.in_progress", b'{"input_tokens":1,"output_tokens":1}', None),  # not terminal: not billed
    ],
)
def test_responses_terminal_events(event_type: str, usage: bytes, expected: tuple[int, int] | None) -> None:
    frame = b'event: %s\ndata: {"type":"%s","response":{"id":"r","usage":%s}}\n\n' % (
        event_type.encode(),
        event_type.encode(),
        usage,
    )
    m = feed_all(
        "responses", b'event: response.created\ndata: {"type":"response.created","response":{"usage":null}}\n\n', frame
    )
    if expected is None:
        assert (m.usage, m.status) == (None, "missing")
    else:
        assert m.usage is not None and (m.usage.input_tokens, m.usage.output_tokens) == expected
        assert m.status == "reported"


GOOD = b'data: {"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":1}}\n\n'
BAD = b'data: {"choices":[],"usage":{"prompt_tokens":"many"}}\n\n'


_NULL_USAGE_FRAMES = [
    b'data: {"choices":[{"index":0,"delta":{"content":"a"}}],"usage":null}\n\n',
    b'data: {"choices":[],"usage": null,"x_groq":{"usage":null}}\n\n',
    b'data: {"choices":[{"index":0,"delta":{"content":"b"}}],"usage":null\n\n',  # not JSON, and no usage all the same
    b'data: {"choices":[],"usage":null,"x_groq":{"usage":{"prompt_tokens":7,"completion_tokens":1}}}\n\n',
    b'data: {"choices":[],"usage":{"prompt_tokens":5,"completion_tokens":2}}\n\n',
    BAD,
    b"data: [DONE]\n\n",
]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(_NULL_USAGE_FRAMES), max_size=12), st.sampled_from(["chat", "completions"]))
def test_null_usage_frames_are_skipped_and_parsed_alike(stream_frames: list[bytes], endpoint_name: str) -> None:
    # Whole frames at a time take the fast path past `"usage":null`; a byte at a time parses every frame. A frame
    # whose every usage is null holds none, readable or not: the figures and the status agree either way.
    body = b"".join(stream_frames)
    whole = feed_all(endpoint_name, *stream_frames)
    by_byte = feed_all(endpoint_name, *(body[i : i + 1] for i in range(len(body))))
    assert (whole.usage, whole.status, whole.finished) == (by_byte.usage, by_byte.status, by_byte.finished)
    if BAD not in stream_frames and not any(b'"prompt_tokens"' in f for f in stream_frames):
        assert whole.status == "missing"


def test_a_later_good_usage_settles_an_earlier_undecodable_one() -> None:
    m = feed_all("chat", BAD, GOOD)
    assert m.status == "reported" and m.usage is not None and m.usage.input_tokens == 3


def test_an_undecodable_usage_after_a_good_one_is_unparsed_but_keeps_the_lower_bound() -> None:
    m = feed_all("chat", GOOD, BAD)
    assert m.status == "unparsed" and m.usage is not None and m.usage.input_tokens == 3


def test_a_frame_error_after_usage_is_unparsed() -> None:
    m = feed_all("chat", GOOD, b"data: " + b"x" * (MAX_LINE_BYTES + 1))
    assert m.status == "unparsed" and m.usage is not None


@pytest.mark.parametrize("sizes", [None, [65536] * 100])
def test_an_oversized_frame_is_unparsed_however_it_is_chunked(sizes: list[int] | None) -> None:
    """The fast path skips whole frames without a usage marker; it must not skip one the parser would refuse."""
    body = b'data: {"choices":[{"delta":{"content":"' + b"x" * (MAX_LINE_BYTES + 10) + b'"}}]}\n\n' + GOOD
    m = OpenAIStreamMeter("chat")
    m.feed(b": first\n\n")  # past the stream start, where the fast path can apply
    if sizes is None:
        m.feed(body[: -len(GOOD)])
        m.feed(GOOD)
    else:
        pos = 0
        for size in sizes:
            m.feed(body[pos : pos + size])
            pos += size
        m.feed(body[pos:])
    m.close()
    assert m.status == "unparsed"


def test_body_usage_never_raises() -> None:
    assert body_usage("chat", b'{"usage": {') == (None, "unparsed")
    assert body_usage("embeddings", b'{"data":[]}') == (None, "missing")
    usage, status = body_usage(
        "completions", b'{"object":"text_completion","usage":{"prompt_tokens":2,"completion_tokens":5}}'
    )
    assert status == "reported" and usage is not None and (usage.input_tokens, usage.output_tokens) == (2, 5)


def test_filter_strips_a_usage_chunk_with_a_null_error() -> None:
    stream = b'data: {"choices":[{"index":0}]}\n\ndata: {"choices":[],"error":null,"usage":{"prompt_tokens":1}}\n\n'
    out, m = run_filter(stream + b"data: [DONE]\n\n", [7], strip=True, comment=b": u\n")
    assert out == b'data: {"choices":[{"index":0}]}\n\n: u\ndata: [DONE]\n\n'
    assert m.status == "reported"
