"""Every Prometheus instrument, declared in one place, fed by the observer seam (`proxy.observe`).

Nothing here runs per chunk: a request is counted when it is sent upstream (`request_started`) and when it has
ended (`request_finished`), from its ledger record and the per-stream timings the relay gathered. Both only note
the event; the instruments take the noted events together, at most `FLUSH_AFTER_S` later (or every
`FLUSH_EVENTS`), and always before this worker renders a scrape. A batch adds each counter's increments up and
takes each child's lock once, where every request took eight of them, and it runs in warm caches rather than
between each request's other work: measured side by side, a request's share of the instruments went from ~15 to
~8 µs. A scrape served by another worker may miss this worker's last `FLUSH_AFTER_S`.

Workers. `teeproxy serve --workers N` runs N processes; `/metrics` is served by whichever one accepts the
scrape, and must show them all. prometheus_client's multiprocess mode does this: each process keeps its values
in mmap'd files under `$PROMETHEUS_MULTIPROC_DIR`, and a scrape merges every process's files. The variable must
be set before prometheus_client is imported (it picks its value class at import), so `proxy.serving` makes a
fresh directory per server run and sets it before spawning the workers. One worker in one process uses a plain
registry of its own. Which of the two a process has is read from prometheus_client itself (`values.ValueClass`),
never guessed.

Gauges. `teeproxy_active_requests` and `teeproxy_ledger_queue_depth` are summed over live processes
("livesum"). The ledger's queue lives in each worker, so each worker samples its own every
`SAMPLE_INTERVAL_S` (and the scraping worker once more at scrape time); failed ledger writes become a counter.

Time to first content token is not here: the relay forwards bytes and does not know where content starts (an
OpenAI stream opens with a role-only delta, Anthropic's with `message_start`), so any figure it gave would be
the time to first byte under another name. `teeproxy_time_to_first_byte_seconds` is that honest figure.

Label values come from the config (provider), the proxy (endpoint, outcome, result) or the client (model).
Models are only those a route accepted, but a glob route accepts any name, so each process keeps at most
`MAX_MODELS` distinct model labels and counts the rest as "other". An endpoint path that names the model
(Gemini, Bedrock) is recorded with `{model}` in its place.
"""

from __future__ import annotations

import os
from collections import defaultdict
from dataclasses import dataclass

from prometheus_client import CONTENT_TYPE_LATEST as CONTENT_TYPE
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
    multiprocess,
    values,
)

from proxy.flush_soon import FlushSoon
from proxy.ledger import Ledger
from proxy.observe import Finished, Started

__all__ = ["CONTENT_TYPE", "Metrics", "multiprocess_mode"]

# Seconds. LLM timings run from milliseconds (a cached answer's first byte) to minutes (a long reasoning stream).
TTFB_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300)
DURATION_BUCKETS_S = (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1200, 1800)
GC_PAUSE_BUCKETS_S = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1)
GAP_BUCKETS_S = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, 300)
# Distinct model label values per process before the rest are counted as "other" (a bound on series).
MAX_MODELS = 200
MAX_SERIES_CACHED = 4 * MAX_MODELS
MAX_CHILDREN_CACHED = 64 * MAX_MODELS
SAMPLE_INTERVAL_S = 1.0
# Noted events wait at most this long, or until there are this many, before the instruments take them.
FLUSH_AFTER_S = 0.05
FLUSH_EVENTS = 500
TOKEN_KINDS = ("input", "output", "cached", "cache_write", "reasoning")

# The `_created` series exist in single-process mode only: off, so one worker and N expose the same series.
disable_created_metrics()  # type: ignore[no-untyped-call]


def multiprocess_mode() -> bool:
    """Whether this process writes its values to $PROMETHEUS_MULTIPROC_DIR (decided when prometheus_client was
    imported)."""
    return values.ValueClass is not values.MutexValue


def attempt_result(finished: Finished) -> str:
    """The last upstream attempt's result, from how the request ended."""
    record = finished.record
    if record.outcome == "timeout":
        return "timeout"
    if record.outcome == "upstream_error":  # no answer, or an answer cut short
        return "error"
    status = record.http_status
    if status is None:
        return "abandoned"  # the client left (or the proxy failed) before the upstream answered
    if status == 429:
        return "http_429"
    if status >= 500:
        return "http_5xx"
    if status >= 400:
        return "http_4xx"
    return "ok"


