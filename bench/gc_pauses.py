"""Garbage-collector pauses from teeproxy's `/metrics`: scraped before and after a scenario, the difference.

The proxy exposes a Prometheus histogram `teeproxy_gc_pause_seconds`, labelled `generation` ("0", "1", "2"),
summed over its workers. The text format (Prometheus exposition format 0.0.4): per label set, cumulative
`_bucket{le="..."}` counters, a `_count` and a `_sum`. Between two scrapes, per generation, the number of
collections is the difference of `_count`, the pause time the difference of `_sum`, and the longest pause lies
in the first bucket whose cumulative difference already equals the count's: its upper bound `le` is what is
reported ("every collection took at most this long"), the finest statement a histogram allows. Reported for
all generations together and for generation 2 (the full collections, the long ones with CPython's defaults).

The proxy's workers move their pauses into the histogram once a second (its metrics sampler); the worker that
serves a scrape does so first. So with more than one worker, a scrape is only complete after a second's quiet:
`SETTLE_S`, which the harness waits before scraping a multi-worker target.

A proxy that does not have the metric (yet) gives None for every figure, never an error.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

METRIC = "teeproxy_gc_pause_seconds"
_SAMPLE = re.compile(rf"^{METRIC}_(bucket|count|sum)(?:\{{([^}}]*)\}})?\s+(\S+)")
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')
FIGURES = (
    "gc_pause_ms",
    "gc_collections",
    "gc_max_bucket_ms",
    "gc_gen2_collections",
    "gc_gen2_pause_ms",
    "gc_gen2_max_bucket_ms",
)
# proxy.metrics.SAMPLE_INTERVAL_S, and a margin.
SETTLE_S = 1.2


@dataclass
class Generation:
    count: float = 0.0
    sum_s: float = 0.0
    buckets: dict[float, float] = field(default_factory=dict)  # le -> cumulative count


def parse(text: str | None) -> dict[str, Generation] | None:
    """The histogram by generation, or None if the text does not have it."""
    if not text:
        return None
    out: dict[str, Generation] = {}
    for line in text.splitlines():
        match = _SAMPLE.match(line)
        if match is None:
            continue
        part, labels_text, value_text = match.groups()
        labels = dict(_LABEL.findall(labels_text or ""))
        generation = out.setdefault(labels.get("generation", "?"), Generation())
        value = float(value_text)
        if part == "count":
            generation.count += value
        elif part == "sum":
            generation.sum_s += value
        elif "le" in labels:
            le = float(labels["le"])  # "+Inf" parses as inf
            generation.buckets[le] = generation.buckets.get(le, 0.0) + value
    return out or None


def delta(before: dict[str, Generation] | None, after: dict[str, Generation] | None) -> dict[str, Any]:
    """The figures for what happened between two scrapes; None for each if either scrape lacks the metric."""
    if before is None or after is None:
        return dict.fromkeys(FIGURES)
    pause_s = collections = 0.0
    bounds = []
    for name, gen in after.items():
        old = before.get(name, Generation())
        pause_s += gen.sum_s - old.sum_s
        collections += gen.count - old.count
        bound = _max_bucket_ms(old, gen, gen.count - old.count)
        if bound is not None:
            bounds.append(bound)
    gen2, old2 = after.get("2", Generation()), before.get("2", Generation())
    gen2_count = gen2.count - old2.count
    return {
        "gc_pause_ms": pause_s * 1000,
        "gc_collections": int(collections),
        "gc_max_bucket_ms": max(bounds) if bounds else None,
        "gc_gen2_collections": int(gen2_count),
        "gc_gen2_pause_ms": (gen2.sum_s - old2.sum_s) * 1000,
        "gc_gen2_max_bucket_ms": _max_bucket_ms(old2, gen2, gen2_count),
    }


def _max_bucket_ms(before: Generation, after: Generation, count: float) -> float | None:
    """The upper bound of the bucket the longest of `count` new observations fell into; None for none."""
    if count <= 0:
        return None
    for le in sorted(after.buckets):
        if after.buckets[le] - before.buckets.get(le, 0.0) >= count:
            return le * 1000 if math.isfinite(le) else math.inf
    return math.inf
