"""The SSE parser against the WHATWG rules, and the property that chunking never changes the events."""

from __future__ import annotations

import itertools
import pathlib
from unittest import mock

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.parsers.sse import MAX_EVENT_BYTES, MAX_LINE_BYTES, FrameError, SSEEvent, SSEParser
from tests.conftest import SHARED_FIXTURES


def parse(data: bytes, sizes: list[int] | None = None) -> list[SSEEvent]:
    parser = SSEParser()
    events: list[SSEEvent] = []
    if sizes is None:
        events += parser.feed(data)
    else:
        pos = 0
        for size in sizes:
            events += parser.feed(data[pos : pos + size])
            pos += size
        events += parser.feed(data[pos:])
    return events + parser.close()


def simple(events: list[SSEEvent]) -> list[tuple[str, bytes]]:
    return [(e.event, e.data) for e in events]


@pytest.mark.parametrize("eol", [b"\n", b"\r", b"\r\n"])
def test_each_line_ending(eol: bytes) -> None:
    stream = b"data: a" + eol + b"data: b" + eol + eol + b"event: x" + eol + b"data: c" + eol + eol
    assert simple(parse(stream)) == [("message", b"a\nb"), ("x", b"c")]


def test_mixed_line_endings_and_cr_split_from_lf() -> None:
    stream = b"data: 1\r\n\r\ndata: 2\r\rdata: 3\n\n"
    for cut in range(len(stream) + 1):
        parser = SSEParser()
        events = parser.feed(stream[:cut]) + parser.feed(stream[cut:]) + parser.close()
        assert simple(events) == [("message", b"1"), ("message", b"2"), ("message", b"3")], cut


def test_crlf_split_across_feeds_is_one_line_end() -> None:
    parser = SSEParser()
    assert parser.feed(b"data: a\r") == []
    # The LF completes the CRLF; if it were read as a second line end, the event would dispatch here.
    assert parser.feed(b"\n") == []
    assert simple(parser.feed(b"\r\n")) == [("message", b"a")]


def test_bom_is_skipped_once_even_when_split() -> None:
    stream = b"\xef\xbb\xbfdata: x\n\n\xef\xbb\xbfdata: y\n\n"
    for cut in range(4):
        parser = SSEParser()
        events = parser.feed(stream[:cut]) + parser.feed(stream[cut:]) + parser.close()
        # Only the first BOM is skipped; the second makes an unknown field name, ignored.
        assert simple(events) == [("message", b"x")]


def test_fields_comments_and_spaces() -> None:
    stream = b": a comment\ndata:no-space\ndata:  two-spaces\ndata\nunknown: ignored\nid: 7\nretry: 1500\n\n"
    [event] = parse(stream)
    assert event.data == b"no-space\n two-spaces\n"
    assert event.id == "7"
    assert event.retry == 1500


def test_retry_not_all_digits_and_id_with_nul_are_ignored() -> None:
    [event] = parse(b"id: 1\n\nid: a\x00b\nretry: 12x\ndata: d\n\n")[-1:]
    assert event.id == "1"  # the last event id persists; the one with NUL is ignored
    assert event.retry is None


def test_event_type_resets_after_dispatch_and_empty_data_dispatches_nothing() -> None:
    events = parse(b"event: a\n\nevent: b\ndata: 1\n\ndata: 2\n\n")
    assert simple(events) == [("b", b"1"), ("message", b"2")]


def test_unfinished_event_at_eof_is_discarded() -> None:
    assert simple(parse(b"data: done\n\ndata: never-dispatched\n")) == [("message", b"done")]
    assert simple(parse(b"data: done\n\ndata: no-newline")) == [("message", b"done")]


def test_utf8_split_anywhere() -> None:
    stream = "data: héllo wörld 🚀\n\n".encode()
    for cut in range(len(stream)):
        assert simple(parse(stream, [cut])) == [("message", "héllo wörld 🚀".encode())]


def test_offsets_delimit_each_frame() -> None:
    stream = b": ping\n\ndata: 1\n\n: note\ndata: 2\n\n\n\ndata: 3\n\n"
    events = parse(stream, [3, 5, 1])
    assert [stream[e.start : e.end] for e in events] == [b"data: 1\n\n", b": note\ndata: 2\n\n", b"data: 3\n\n"]


