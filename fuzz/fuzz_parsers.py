"""An atheris (libFuzzer) harness for the sidecar: the invariants of `fuzz.invariants`, for runs of hours.

The twin of tests/test_parser_fuzz.py, coverage-guided instead of random: libFuzzer keeps the inputs that reach
new code in `proxy/` (and botocore's event-stream decoder) and mutates those. An input is read as

    byte 0        the target: a framing parser, a stream meter, a body meter, the first-chunk gate or a frame
                  filter (modulo the number of targets; `TARGETS` lists them)
    byte 1        how many cut points follow (modulo 9), then 2 bytes each, big-endian
    the rest      the bytes an upstream sent

A finding (a parser raising anything but FrameError, a meter raising at all, a failed invariant) ends the run
with the input saved as `crash-<sha1>` under `-artifact_prefix`; `python -m fuzz.fuzz_parsers crash-<sha1>`
replays it. An empty corpus directory is first filled with seeds: every target paired with the well-formed
streams of its framing (`fuzz.seeds`).

    make fuzz                                          # FUZZ_SECONDS=60
    .venv/bin/python -m fuzz.fuzz_parsers -max_total_time=600 /tmp/teeproxy-fuzz-corpus
"""

from __future__ import annotations

import hashlib
import os
import struct
import sys
from collections.abc import Callable

import atheris

with atheris.instrument_imports(include=["proxy", "botocore.eventstream", "fuzz.invariants"]):
    from fuzz import invariants as inv

from fuzz.seeds import STREAMS

_FAMILY_OF_PARSER = {"sse": "sse", "jsonarray": "array", "eventstream": "eventstream"}
MAX_CUTS = 8
# libFuzzer flags this harness passes unless the command line sets them.
DEFAULT_FLAGS = ("-max_len=32768", "-timeout=20", "-rss_limit_mb=3072")


def _family(dialect: str, kind: str) -> str:
    if kind == inv.KIND_STREAM_ARRAY:
        return "array"
    return "eventstream" if dialect == "bedrock" else "sse"


Target = tuple[str, str, Callable[[bytes, list[int]], None]]


def _targets() -> list[Target]:
    out: list[Target] = []
    for name in sorted(inv.PARSERS):
        out.append((f"parser:{name}", _FAMILY_OF_PARSER[name], lambda d, c, n=name: inv.check_parser(n, d, c)))
    for dialect, kind in inv.STREAM_ROUTES:
        family = _family(dialect, kind)
        out.append((f"meter:{dialect}/{kind}", family, lambda d, c, a=dialect, k=kind: inv.check_meter(a, k, d, c)))
        out.append((f"gate:{dialect}/{kind}", family, lambda d, c, a=dialect, k=kind: inv.check_first_chunk(a, k, d)))
    for dialect, kind in inv.BODY_ROUTES:
        headers = [(inv.BEDROCK_COUNT_HEADERS[0], b"12")] if dialect == "bedrock" else []
        out.append(
            (
                f"body:{dialect}/{kind}",
                "array",
                lambda d, c, a=dialect, k=kind, h=headers: inv.check_body(a, k, d, c, h),
            )
        )
    for dialect, kind in inv.FILTER_ROUTES:
        for strip in (False, True):
            for comment in (False, True):
                out.append(
                    (
                        f"filter:{dialect}/{kind} strip={strip} comment={comment}",
                        "sse",
                        lambda d, c, a=dialect, k=kind, s=strip, m=comment: inv.check_filter(a, k, d, c, s, m),
                    )
                )
    return out


TARGETS = _targets()


def decode(data: bytes) -> tuple[int, list[int], bytes]:
    if len(data) < 2:
        return 0, [], data[1:]
    target = data[0] % len(TARGETS)
    count = min(data[1] % (MAX_CUTS + 1), (len(data) - 2) // 2)
    cuts = list(struct.unpack_from(f">{count}H", data, 2))
    return target, cuts, data[2 + 2 * count :]


def encode(target: int, cuts: list[int], body: bytes) -> bytes:
    return bytes([target, len(cuts)]) + struct.pack(f">{len(cuts)}H", *cuts) + body


def test_one_input(data: bytes) -> None:
    target, cuts, body = decode(data)
    TARGETS[target][2](body, cuts)


def seed(corpus: str) -> int:
    """Fill an empty corpus directory with every target's well-formed streams; the number of files written."""
    if not os.path.isdir(corpus) or os.listdir(corpus):
        return 0
    written = 0
    for index, (_, family, _) in enumerate(TARGETS):
        for stream in STREAMS[family]:
            for cuts in ([], [len(stream) // 2], [1, 7, 64, 200]):
                blob = encode(index, cuts, stream)
                with open(os.path.join(corpus, hashlib.sha1(blob).hexdigest()), "wb") as file:
                    file.write(blob)
                written += 1
    return written


def main(argv: list[str]) -> None:
    corpora = [arg for arg in argv[1:] if not arg.startswith("-") and os.path.isdir(arg)]
    for corpus in corpora:
        count = seed(corpus)
        if count:
            print(f"fuzz: seeded {corpus} with {count} inputs for {len(TARGETS)} targets", file=sys.stderr)
    given = {arg.split("=")[0] for arg in argv[1:] if arg.startswith("-")}
    flags = [flag for flag in DEFAULT_FLAGS if flag.split("=")[0] not in given]
    atheris.Setup([argv[0], *flags, *argv[1:]], test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main(sys.argv)
