"""The provider's key is removed from error bodies however the upstream's writes split it."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from proxy.scrub import REDACTED, SecretScrubber, scrub_headers

SECRET = b"sk-upstream-SECRET-42"


def run(scrubber: SecretScrubber, data: bytes, cuts: list[int]) -> bytes:
    out = b""
    last = 0
    for cut in sorted(set(cuts)):
        out += scrubber.feed(data[last:cut])
        last = cut
    return out + scrubber.feed(data[last:]) + scrubber.close()


@given(
    prefix=st.binary(max_size=40),
    middle=st.binary(max_size=40),
    suffix=st.binary(max_size=40),
    cuts=st.lists(st.integers(min_value=0, max_value=200), max_size=12),
)
def test_any_split_gives_the_same_scrubbed_bytes(prefix: bytes, middle: bytes, suffix: bytes, cuts: list[int]) -> None:
    data = prefix + SECRET + middle + SECRET + suffix
    whole = data.replace(SECRET, REDACTED)
    assert run(SecretScrubber(SECRET), data, [c % (len(data) + 1) for c in cuts]) == whole


def test_bytes_without_the_secret_pass_unchanged_byte_by_byte() -> None:
    data = b'{"error": {"message": "Incorrect API key provided: sk-upstr***42"}}'
    assert run(SecretScrubber(SECRET), data, list(range(len(data)))) == data


def test_headers_are_scrubbed() -> None:
    headers = [(b"www-authenticate", b'Bearer realm="x", key="' + SECRET + b'"'), (b"x-other", b"fine")]
    assert scrub_headers(headers, SECRET) == [
        (b"www-authenticate", b'Bearer realm="x", key="' + REDACTED + b'"'),
        (b"x-other", b"fine"),
    ]
