"""The JSON-array element splitter: RFC 8259 framing between elements, strings and escapes inside them, and the
properties that chunking never changes the elements and that any input gives elements or FrameError."""

from __future__ import annotations

import json
import pathlib
import re
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.parsers.jsonarray import MAX_ELEMENT_BYTES, JSONArrayParser
from proxy.parsers.sse import FrameError
from tests.conftest import SHARED_FIXTURES


def split(data: bytes, sizes: list[int] | None = None) -> list[bytes]:
    parser = JSONArrayParser()
    elements: list[bytes] = []
    pos = 0
    for size in sizes or []:
        elements += parser.feed(data[pos : pos + size])
        pos += size
    elements += parser.feed(data[pos:])
    return elements + parser.close()


def outcome(data: bytes, sizes: list[int]) -> tuple[list[bytes], bool]:
    """The elements returned before any FrameError, and whether one was raised (feeding stops there)."""
    parser = JSONArrayParser()
    elements: list[bytes] = []
    pos = 0
    try:
        for size in [*sizes, len(data)]:
            elements += parser.feed(data[pos : pos + size])
            pos += size
        elements += parser.close()
    except FrameError:
        return elements, True
    return elements, False


def test_elements_as_sent() -> None:
    data = b' [ {"a": "}{\\"]", "b": [1, {}]} ,\r\n"x\\\\" , -1.5e3,true,null, [[]], "" ]  \r\n'
    assert split(data) == [b'{"a": "}{\\"]", "b": [1, {}]}', b'"x\\\\"', b"-1.5e3", b"true", b"null", b"[[]]", b'""']


def test_empty_array_and_whitespace_only_between() -> None:
    assert split(b"[]") == []
    assert split(b"\r\n[ \t\r\n]\n") == []


@pytest.mark.parametrize(
    "element",
    [
        b'{"t":"a \\"quoted\\" word"}',  # escaped quotes do not end the string
        b'{"t":"ends in a backslash\\\\"}',  # an escaped backslash does not escape the quote after it
        b'{"t":"\\\\\\"still inside\\\\"}',
        b'{"t":"{[}]","u":"\\u005d\\u007d"}',  # brackets inside strings do not count
        b'{"a":[{"b":[[],{}]}],"c":{}}',
        b'{"t":"line\nbreak\r\n"}',  # raw newlines inside a string (invalid JSON, but not the splitter's call)
    ],
)
def test_strings_and_escapes_at_every_cut(element: bytes) -> None:
    data = b"[" + element + b",\r\n" + element + b"]"
    for cut in range(len(data) + 1):
        assert split(data, [cut]) == [element, element], cut


@pytest.mark.parametrize(
    "data",
    [
        b"{}",  # not an array
        b' x[{"a":1}]',
        b"[,{}]",  # a comma before the first element
        b"[{},,{}]",
        b"[{},]",  # trailing comma
        b"[{} {}]",  # no comma
        b"[{]",  # mismatched brackets
        b'[{"a":[}]',
        b"[}]",
        b"[]]",
        b"[{}] x",  # data after the closing bracket
        b"[{}][{}]",
        b"[:]",
    ],
)
def test_malformed_framing_is_a_frame_error(data: bytes) -> None:
    with pytest.raises(FrameError):
        split(data)


@pytest.mark.parametrize("data", [b"", b"  ", b"[", b'[{"a":1}', b'[{"a":1},', b'[{"a":"}', b"[1"])
def test_a_stream_cut_short_fails_at_close(data: bytes) -> None:
    parser = JSONArrayParser()
    parser.feed(data)
    with pytest.raises(FrameError):
        parser.close()


def test_elements_before_a_fault_come_first_then_the_error_sticks() -> None:
    parser = JSONArrayParser()
    assert parser.feed(b'[{"a":1},{"b":2} x') == [b'{"a":1}', b'{"b":2}']
    assert parser.failed
    with pytest.raises(FrameError):
        parser.feed(b"]")
    with pytest.raises(FrameError):
        parser.close()


def test_done_after_the_closing_bracket() -> None:
    parser = JSONArrayParser()
    states = [parser.feed(b"[{}") == [b"{}"], parser.done]
    states += [parser.feed(b"\r\n]\r\n") == [], parser.done]
    assert states == [True, False, True, True]
    assert parser.close() == []