def test_one_mebibyte_line_is_accepted_and_the_limit_raises() -> None:
    big = b"x" * (1024 * 1024)
    [event] = parse(b"data: " + big + b"\n\n", [65536] * 17)
    assert event.data == big
    parser = SSEParser()
    with pytest.raises(FrameError):
        for _ in range(MAX_LINE_BYTES // 65536 + 2):
            parser.feed(b"y" * 65536)


# --- properties ---------------------------------------------------------------------------------------------

_lines = st.lists(
    st.one_of(
        st.builds(lambda v: b"data: " + v, st.binary(max_size=20).filter(lambda b: b"\r" not in b and b"\n" not in b)),
        st.sampled_from([b"", b": comment", b"event: x", b"event:", b"id: 3", b"retry: 10", b"data", b"data:"]),
    ),
    max_size=30,
)


@settings(max_examples=200, deadline=None)
@given(lines=_lines, eols=st.lists(st.sampled_from([b"\n", b"\r", b"\r\n"]), min_size=1), data=st.data())
def test_any_chunking_gives_the_same_events(lines: list[bytes], eols: list[bytes], data: st.DataObject) -> None:
    stream = b"".join(line + eols[i % len(eols)] for i, line in enumerate(lines))
    sizes = data.draw(st.lists(st.integers(min_value=0, max_value=len(stream) + 1), max_size=20))
    assert parse(stream, sizes) == parse(stream)


@settings(max_examples=300, deadline=None)
@given(
    frames=st.lists(
        st.builds(
            lambda head, data: [head, *data] if head else data,
            st.sampled_from([b"", b"", b"event: x", b"event:", b"event: ", b"id: 3", b": c", b"retry: 1", b"data"]),
            st.lists(st.sampled_from([b"data: a", b"data:b", b"data: ", b"data:", b"event: y"]), max_size=2),
        ),
        max_size=12,
    ),
    eols=st.lists(st.sampled_from([b"\n", b"\n", b"\n", b"\r", b"\r\n"]), min_size=1),
)
def test_whole_frames_read_at_once_give_what_the_line_scan_gives(frames: list[list[bytes]], eols: list[bytes]) -> None:
    # Fed a byte at a time, no feed ever holds a whole frame, so every line goes through the line-by-line scan;
    # fed whole, one-`data:`-line frames take the fast path. Offsets, ids and types must agree all the same.
    lines = [line for frame in frames for line in [*frame, b""]]
    stream = b"".join(line + eols[i % len(eols)] for i, line in enumerate(lines))
    assert parse(stream) == parse(stream, [1] * len(stream))


def test_the_fast_path_keeps_id_offsets_and_stops_at_other_shapes() -> None:
    stream = b"id: 7\n\ndata: a\n\ndata:b\n\nevent: x\ndata: c\n\ndata: d\r\n\r\ndata: e\n\ndata: f\n"
    parser = SSEParser()
    events = parser.feed(stream)
    assert [(e.event, e.data, e.id) for e in events] == [
        ("message", b"a", "7"),
        ("message", b"b", "7"),
        ("x", b"c", "7"),
        ("message", b"d", "7"),
        ("message", b"e", "7"),
    ]
    assert [stream[e.start : e.end] for e in events][1] == b"data:b\n\n"
    assert parser.boundary == len(stream) - len(b"data: f\n")
    assert parser.close() == []


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400), st.lists(st.integers(min_value=0, max_value=50), max_size=10))
def test_any_bytes_give_events_or_frame_error(blob: bytes, sizes: list[int]) -> None:
    try:
        events = parse(blob, sizes)
    except FrameError:
        return
    assert all(isinstance(e, SSEEvent) and 0 <= e.start < e.end <= len(blob) for e in events)


def _fixture_files() -> list[pathlib.Path]:
    if not SHARED_FIXTURES.is_dir():
        return []
    return sorted(p for p in SHARED_FIXTURES.rglob("*.sse"))


@pytest.mark.parametrize("path", _fixture_files(), ids=lambda p: str(p.relative_to(SHARED_FIXTURES)))
def test_captures_whole_byte_by_byte_and_with_trailing_data(path: pathlib.Path) -> None:
    stream = path.read_bytes()
    whole = parse(stream)
    assert whole
    assert parse(stream, [1] * len(stream)) == whole
    # Trailing bytes of an unfinished event change nothing before them.
    assert parse(stream + b"data: trailing") == whole


@settings(max_examples=25, deadline=None)
@given(data=st.data())
def test_captures_in_random_chunks(shared_fixtures: pathlib.Path, data: st.DataObject) -> None:
    path = data.draw(st.sampled_from(_fixture_files()))
    stream = path.read_bytes()
    sizes = data.draw(st.lists(st.integers(min_value=1, max_value=4096), max_size=40))
    assert parse(stream, sizes) == parse(stream)


# --- limits and failure ------------------------------------------------------------------------------------


def test_huge_retry_is_ignored_not_a_value_error() -> None:
    # int() refuses more than 4300 digits with ValueError; the parser may raise only FrameError.
    [event] = parse(b"retry: " + b"1" * 5000 + b"\ndata: d\n\n")
    assert event.retry is None


def test_line_of_exactly_the_limit_is_accepted_however_cut() -> None:
    line = b"data:" + b"z" * (MAX_LINE_BYTES - 5)
    stream = line + b"\r\n\r\n"
    for sizes in ([len(line)], [len(line) + 1], [65536] * 70, None):
        [event] = parse(stream, sizes)
        assert len(event.data) == MAX_LINE_BYTES - 5
    for sizes in ([len(line) + 2], [65536] * 70, None):
        with pytest.raises(FrameError):
            parse(b"x" + stream, sizes)