@dataclass(slots=True)
class _Series:
    model: str  # the label: the model's name, or "other"
    ttfb: Histogram
    stream_duration: Histogram
    max_gap: Histogram
    tokens: tuple[Counter, ...]  # in TOKEN_KINDS order
    cost: Counter
    unpriced: Counter


class Metrics:
    """An `Observer`; `render()` is the `/metrics` body. Cheap: a request is noted, and counted in a batch."""

    def __init__(self) -> None:
        self.multiprocess = multiprocess_mode()
        # Multiprocess: values go to files, and a scrape merges every process's files, so the instruments need
        # no registry. One process: a registry of this app's own (several apps may live in one test process).
        registry = None if self.multiprocess else CollectorRegistry()
        self.registry = registry
        by_model = ("provider", "model")
        self.requests = Counter(
            "teeproxy_requests",
            "Requests sent upstream, counted when they end.",
            ("provider", "model", "endpoint", "outcome"),
            registry=registry,
        )
        self.ttfb = Histogram(
            "teeproxy_time_to_first_byte_seconds",
            "From the request's arrival to the first response body byte sent to the client.",
            by_model,
            buckets=TTFB_BUCKETS_S,
            registry=registry,
        )
        self.stream_duration = Histogram(
            "teeproxy_stream_duration_seconds",
            "Streaming responses: from the request's arrival to the stream's end.",
            by_model,
            buckets=DURATION_BUCKETS_S,
            registry=registry,
        )
        self.max_gap = Histogram(
            "teeproxy_stream_max_gap_seconds",
            "Streaming responses: the longest wait between two body writes to the client, one per stream.",
            by_model,
            buckets=GAP_BUCKETS_S,
            registry=registry,
        )
        self.tokens = Counter(
            "teeproxy_tokens",
            "Tokens by kind, as the ledger normalizes them (input includes cached and cache_write; output includes "
            "reasoning).",
            ("provider", "model", "kind"),
            registry=registry,
        )
        self.cost = Counter("teeproxy_cost_usd", "Priced cost in USD.", by_model, registry=registry)
        self.unpriced = Counter(
            "teeproxy_unpriced_requests", "Requests whose model has no price.", by_model, registry=registry
        )
        self.active = Gauge(
            "teeproxy_active_requests",
            "Requests sent upstream and not yet ended (streams and single responses alike).",
            registry=registry,
            multiprocess_mode="livesum",
        )
        self.attempts = Counter(
            "teeproxy_upstream_attempts",
            "Upstream attempts by provider and result. Attempts that a later one replaced are result 'failed_over' "
            "with an empty provider (the observer seam reports how many, not where).",
            ("provider", "result"),
            registry=registry,
        )
        self.ledger_queue = Gauge(
            "teeproxy_ledger_queue_depth",
            "Ledger records submitted and not yet durable.",
            registry=registry,
            multiprocess_mode="livesum",
        )
        self.ledger_failures = Counter(
            "teeproxy_ledger_write_failures", "Failed ledger batch writes (each is retried).", registry=registry
        )
        self.gc_pause = Histogram(
            "teeproxy_gc_pause_seconds",
            "Pauses of Python's cyclic garbage collector (the whole worker stops), by generation collected.",
            ("generation",),
            buckets=GC_PAUSE_BUCKETS_S,
            registry=registry,
        )
        self._gc_pause_by_generation = [self.gc_pause.labels(str(generation)) for generation in range(3)]
        self._models: set[str] = set()
        self._series: dict[tuple[str, str], _Series] = {}
        self._children: dict[tuple[Counter, tuple[str, ...]], Counter] = {}
        self._failures_seen = 0
        self._started = 0
        self._finished: list[Finished] = []
        self._soon = FlushSoon(self.flush, FLUSH_AFTER_S, FLUSH_EVENTS)

    # The observer seam.

    def request_started(self, event: Started) -> None:
        self._started += 1
        self._soon.due()

    def request_finished(self, event: Finished) -> None:
        self._finished.append(event)
        self._soon.noted(len(self._finished))

    def flush(self) -> None:
        """The noted events into the instruments, now."""
        self._soon.ran()
        started, finished = self._started, self._finished
        self._started, self._finished = 0, []
        if started != len(finished):
            self.active.inc(started - len(finished))
        increments: defaultdict[Counter, float] = defaultdict(float)
        for event in finished:
            self._count(event, increments)
        for counter, amount in increments.items():
            counter.inc(amount)

    def _count(self, event: Finished, increments: defaultdict[Counter, float]) -> None:
        """One finished request: its histogram observations, and its counters' increments into `increments`."""
        record = event.record
        provider = record.provider or ""
        model = record.model or ""
        series = self._series.get((provider, model))
        if series is None:
            series = self._new_series(provider, model)
        endpoint = record.endpoint
        if model and model in endpoint:
            endpoint = endpoint.replace(model, "{model}")
        increments[self._child(self.requests, (provider, series.model, endpoint, record.outcome))] += 1
        if event.ttfb_s is not None:
            series.ttfb.observe(event.ttfb_s)
        if event.streaming:
            series.stream_duration.observe(record.duration_ms / 1000)
            if event.max_gap_s is not None:
                series.max_gap.observe(event.max_gap_s)
        counts = (
            record.input_tokens,
            record.output_tokens,
            record.cached_tokens,
            record.cache_write_tokens,
            record.reasoning_tokens,
        )
        for counter, count in zip(series.tokens, counts, strict=True):
            if count:
                increments[counter] += count
        if record.cost is not None:
            cost = float(record.cost)  # a plain decimal string; a float is what Prometheus keeps anyway
            if cost:
                increments[series.cost] += cost
        elif record.cost_status == "unpriced":
            increments[series.unpriced] += 1
        if event.attempts > 1:
            increments[self._child(self.attempts, ("", "failed_over"))] += event.attempts - 1
        increments[self._child(self.attempts, (provider, attempt_result(event)))] += 1

    def _child(self, metric: Counter, labels: tuple[str, ...]) -> Counter:
        """`metric.labels(*labels)`, remembered: `labels()` checks and converts its arguments and takes a lock on
        every call, which was most of what counting a request cost."""
        key = (metric, labels)
        child = self._children.get(key)
        if child is None:
            child = metric.labels(*labels)
            if len(self._children) < MAX_CHILDREN_CACHED:  # past it, looked up each time
                self._children[key] = child
        return child

    def _new_series(self, provider: str, model: str) -> _Series:
        """The children of one (provider, model), looked up once rather than on every request (`labels()` was a
        third of this observer's cost). Past MAX_MODELS models, new ones are labelled "other"."""
        if model not in self._models and len(self._models) >= MAX_MODELS:
            label = "other"
        else:
            label = model
            self._models.add(model)
        series = _Series(
            model=label,
            ttfb=self.ttfb.labels(provider, label),
            stream_duration=self.stream_duration.labels(provider, label),
            max_gap=self.max_gap.labels(provider, label),
            tokens=tuple(self.tokens.labels(provider, label, kind) for kind in TOKEN_KINDS),
            cost=self.cost.labels(provider, label),
            unpriced=self.unpriced.labels(provider, label),
        )
        if len(self._series) < MAX_SERIES_CACHED:  # past it (many models seen as "other"), looked up each time
            self._series[(provider, model)] = series
        return series

    # Per-worker state, sampled.

    def sample(self, ledger: Ledger | None, gc_pauses: list[tuple[int, float]] | None = None) -> None:
        """Copy this worker's ledger figures and collector pauses into the instruments (every SAMPLE_INTERVAL_S,
        and at scrape)."""
        for generation, seconds in gc_pauses or ():
            self._gc_pause_by_generation[generation].observe(seconds)
        if ledger is None:
            return
        self.ledger_queue.set(ledger.queue_depth)
        failures = ledger.write_failures
        if failures > self._failures_seen:
            self.ledger_failures.inc(failures - self._failures_seen)
            self._failures_seen = failures

    def render(self) -> bytes:
        """The exposition text: every worker's values merged (multiprocess), or this process's own."""
        self.flush()
        if self.registry is not None:
            return generate_latest(self.registry)
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return generate_latest(registry)

    def close(self) -> None:
        """This worker is leaving: what it noted is counted, and its live gauges stop counting towards the sum."""
        self.flush()
        if self.multiprocess and os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            multiprocess.mark_process_dead(os.getpid())  # type: ignore[no-untyped-call]