def test_element_limit_does_not_depend_on_chunking() -> None:
    big = b'{"t":"' + b"x" * (MAX_ELEMENT_BYTES - 8) + b'"}'  # exactly MAX_ELEMENT_BYTES long
    assert len(big) == MAX_ELEMENT_BYTES
    assert split(b"[" + big + b"]", [1 << 20] * 16) == [big]
    assert split(b"[" + big + b"]") == [big]
    too_big = big[:-2] + b'x"}'
    for sizes in ([], [1 << 20] * 17, [len(too_big)]):
        with pytest.raises(FrameError):
            split(b"[{}," + too_big + b"]", sizes)


def test_an_unfinished_oversized_element_fails_before_it_ends() -> None:
    parser = JSONArrayParser()
    assert parser.feed(b'[{"a":1},{"t":"') == [b'{"a":1}']
    with pytest.raises(FrameError):
        for _ in range(17):
            parser.feed(b"y" * (1 << 20))


def test_a_long_string_in_small_chunks_is_scanned_once() -> None:
    """Many small feeds of one long string: each feed scans only its own bytes (this would take minutes if
    every feed rescanned the element from its start)."""
    parser = JSONArrayParser()
    parser.feed(b'[{"t":"')
    for _ in range(20000):
        assert parser.feed(b'ab\\"cd\\\\' * 20 + b"x\\") == []  # ends in a backslash ...
        assert parser.feed(b'"{[y') == []  # ... which escapes this quote
    assert len(parser.feed(b'"}]')) == 1


# --- properties ------------------------------------------------------------------------------------------------

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(alphabet=st.sampled_from('ab{}[]",:\\ \n\u00e9\u2028'), max_size=12),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.text(alphabet=st.sampled_from('k{]"\\'), max_size=4), children, max_size=4)
    ),
    max_leaves=12,
)
separators = st.sampled_from([",", ", ", ",\r\n", "\r\n,\r\n", "\n,\n"])


@settings(max_examples=300, deadline=None)
@given(
    values=st.lists(json_values, max_size=6),
    sep=separators,
    ascii_only=st.booleans(),
    data=st.data(),
)
def test_any_split_gives_the_same_elements(values: list[Any], sep: str, ascii_only: bool, data: st.DataObject) -> None:
    encoded = [json.dumps(v, ensure_ascii=ascii_only).encode() for v in values]
    body = b" [\r\n" + sep.encode().join(encoded) + b"\r\n] "
    sizes = data.draw(st.lists(st.integers(min_value=0, max_value=40), max_size=30))
    elements = split(body, sizes)
    assert elements == encoded
    assert [json.loads(e) for e in elements] == json.loads(body)


chaos = st.lists(
    st.one_of(
        st.binary(max_size=12),
        st.sampled_from([b"[", b"]", b"{", b"}", b'"', b"\\", b",", b" ", b"\r\n", b'{"a":"x"}', b"1", b"tru"]),
    ),
    max_size=40,
)


@settings(max_examples=400, deadline=None)
@given(pieces=chaos, data=st.data())
def test_random_bytes_give_elements_or_frame_error_whatever_the_chunking(
    pieces: list[bytes], data: st.DataObject
) -> None:
    body = b"".join(pieces)
    whole = outcome(body, [])
    sizes = data.draw(st.lists(st.integers(min_value=0, max_value=8), max_size=40))
    assert outcome(body, sizes) == whole
    assert outcome(body, [1] * len(body)) == whole
    if not whole[1]:  # accepted: a JSON array whose elements are exactly those returned
        assert re.fullmatch(rb"[ \t\r\n]*\[.*\][ \t\r\n]*", body, re.S)


def sse_data(body: bytes) -> list[bytes]:
    return [line[6:] for line in re.split(rb"\r\n|\r|\n", body) if line.startswith(b"data: ")]


@pytest.mark.parametrize("name", ["stream_basic", "stream_thinking", "stream_usage_live", "stream_web_search_tool"])
def test_gemini_captures_reframed_as_an_array(shared_fixtures: pathlib.Path, name: str) -> None:
    chunks = sse_data((shared_fixtures / "gemini" / f"{name}.sse").read_bytes())
    body = b"[" + b",\r\n".join(chunks) + b"]"
    assert split(body) == chunks
    assert split(body, [1] * len(body)) == chunks


def test_corpus_is_present_when_shared_is() -> None:
    if SHARED_FIXTURES.is_dir():
        assert len(list((SHARED_FIXTURES / "gemini").glob("*.sse"))) >= 4