def test_event_data_is_bounded_across_lines() -> None:
    parser = SSEParser()
    line = b"data: " + b"d" * (1024 * 1024) + b"\n"
    with pytest.raises(FrameError):
        for _ in range(MAX_EVENT_BYTES // len(line) + 2):
            parser.feed(line)


def test_a_spent_parser_refuses_more_and_closes_quietly() -> None:
    parser = SSEParser()
    with pytest.raises(FrameError):
        parser.feed(b"x" * (MAX_LINE_BYTES + 1))
    with pytest.raises(FrameError):
        parser.feed(b"\n\n")
    assert parser.close() == []


@pytest.mark.parametrize("then", ["feed", "close"])
def test_events_before_a_fault_are_returned_and_the_fault_raised_next(then: str) -> None:
    # One read completes two events, then holds a line past the limit: the events come back, and the next call
    # raises (once), as when a read ends between the events and the line.
    parser = SSEParser()
    events = parser.feed(b"data: a\n\nevent: e\ndata: b\n\ndata: " + b"x" * MAX_LINE_BYTES)
    assert simple(events) == [("message", b"a"), ("e", b"b")]
    assert not parser.at_boundary
    with pytest.raises(FrameError):
        if then == "feed":
            parser.feed(b"\n\ndata: c\n\n")
        else:
            parser.close()
    assert parser.close() == []


def test_long_line_in_small_pieces_is_not_quadratic() -> None:
    """A 1 MiB line in 1 KiB pieces: queued, joined once (seconds, not minutes, if this regresses)."""
    parser = SSEParser()
    parser.feed(b"data: ")
    piece = b"p" * 1024
    for _ in range(1024):
        assert parser.feed(piece) == []
    [event] = parser.feed(b"\n\n")
    assert len(event.data) == 1024 * 1024


def test_skip_is_the_same_as_feeding_frames_without_use() -> None:
    fed, skipped = SSEParser(), SSEParser()
    head, middle, tail = b": hi\n\ndata: 1\n\n", b"event: x\ndata: 2\n\n", b": c\ndata: 3\n\n"
    fed.feed(head)
    skipped.feed(head)
    assert fed.at_boundary and skipped.at_boundary
    fed.feed(middle)
    skipped.skip(len(middle))
    assert fed.feed(tail) == skipped.feed(tail)


def outcome(stream: bytes, sizes: list[int] | None = None) -> tuple[list[SSEEvent], bool]:
    """Every event the parser gave, up to a FrameError, and whether there was one."""
    parser = SSEParser()
    events: list[SSEEvent] = []
    cuts = [0, *itertools.accumulate(sizes or [])]
    try:
        for start, end in itertools.pairwise([*cuts, max(cuts[-1], len(stream))]):
            events += parser.feed(stream[start:end])
        events += parser.close()
    except FrameError:
        return events, True
    return events, False


_tiny_limits = [
    mock.patch("proxy.parsers.sse.MAX_LINE_BYTES", 24),
    mock.patch("proxy.parsers.sse.MAX_EVENT_BYTES", 40),
]


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.sampled_from(
            [b"data: ", b"data: ok\n\n", b"x" * 9, b"\r", b"\n", b"\r\n", b":", b"event: e", b"\xef\xbb\xbf"]
        )
    ),
    st.lists(st.integers(min_value=0, max_value=40), max_size=10),
)
def test_where_a_limit_trips_does_not_depend_on_chunking(pieces: list[bytes], sizes: list[int]) -> None:
    # Neither whether it trips nor the events given before it does.
    stream = b"".join(pieces)
    with _tiny_limits[0], _tiny_limits[1]:
        assert outcome(stream, sizes) == outcome(stream)


def _mutate(stream: bytes, edits: list[tuple[int, int, bytes]]) -> bytes:
    out = bytearray(stream)
    for kind, at, blob in edits:
        at %= len(out) + 1
        if kind == 0:
            out[at:at] = blob  # insert
        elif kind == 1:
            del out[at : at + len(blob) + 1]  # delete
        else:
            out[at : at + len(blob)] = blob  # overwrite
    return bytes(out)


@settings(max_examples=60, deadline=None)
@given(
    data=st.data(),
    edits=st.lists(
        st.tuples(
            st.integers(0, 2),
            st.integers(0, 1 << 20),
            st.binary(min_size=1, max_size=6) | st.sampled_from([b"\r", b"\n", b"\r\n", b"\n\n", b":", b"\x00"]),
        ),
        min_size=1,
        max_size=8,
    ),
)
def test_mutated_captures_give_events_or_frame_error(
    shared_fixtures: pathlib.Path, data: st.DataObject, edits: list[tuple[int, int, bytes]]
) -> None:
    path = data.draw(st.sampled_from(_fixture_files()))
    stream = _mutate(path.read_bytes(), edits)
    sizes = data.draw(st.lists(st.integers(min_value=1, max_value=4096), max_size=20))
    events, failed = whole = outcome(stream)
    assert outcome(stream, sizes) == whole
    assert not failed  # the limits are far above any capture
    assert all(stream[e.start : e.end].endswith((b"\n", b"\r")) for e in events)
