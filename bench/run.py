"""`make bench`: teeproxy side by side with its baselines, in one interleaved run.

Targets, each its own process tree on 127.0.0.1, all in front of one mock upstream (`bench.mock_upstream`):

    direct               the mock itself: the floor every other row is compared with
    nginx                Debian's nginx with bench/nginx-sse.conf.template, 1 worker
    teeproxy-1w          `teeproxy serve --workers 1`, metering on
    teeproxy-2w          `teeproxy serve --workers 2`, metering on
    teeproxy-1w-nometer  `[metering] enabled = false`: the difference to teeproxy-1w is what metering costs
    teeproxy-baseline    teeproxy-1w as it was at e9a9406, before the work on performance (issue 10), from
                         `git archive` of this checkout, same interpreter and packages; ttfb only, for the
                         "CPU per request halved" goal in the same run (without the history: noted, not run)
    protocol-relay       bench/protocol_relay.py, a bare asyncio Protocol TCP relay: the Python floor
    hypercorn-relay      bench/hypercorn_relay.py, raw ASGI on hypercorn with teeproxy's extensions and upstream
                         client, no gateway work: the floor on teeproxy's own stack
    litellm              LiteLLM's proxy, when `litellm[proxy]` installed into bench/.litellm-venv
    portkey              Portkey's gateway (node), when npm installed it into bench/.portkey

Scenarios. Each measurement is one run of the load generator (`bench.loadgen`, its own process) while this
process reads the target's CPU and memory from /proc; targets are interleaved inside every repetition, so
drift on a shared machine hits all of them alike, and every figure is the median over the repetitions.

    ttfb         concurrency 1, short streams: time to the first body byte, p50/p99, and added over direct;
                 CPU µs per request of the target's process tree (its CPU during the run ÷ streams)
    c50, c200    concurrency 50 / 200, streams of 100 chunks of 200 B sent back to back ("burst"): streams/s,
                 chunks/s, CPU µs per chunk of the target's process tree, p99 of each stream's largest gap
    paced1000    1,000 streams open at once, one 200 B chunk per 50 ms, 40 chunks (2 s) each: 20,000 chunks/s
                 offered
    paced10000   10,000 streams open at once, one chunk per 2 s, 15 chunks (30 s) each: 5,000 chunks/s offered,
                 and streams long enough to all be open at once after the ramp (the load generator reports
                 the peak it held). For both: peak RSS of the tree, RSS per stream over idle, CPU µs per chunk
                 (each chunk its own read here: the per-chunk cost without batching), chunks/s achieved, gap
                 p99. Every target is restarted before each of these runs, so peak RSS is that run's own.
    steady       the paced1000 load in 5 waves on one process, started fresh once: per wave CPU µs per chunk,
                 peak RSS and RSS after it, and the last wave over the first (for nginx, teeproxy-1w and
                 protocol-relay only, to keep the run short)

teeproxy targets also report their garbage-collector pauses in every scenario (bench/gc_pauses.py): /metrics
is scraped before and after each load-generator run, outside the CPU measurement.

Results: bench/results/latest.json and latest.md; `--quick` (CI's smoke run, under a minute) writes quick.*.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import pathlib
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

from bench import gc_pauses, report
from bench import targets as t

RESULTS = t.ROOT / "bench" / "results"
RSS_SAMPLE_EVERY_S = 0.1
# Every stream's chunk count plus the `data: [DONE]` frame; teeproxy strips the usage chunk it asked for itself.
DONE_FRAMES = 1
FD_MARGIN = 200


@dataclass(frozen=True)
class Paced:
    streams: int
    delay_ms: int
    chunks: int

    @property
    def name(self) -> str:
        return f"paced{self.streams}"

    @property
    def timeout_s(self) -> float:
        """Twice the nominal length and a ramp, at least two minutes: a target that needs longer is overloaded."""
        return max(120.0, 2 * self.chunks * self.delay_ms / 1000 + 30)


@dataclass(frozen=True)
class Steady:
    """`waves` paced runs back to back on one process: does it cost more after a while than fresh?"""

    waves: int
    streams: int
    delay_ms: int
    chunks: int
    # About 5 paced runs per target: only the rows its goal and the floor need (LiteLLM alone would take ~5 min).
    targets: tuple[str, ...] = ("nginx", "teeproxy-1w", "protocol-relay")

    def wave(self) -> Paced:
        return Paced(self.streams, self.delay_ms, self.chunks)


@dataclass
class Plan:
    reps: int
    ttfb_streams: int
    burst_s: float
    concurrencies: list[int]
    paced: list[Paced]
    warmup_s: float
    steady: Steady | None = None
    ttfb_chunks: int = 5
    burst_chunks: int = 100
    chunk_bytes: int = 200
    targets: list[str] = field(default_factory=list)


FULL = Plan(
    reps=3,
    ttfb_streams=300,
    burst_s=6.0,
    concurrencies=[50, 200],
    paced=[Paced(1000, 50, 40), Paced(10000, 2000, 15)],
    warmup_s=1.0,
    steady=Steady(waves=5, streams=1000, delay_ms=50, chunks=40),
)
QUICK = Plan(
    reps=1,
    ttfb_streams=50,
    burst_s=1.5,
    concurrencies=[50],
    paced=[Paced(300, 50, 20)],
    warmup_s=0.3,
    steady=Steady(waves=3, streams=100, delay_ms=20, chunks=10),
)
DEFAULT_TARGETS = [
    "nginx",
    "teeproxy-1w",
    "teeproxy-2w",
    "teeproxy-1w-nometer",
    t.BASELINE,
    "protocol-relay",
    "hypercorn-relay",
    "litellm",
    "portkey",
]
QUICK_TARGETS = ["nginx", "teeproxy-1w", "teeproxy-2w", "teeproxy-1w-nometer", "protocol-relay"]


def loadgen(
    target: t.Target,
    *,
    concurrency: int,
    n_chunks: int,
    chunk_bytes: int,
    delay_ms: int = 0,
    total: int | None = None,
    duration_s: float | None = None,
    timeout_s: float,
    cpu: dict[str, list[int]],
    rss: list[int] | None = None,
) -> dict[str, Any]:
    """One load-generator run against `target`; CPU of each named process set, peak RSS of `rss`."""
    cmd = [sys.executable, "-m", "bench.loadgen", "--port", str(target.port), "--concurrency", str(concurrency)]
    cmd += ["--n-chunks", str(n_chunks), "--chunk-bytes", str(chunk_bytes), "--delay-ms", str(delay_ms)]
    cmd += ["--timeout-s", str(timeout_s)]
    if total is not None:
        cmd += ["--total", str(total)]
    if duration_s is not None:
        cmd += ["--duration-s", str(duration_s)]
    if target.key:
        cmd += ["--key", target.key]
    for header in target.headers:
        cmd += ["--header", header]
    cpu_before = {name: t.cpu_seconds(pids) for name, pids in cpu.items()}
    peak_rss = memory_before = t.memory_kib(rss)[0] if rss else 0
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=t.ROOT)
    deadline = time.monotonic() + timeout_s + 30  # the load generator's own timeout, plus start and report
    while proc.poll() is None and time.monotonic() < deadline:
        if rss:
            peak_rss = max(peak_rss, t.memory_kib(rss)[0])
        time.sleep(RSS_SAMPLE_EVERY_S)
    if proc.poll() is None:
        proc.kill()
    out, err = proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"load generator failed ({proc.returncode}): {err.decode(errors='replace')[-500:]}")
    result: dict[str, Any] = json.loads(out)
    result["finished_at"] = time.strftime("%H:%M:%S")
    frames = result["frames"]
    elapsed = result["elapsed_s"]
    for name, pids in cpu.items():
        used = t.cpu_seconds(pids) - cpu_before[name]
        result[f"{name}_cpu_us_per_chunk"] = used / frames * 1e6 if frames else float("nan")
        result[f"{name}_cpu_us_per_stream"] = used / result["completed"] * 1e6 if result["completed"] else float("nan")
    result["loadgen_cpu_us_per_chunk"] = result["loadgen_cpu_s"] / frames * 1e6 if frames else float("nan")
    result["streams_per_s"] = result["completed"] / elapsed
    result["chunks_per_s"] = frames / elapsed
    expected = n_chunks + DONE_FRAMES
    result["expected_frames_per_stream"] = expected
    result["streams_with_other_frame_count"] = result["completed"] - result["frames_per_stream"].get(str(expected), 0)
    if rss:
        result["idle_rss_mib"] = memory_before / 1024
        result["peak_rss_mib"] = peak_rss / 1024
        result["hwm_rss_mib"] = t.memory_kib(rss)[1] / 1024
    return result


class Bench:
    def __init__(self, plan: Plan, workdir: pathlib.Path, fd_limit: int) -> None:
        self.plan = plan
        self.workdir = workdir
        self.fd_limit = fd_limit
        self.mock = t.mock(workdir)
        self.live: dict[str, t.Target] = {}
        self.notes: dict[str, str] = {}
        self.runs: dict[str, dict[str, list[dict[str, Any]]]] = {}
        self.given_up: set[tuple[str, str]] = set()

    # -- targets

    def factory(self, name: str) -> t.Target:
        port = self.mock.port
        if name == "nginx":
            return t.nginx(self.workdir, port, 1)
        if name == "nginx-2w":
            return t.nginx(self.workdir, port, 2)
        if name == t.BASELINE:
            return t.teeproxy_baseline(self.workdir, port)
        if name.startswith("teeproxy-"):
            workers = int(name.split("-")[1].rstrip("w"))
            return t.teeproxy(self.workdir, port, workers, metering=not name.endswith("-nometer"))
        if name == "litellm":
            return t.litellm(self.workdir, port)
        if name == "protocol-relay":
            return t.protocol_relay(self.workdir, port)
        if name == "hypercorn-relay":
            return t.hypercorn_relay(self.workdir, port)
        if name == "portkey":
            return t.portkey(self.workdir, port)
        raise ValueError(f"unknown target {name!r}")

    def start(self, name: str) -> t.Target | None:
        print(f"starting {name}", file=sys.stderr, flush=True)
        try:
            target = self.factory(name)
            target.start()
        except t.NotAvailable as exc:
            self.notes[name] = str(exc)
            return None
        self.warm_up(target)
        self.live[name] = target
        return target

    def warm_up(self, target: t.Target) -> None:
        """Fill connection pools and import lazily loaded code before anything is measured."""
        p = self.plan
        loadgen(
            target, concurrency=20, n_chunks=10, chunk_bytes=p.chunk_bytes, duration_s=p.warmup_s, timeout_s=60, cpu={}
        )
        time.sleep(0.2)
        if target.proc is not None:
            target.refresh_pids()

    def measure(self, name: str, target: t.Target, **loadgen_args: Any) -> dict[str, Any]:
        """One load-generator run; for teeproxy also its GC pauses over the run, from /metrics either side of it
        (outside the CPU measurement, which `loadgen` takes inside)."""
        if not name.startswith("teeproxy"):
            return loadgen(target, **loadgen_args)
        before = self.gc_scrape(target)
        result = loadgen(target, **loadgen_args)
        result.update(gc_pauses.delta(before, self.gc_scrape(target)))
        return result

    @staticmethod
    def gc_scrape(target: t.Target) -> dict[str, gc_pauses.Generation] | None:
        if target.workers > 1:
            time.sleep(gc_pauses.SETTLE_S)  # every worker's pauses into the histogram (see bench/gc_pauses.py)
        return gc_pauses.parse(t.scrape(target.port))

    def direct(self) -> t.Target:
        return t.Target("direct", None, port=self.mock.port, pids=self.mock.pids)

    def record(self, scenario: str, name: str, result: dict[str, Any]) -> None:
        self.runs.setdefault(scenario, {}).setdefault(name, []).append(result)
        if result["streams_with_other_frame_count"] and f"{name}/frames" not in self.notes:
            counts = ", ".join(f"{n} frames: {c:,} streams" for n, c in result["frames_per_stream"].items())
            self.notes[f"{name}/frames"] = (
                f"the mock sent {result['expected_frames_per_stream']} frames per stream in {scenario}; "
                f"the client received {counts}"
            )
        bad = result["errors"] or result["unfinished"] or result["streams_with_other_frame_count"]
        if bad:
            print(
                f"  {scenario} {name}: {result['errors']} errors {result['error_kinds']}, "
                f"{result['unfinished']} unfinished, frames {result['frames_per_stream']}",
                file=sys.stderr,
            )

    # -- scenarios

    def ttfb(self, name: str, target: t.Target) -> None:
        p = self.plan
        result = self.measure(
            name,
            target,
            concurrency=1,
            n_chunks=p.ttfb_chunks,
            chunk_bytes=p.chunk_bytes,
            total=p.ttfb_streams,
            timeout_s=120,
            cpu={"target": target.pids},
        )
        self.record("ttfb", name, result)

    def burst(self, name: str, target: t.Target, concurrency: int) -> None:
        p = self.plan
        cpu = {"target": target.pids, "mock": self.mock.pids}
        result = self.measure(
            name,
            target,
            concurrency=concurrency,
            n_chunks=p.burst_chunks,
            chunk_bytes=p.chunk_bytes,
            duration_s=p.burst_s,
            timeout_s=p.burst_s + 120,
            cpu=cpu,
        )
        self.record(f"c{concurrency}", name, result)

    def paced_target(self, name: str, paced: Paced) -> str | None:
        """The target that runs this many streams here, or None; fd limits decide (noted in the report)."""
        if name == "direct":
            return name
        workers = 2 if name in ("teeproxy-2w", "nginx-2w") else 1
        # A relaying process holds two sockets per stream; spread over N workers, about 2 x streams / N each.
        if 2 * paced.streams / workers + FD_MARGIN <= self.fd_limit:
            return name
        why = (
            f"{paced.streams:,} streams need ~{2 * paced.streams:,} sockets in one process; fd limit {self.fd_limit:,}"
        )
        if name == "nginx":
            self.notes[f"nginx/{paced.name}"] = f"runs as nginx-2w: {why}"
            return "nginx-2w"
        self.notes[f"{name}/{paced.name}"] = f"skipped: {why}"
        return None

    def restart(self, name: str) -> t.Target | None:
        """A fresh process, so that a peak is this run's and not an earlier scenario's."""
        old = self.live.pop(name, None)
        if old is not None:
            old.stop()
        return self.start(name)

    def paced_run(self, name: str, target: t.Target, paced: Paced, rss: list[int] | None) -> dict[str, Any]:
        result = self.measure(
            name,
            target,
            concurrency=paced.streams,
            total=paced.streams,
            n_chunks=paced.chunks,
            chunk_bytes=self.plan.chunk_bytes,
            delay_ms=paced.delay_ms,
            timeout_s=paced.timeout_s,
            cpu={"target": target.pids, "mock": self.mock.pids},
            rss=rss,
        )
        if rss:
            result["rss_per_stream_kib"] = (result["peak_rss_mib"] - result["idle_rss_mib"]) * 1024 / paced.streams
        return result

    def paced(self, name: str, paced: Paced) -> None:
        if name == "direct":
            result = self.paced_run(name, self.direct(), paced, None)
        else:
            target = self.restart(name)
            if target is None:
                return
            result = self.paced_run(name, target, paced, target.pids)
        self.record(paced.name, name, result)
        if result["timed_out"]:
            # Not repeated: another try would only spend the same minutes to the same end.
            self.given_up.add((paced.name, name))
            self.notes[f"{name}/{paced.name}"] = (
                f"did not finish within {paced.timeout_s:.0f} s: {result['completed']:,} of {paced.streams:,} streams "
                f"completed, {result['unfinished']:,} still open, {result['errors']:,} errors"
                f"{' ' + str(result['error_kinds']) if result['error_kinds'] else ''}; not repeated"
            )

    def steady(self, name: str, steady: Steady) -> None:
        """`steady.waves` paced runs on one process, started fresh (and warmed up) once."""
        target = self.restart(name)
        if target is None:
            return
        wave = steady.wave()
        waves: list[dict[str, Any]] = []
        for index in range(steady.waves):
            result = self.paced_run(name, target, wave, target.pids)
            result["rss_after_mib"] = t.memory_kib(target.pids)[0] / 1024
            waves.append(result)
            if result["timed_out"] or result["errors"]:
                self.notes[f"{name}/steady"] = (
                    f"wave {index + 1} of {steady.waves}: {result['completed']:,} of {wave.streams:,} streams "
                    f"completed, {result['errors']:,} errors; the later waves were not run"
                )
                break
        self.record("steady", name, merge_waves(waves))

    # -- the whole run

    def run(self) -> None:
        p = self.plan
        self.mock.start()
        names = ["direct"]
        for name in p.targets:
            if self.start(name) is not None:
                names.append(name)
        for rep in range(p.reps):
            print(f"repetition {rep + 1}/{p.reps}: ttfb, burst", file=sys.stderr, flush=True)
            for name in names:
                if p.ttfb_streams:
                    self.ttfb(name, self.live.get(name) or self.direct())
            for concurrency in p.concurrencies:
                for name in names:
                    if name in report.TTFB_ONLY:
                        continue
                    self.burst(name, self.live.get(name) or self.direct(), concurrency)
        for rep in range(p.reps):
            for paced in p.paced:
                print(f"repetition {rep + 1}/{p.reps}: {paced.name}", file=sys.stderr, flush=True)
                for name in names:
                    if name in report.TTFB_ONLY:
                        continue
                    actual = self.paced_target(name, paced)
                    if actual is not None and (paced.name, actual) not in self.given_up:
                        self.paced(actual, paced)
                # The 2-worker stand-ins are only for this scenario.
                for extra in ("nginx-2w",):
                    if extra in self.live and extra not in names:
                        self.live.pop(extra).stop()
            if p.steady is not None:
                print(f"repetition {rep + 1}/{p.reps}: steady", file=sys.stderr, flush=True)
                for name in names:
                    if name in p.steady.targets and ("steady", name) not in self.given_up:
                        self.steady(name, p.steady)

    def stop(self) -> None:
        for target in self.live.values():
            with contextlib.suppress(Exception):
                target.stop()
        self.mock.stop()


WAVE_FIGURES = ("target_cpu_us_per_chunk", "peak_rss_mib", "rss_after_mib", "chunks_per_s", "max_gap_p99_ms")
GC_SUMMED = ("gc_pause_ms", "gc_collections", "gc_gen2_collections", "gc_gen2_pause_ms")


def merge_waves(waves: list[dict[str, Any]]) -> dict[str, Any]:
    """A steady run's row: totals over its waves, each wave's figures in order, and last over first."""
    first, last = waves[0], waves[-1]
    frames: Counter[str] = Counter()
    kinds: Counter[str] = Counter()
    for wave in waves:
        frames.update(wave["frames_per_stream"])
        kinds.update(wave["error_kinds"])
    out: dict[str, Any] = {
        "waves": len(waves),
        "completed": sum(w["completed"] for w in waves),
        "errors": sum(w["errors"] for w in waves),
        "error_kinds": dict(kinds),
        "unfinished": sum(w["unfinished"] for w in waves),
        "timed_out": any(w["timed_out"] for w in waves),
        "frames": sum(w["frames"] for w in waves),
        "frames_per_stream": {n: frames[n] for n in sorted(frames, key=int)},
        "expected_frames_per_stream": first["expected_frames_per_stream"],
        "streams_with_other_frame_count": sum(w["streams_with_other_frame_count"] for w in waves),
        "peak_in_flight": min(w["peak_in_flight"] for w in waves),
        "idle_rss_mib": first["idle_rss_mib"],
        "peak_rss_mib": max(w["peak_rss_mib"] for w in waves),
        "target_cpu_us_per_chunk": statistics.fmean(w["target_cpu_us_per_chunk"] for w in waves),
        "max_gap_p99_ms": max(w["max_gap_p99_ms"] for w in waves),
        "first_wave_cpu_us_per_chunk": first["target_cpu_us_per_chunk"],
        "last_wave_cpu_us_per_chunk": last["target_cpu_us_per_chunk"],
        "cpu_last_x_first": last["target_cpu_us_per_chunk"] / first["target_cpu_us_per_chunk"],
        "first_wave_peak_rss_mib": first["peak_rss_mib"],
        "last_wave_peak_rss_mib": last["peak_rss_mib"],
        "peak_rss_last_x_first": last["peak_rss_mib"] / first["peak_rss_mib"],
    }
    for figure in WAVE_FIGURES:
        out[f"{figure}_by_wave"] = [w[figure] for w in waves]
    if "gc_pause_ms" in first:
        for figure in GC_SUMMED:
            values = [w[figure] for w in waves]
            out[figure] = None if None in values else sum(values)
        out["gc_pause_ms_by_wave"] = [w["gc_pause_ms"] for w in waves]
        for figure in ("gc_max_bucket_ms", "gc_gen2_max_bucket_ms"):
            bounds = [w[figure] for w in waves if w[figure] is not None]
            out[figure] = max(bounds) if bounds else None
    return out


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _median(values: list[Any]) -> float | None:
    """Median of the numbers, NaN dropped; None if there are none but None (a figure the target lacks)."""
    numbers: list[float] = [v for v in values if _is_number(v) and v == v]
    if numbers:
        return statistics.median(numbers)
    return None if all(v is None for v in values) else float("nan")


def median_of(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians of every numeric figure (per position for per-wave lists); counts that must be exact (errors,
    frames) as their worst case."""
    out: dict[str, Any] = {}
    for key, first in runs[0].items():
        values = [r[key] for r in runs]
        if key in ("errors", "unfinished", "streams_with_other_frame_count"):
            out[key] = max(values)
        elif key in ("completed", "peak_in_flight", "waves"):
            out[key] = min(values)
        elif key.endswith("_by_wave"):
            length = min(len(v) for v in values)
            out[key] = [_median([v[i] for v in values]) for i in range(length)]
        elif first is None or _is_number(first):
            out[key] = _median(values)
        else:
            out[key] = first if all(v == first for v in values) else values
    out["repetitions"] = len(runs)
    return out


