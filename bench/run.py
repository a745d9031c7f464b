"""`make bench`: teeproxy side by side with its baselines, in one interleaved run.

Targets, each its own process tree on 127.0.0.1, all in front of one mock upstream (`bench.mock_upstream`):

    direct               the mock itself: the floor every other row is compared with
    nginx                Debian's nginx with bench/nginx-sse.conf.template, 1 worker
    teeproxy-1w          `teeproxy serve --workers 1`, metering on
    teeproxy-2w          `teeproxy serve --workers 2`, metering on
    teeproxy-1w-nometer  `[metering] enabled = false`: the difference to teeproxy-1w is what metering costs
    litellm              LiteLLM's proxy, when `litellm[proxy]` installed into bench/.litellm-venv

Scenarios. Each measurement is one run of the load generator (`bench.loadgen`, its own process) while this
process reads the target's CPU and memory from /proc; targets are interleaved inside every repetition, so
drift on a shared machine hits all of them alike, and every figure is the median over the repetitions.

    ttfb         concurrency 1, short streams: time to the first body byte, p50/p99, and added over direct
    c50, c200    concurrency 50 / 200, streams of 100 chunks of 200 B sent back to back ("burst"): streams/s,
                 chunks/s, CPU µs per chunk of the target's process tree, p99 of each stream's largest gap
    paced1000    1,000 streams open at once, one 200 B chunk per 50 ms, 40 chunks (2 s) each: 20,000 chunks/s
                 offered
    paced10000   10,000 streams open at once, one chunk per 2 s, 15 chunks (30 s) each: 5,000 chunks/s offered,
                 and streams long enough to all be open at once after the ramp (the load generator reports
                 the peak it held). For both: peak RSS of the tree, RSS per stream over idle, CPU µs per chunk
                 (each chunk its own read here: the per-chunk cost without batching), chunks/s achieved, gap
                 p99. Every target is restarted before each of these runs, so peak RSS is that run's own.

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
from dataclasses import asdict, dataclass, field
from typing import Any

from bench import report
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


@dataclass
class Plan:
    reps: int
    ttfb_streams: int
    burst_s: float
    concurrencies: list[int]
    paced: list[Paced]
    warmup_s: float
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
)
QUICK = Plan(reps=1, ttfb_streams=50, burst_s=1.5, concurrencies=[50], paced=[Paced(300, 50, 20)], warmup_s=0.3)
DEFAULT_TARGETS = ["nginx", "teeproxy-1w", "teeproxy-2w", "teeproxy-1w-nometer", "litellm"]
QUICK_TARGETS = ["nginx", "teeproxy-1w", "teeproxy-2w", "teeproxy-1w-nometer"]


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
        if name.startswith("teeproxy-"):
            workers = int(name.split("-")[1].rstrip("w"))
            return t.teeproxy(self.workdir, port, workers, metering=not name.endswith("-nometer"))
        if name == "litellm":
            return t.litellm(self.workdir, port)
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
        result = loadgen(
            target,
            concurrency=1,
            n_chunks=p.ttfb_chunks,
            chunk_bytes=p.chunk_bytes,
            total=p.ttfb_streams,
            timeout_s=120,
            cpu={},
        )
        self.record("ttfb", name, result)

    def burst(self, name: str, target: t.Target, concurrency: int) -> None:
        p = self.plan
        cpu = {"target": target.pids, "mock": self.mock.pids}
        result = loadgen(
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

    def paced(self, name: str, paced: Paced) -> None:
        p = self.plan
        if name == "direct":
            target = self.direct()
            rss = None
        else:
            # A fresh process, so that the peak is this run's and not an earlier scenario's.
            old = self.live.pop(name, None)
            if old is not None:
                old.stop()
            fresh = self.start(name)
            if fresh is None:
                return
            target = fresh
            rss = target.pids
        cpu = {"target": target.pids, "mock": self.mock.pids}
        result = loadgen(
            target,
            concurrency=paced.streams,
            total=paced.streams,
            n_chunks=paced.chunks,
            chunk_bytes=p.chunk_bytes,
            delay_ms=paced.delay_ms,
            timeout_s=paced.timeout_s,
            cpu=cpu,
            rss=rss,
        )
        if rss:
            result["rss_per_stream_kib"] = (result["peak_rss_mib"] - result["idle_rss_mib"]) * 1024 / paced.streams
        self.record(paced.name, name, result)
        if result["timed_out"]:
            # Not repeated: another try would only spend the same minutes to the same end.
            self.given_up.add((paced.name, name))
            self.notes[f"{name}/{paced.name}"] = (
                f"did not finish within {paced.timeout_s:.0f} s: {result['completed']:,} of {paced.streams:,} streams "
                f"completed, {result['unfinished']:,} still open, {result['errors']:,} errors"
                f"{' ' + str(result['error_kinds']) if result['error_kinds'] else ''}; not repeated"
            )

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
                    self.burst(name, self.live.get(name) or self.direct(), concurrency)
        for rep in range(p.reps):
            for paced in p.paced:
                print(f"repetition {rep + 1}/{p.reps}: {paced.name}", file=sys.stderr, flush=True)
                for name in names:
                    actual = self.paced_target(name, paced)
                    if actual is not None and (paced.name, actual) not in self.given_up:
                        self.paced(actual, paced)
                # The 2-worker stand-ins are only for this scenario.
                for extra in ("nginx-2w",):
                    if extra in self.live and extra not in names:
                        self.live.pop(extra).stop()

    def stop(self) -> None:
        for target in self.live.values():
            with contextlib.suppress(Exception):
                target.stop()
        self.mock.stop()


def median_of(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians of every numeric figure; counts that must be exact (errors, frames) as their worst case."""
    out: dict[str, Any] = {}
    for key, first in runs[0].items():
        values = [r[key] for r in runs]
        if key in ("errors", "unfinished", "streams_with_other_frame_count"):
            out[key] = max(values)
        elif key == "completed" or key == "peak_in_flight":
            out[key] = min(values)
        elif isinstance(first, bool) or not isinstance(first, int | float):
            out[key] = first if all(v == first for v in values) else values
        else:
            numbers = [v for v in values if v == v]  # drop NaN
            out[key] = statistics.median(numbers) if numbers else float("nan")
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
        "--scenarios", nargs="*", help="a subset: ttfb, burst, paced1000, paced10000 (default: all)", default=[]
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