def added_ttfb(runs: dict[str, list[dict[str, Any]]]) -> None:
    """TTFB added over direct, paired within each repetition (the median is taken later)."""
    direct = runs.get("direct", [])
    for target_runs in runs.values():
        for run, floor in zip(target_runs, direct, strict=False):
            for q in ("p50", "p99"):
                run[f"added_ttfb_{q}_ms"] = run[f"ttfb_{q}_ms"] - floor[f"ttfb_{q}_ms"]


def machine(fd_limit: int) -> dict[str, Any]:
    cpu_model = ""
    with contextlib.suppress(OSError):
        for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    versions: dict[str, str] = {"python": platform.python_version()}
    nginx = t.nginx_binary()
    if nginx:
        out = subprocess.run([nginx, "-v"], capture_output=True, text=True, check=False)
        versions["nginx"] = out.stderr.strip().rsplit("/", 1)[-1]
    litellm_py = t.LITELLM_VENV / "bin" / "python"
    if litellm_py.exists():
        out = subprocess.run(
            [str(litellm_py), "-c", "import importlib.metadata as m; print(m.version('litellm'))"],
            capture_output=True,
            text=True,
            check=False,
        )
        versions["litellm"] = out.stdout.strip()
    if t.PORTKEY_SERVER.exists():
        with contextlib.suppress(OSError, ValueError, KeyError):
            package = json.loads((t.PORTKEY_SERVER.parent.parent / "package.json").read_text())
            hono = json.loads((t.PORTKEY_DIR / "node_modules" / "@hono" / "node-server" / "package.json").read_text())
            versions["portkey"] = f"{package['version']} (@hono/node-server {hono['version']})"
        out = subprocess.run(["node", "--version"], capture_output=True, text=True, check=False)
        versions["node"] = out.stdout.strip().lstrip("v")
    return {
        "cpu": cpu_model,
        "cores": os.cpu_count(),
        "memory_gib": round(mem_gib, 1),
        "kernel": platform.release(),
        "fd_limit": fd_limit,
        "versions": versions,
    }


def teeproxy_version() -> str:
    """The commit the proxy's code is at, `+uncommitted` if proxy/ has changes. Taken before and after a run: a
    target (re)started in between loads whatever is on disk then."""
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=t.ROOT, capture_output=True, text=True)
    dirty = subprocess.run(["git", "status", "--porcelain", "proxy"], cwd=t.ROOT, capture_output=True, text=True)
    return commit.stdout.strip() + ("+uncommitted" if dirty.stdout.strip() else "")


def raise_fd_limit() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return int(hard)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="CI's smoke run: one repetition, small numbers")
    parser.add_argument("--targets", nargs="*", help="a subset of targets (direct always runs)")
    parser.add_argument("--reps", type=int, help="repetitions (default 3; 1 with --quick)")
    parser.add_argument(
        "--scenarios", nargs="*", help="a subset: ttfb, burst, paced1000, paced10000, steady (default: all)", default=[]
    )
    parser.add_argument("--out", type=pathlib.Path, default=RESULTS, help="directory for the JSON and markdown")
    args = parser.parse_args(argv)
    plan = QUICK if args.quick else FULL
    plan.targets = args.targets if args.targets is not None else (QUICK_TARGETS if args.quick else DEFAULT_TARGETS)
    if args.reps:
        plan.reps = args.reps
    if args.scenarios:
        if "ttfb" not in args.scenarios:
            plan.ttfb_streams = 0
        if "burst" not in args.scenarios:
            plan.concurrencies = []
        plan.paced = [paced for paced in plan.paced if paced.name in args.scenarios]
        if "steady" not in args.scenarios:
            plan.steady = None
    fd_limit = raise_fd_limit()
    started = time.monotonic()
    version_before = teeproxy_version()
    with tempfile.TemporaryDirectory(prefix="teeproxy-bench-") as tmp:
        workdir = pathlib.Path(tmp)
        os.chmod(workdir, 0o755)
        bench = Bench(plan, workdir, fd_limit)
        try:
            bench.run()
        finally:
            bench.stop()
    added_ttfb(bench.runs.get("ttfb", {}))
    command = "make bench-quick" if args.quick else "make bench"
    results = {
        scenario: {name: median_of(runs) for name, runs in by_target.items()}
        for scenario, by_target in bench.runs.items()
    }
    summary: dict[str, Any] = {
        "command": command,
        "duration_s": round(time.monotonic() - started, 1),
        "machine": machine(fd_limit),
        "teeproxy": version_before
        if version_before == (after := teeproxy_version())
        else f"{version_before} → {after}",
        "plan": asdict(plan),
        "results": results,
        "notes": bench.notes,
        "runs": bench.runs,
    }
    summary["ratios"] = report.ratios(results)
    summary["goals"] = report.goals(results)
    args.out.mkdir(parents=True, exist_ok=True)
    stem = "quick" if args.quick else "latest"
    (args.out / f"{stem}.json").write_text(json.dumps(summary, indent=1, allow_nan=True) + "\n")
    table = report.markdown(summary)
    (args.out / f"{stem}.md").write_text(table)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
