"""`make bench`: teeproxy side by side with its baselines, in one interleaved run.

Targets, each a separate process tree on 127.0.0.1, all in front of one mock upstream:
    direct        the mock itself (the floor)
    nginx         Debian's nginx with config/nginx/sse-proxy.conf, 1 worker (2 for the 10k-stream run)
    teeproxy-1w   `teeproxy serve --workers 1`, metering on
    teeproxy-2w   `teeproxy serve --workers 2`, metering on
    teeproxy-1w-nometer   metering off ([metering] enabled = false): the cost of the sidecar
    litellm       LiteLLM's proxy, when `litellm[proxy]` is installed in bench/.litellm-venv

Scenarios, repeated `--reps` times with the targets interleaved inside each repetition (so drift on a shared
machine hits every target alike), medians reported:
    ttfb        concurrency 1, short streams: time to first body byte, p50/p99 (and added over direct)
    c50, c200   concurrency 50 / 200, 100 chunks of 200 B, no delay: streams/s, chunks/s, CPU µs per chunk of
                the target's process tree (utime+stime from /proc), p99 of each stream's largest frame gap
    slow        1,000 (and 10,000) concurrent streams, one chunk per 50 ms: peak RSS of the target's process
                tree, and RSS per stream over its idle RSS

Results: bench/results/latest.json and latest.md. `--quick` is a smoke run of at most about a minute.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import os
import pathlib
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any

from bench.loadgen import build_request, percentile, run_streams

ROOT = pathlib.Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
KEY = "tp-bench-key"
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def tree(pid: int) -> list[int]:
    """pid and all its descendants, from /proc."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = pathlib.Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
            children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def cpu_seconds(pid: int) -> float:
    total = 0
    for p in tree(pid):
        with contextlib.suppress(OSError):
            fields = pathlib.Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / CLK_TCK


def rss_bytes(pid: int) -> int:
    total = 0
    for p in tree(pid):
        with contextlib.suppress(OSError, IndexError):
            total += int(pathlib.Path(f"/proc/{p}/statm").read_text().split()[1]) * PAGE
    return total


def wait_port(port: int, proc: subprocess.Popen[bytes], timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"exited with {proc.returncode}")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError("did not start listening")


@dataclass
class Target:
    name: str
    port: int = 0
    proc: subprocess.Popen[bytes] | None = None
    key: str | None = None
    note: str = ""
    workdir: pathlib.Path | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGINT if self.name.startswith("teeproxy") else signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        self.proc = None


def spawn(cmd: list[str], **kwargs: Any) -> subprocess.Popen[bytes]:
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True, **kwargs)


def start_mock(workdir: pathlib.Path) -> Target:
    target = Target("mock", port=free_port())
    target.proc = spawn([sys.executable, "-m", "bench.mock_upstream", "--port", str(target.port)], cwd=ROOT)
    wait_port(target.port, target.proc)
    return target


def teeproxy_config(workdir: pathlib.Path, mock_port: int, metering: bool) -> pathlib.Path:
    digest = hashlib.sha256(KEY.encode()).hexdigest()
    path = workdir / f"teeproxy-{'on' if metering else 'off'}.toml"
    path.write_text(
        f"""
[metering]
enabled = {"true" if metering else "false"}

[ledger]
path = "{workdir}/ledger-{"on" if metering else "off"}.db"

[[providers]]
name = "mock"
dialect = "openai"
base_url = "http://127.0.0.1:{mock_port}/v1"

[[routes]]
models = ["*"]
providers = ["mock"]

[[keys]]
name = "bench"
sha256 = "{digest}"
"""
    )
    return path


def start_teeproxy(name: str, workdir: pathlib.Path, mock_port: int, workers: int, metering: bool) -> Target:
    target = Target(name, port=free_port(), key=KEY)
    config = teeproxy_config(workdir, mock_port, metering)
    cmd = [sys.executable, "-m", "proxy", "serve", "--config", str(config), "--bind", f"127.0.0.1:{target.port}"]
    target.proc = spawn([*cmd, "--workers", str(workers)], cwd=ROOT)
    wait_port(target.port, target.proc)
    return target


def start_nginx(workdir: pathlib.Path, mock_port: int, workers: int) -> Target:
    binary = shutil.which("nginx") or ("/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else None)
    target = Target(f"nginx-{workers}w" if workers > 1 else "nginx")
    if binary is None:
        target.note = "not installed"
        return target
    prefix = workdir / f"nginx-{workers}"
    prefix.mkdir(exist_ok=True)
    os.chmod(prefix, 0o777)
    target.port = free_port()
    template = (ROOT / "config" / "nginx" / "sse-proxy.conf").read_text()
    values = {"workers": workers, "prefix": prefix, "upstream_port": mock_port, "listen_port": target.port}
    conf = template
    for name, value in values.items():
        conf = conf.replace("{" + name + "}", str(value))
    (prefix / "nginx.conf").write_text(conf)
    target.proc = spawn([binary, "-p", str(prefix), "-c", str(prefix / "nginx.conf"), "-g", "daemon off;"])
    wait_port(target.port, target.proc)
    return target


def start_litellm(workdir: pathlib.Path, mock_port: int) -> Target:
    target = Target("litellm")
    exe = ROOT / "bench" / ".litellm-venv" / "bin" / "litellm"
    if not exe.exists():
        target.note = "not installed (pip install 'litellm[proxy]' into bench/.litellm-venv)"
        return target
    config = workdir / "litellm.yaml"
    target.key = "sk-bench-" + hashlib.sha256(b"litellm-bench").hexdigest()
    config.write_text(
        "model_list:\n  - model_name: gpt-4o-mini\n    litellm_params:\n      model: openai/gpt-4o-mini\n"
        f"      api_base: http://127.0.0.1:{mock_port}/v1\n      api_key: sk-mock\n"
        f"general_settings:\n  master_key: {target.key}\n"
        "litellm_settings:\n  drop_params: false\n"
    )
    target.port = free_port()
    target.proc = spawn([str(exe), "--config", str(config), "--host", "127.0.0.1", "--port", str(target.port)])
    try:
        wait_port(target.port, target.proc, timeout_s=120)
    except RuntimeError as exc:
        target.note = f"failed to start: {exc}"
        target.stop()
    return target


@dataclass
class Plan:
    reps: int
    ttfb_requests: int
    throughput_s: float
    concurrencies: list[int]
    slow_counts: list[int]
    slow_chunks: int
    targets: list[str] = field(default_factory=list)


FULL = Plan(
    reps=3, ttfb_requests=300, throughput_s=8.0, concurrencies=[50, 200], slow_counts=[1000, 10000], slow_chunks=40
)
QUICK = Plan(reps=1, ttfb_requests=60, throughput_s=2.0, concurrencies=[50], slow_counts=[300], slow_chunks=10)


def measure_ttfb(target: Target, n: int) -> dict[str, float]:
    request = build_request(target.port, n_chunks=5, chunk_bytes=200, delay_ms=0, key=target.key)
    result = asyncio.run(run_streams(target.port, request, concurrency=1, total=n))
    values = [s.ttfb_s * 1000 for s in result.streams]
    return {"ttfb_p50_ms": percentile(values, 50), "ttfb_p99_ms": percentile(values, 99), "errors": result.errors}


def measure_throughput(target: Target, concurrency: int, seconds: float, cpu_pid: int | None) -> dict[str, float]:
    request = build_request(target.port, n_chunks=100, chunk_bytes=200, delay_ms=0, key=target.key)
    cpu_before = cpu_seconds(cpu_pid) if cpu_pid else 0.0
    result = asyncio.run(run_streams(target.port, request, concurrency=concurrency, duration_s=seconds))
    cpu = (cpu_seconds(cpu_pid) - cpu_before) if cpu_pid else float("nan")
    frames = result.frames
    return {
        "streams_per_s": len(result.streams) / result.elapsed_s,
        "chunks_per_s": frames / result.elapsed_s,
        "cpu_us_per_chunk": cpu / frames * 1e6 if frames and cpu_pid else float("nan"),
        "max_gap_p99_ms": percentile([s.max_gap_s * 1000 for s in result.streams], 99),
        "errors": result.errors,
    }


def measure_slow(target: Target, count: int, chunks: int) -> dict[str, float]:
    request = build_request(target.port, n_chunks=chunks, chunk_bytes=200, delay_ms=50, key=target.key)
    idle = rss_bytes(target.pid)
    peak = [idle]

    async def go() -> Any:
        async def sample() -> None:
            while True:
                peak[0] = max(peak[0], rss_bytes(target.pid))
                await asyncio.sleep(0.25)

        sampler = asyncio.get_running_loop().create_task(sample())
        try:
            return await run_streams(target.port, request, concurrency=count, total=count)
        finally:
            sampler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sampler

    result = asyncio.run(go())
    return {
        "completed": len(result.streams),
        "errors": result.errors,
        "idle_rss_mib": idle / 2**20,
        "peak_rss_mib": peak[0] / 2**20,
        "rss_per_stream_kib": (peak[0] - idle) / max(1, count) / 1024,
        "max_gap_p99_ms": percentile([s.max_gap_s * 1000 for s in result.streams], 99),
    }


def median_of(runs: list[dict[str, float]]) -> dict[str, float]:
    keys = runs[0].keys()
    out = {}
    for key in keys:
        values = [r[key] for r in runs if r[key] == r[key]]  # drop NaN
        out[key] = statistics.median(values) if values else float("nan")
    return out


def raise_fd_limit() -> int:
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return int(hard)


def run(plan: Plan, workdir: pathlib.Path) -> dict[str, Any]:
    fd_limit = raise_fd_limit()
    mock = start_mock(workdir)
    starters = {
        "nginx": lambda: start_nginx(workdir, mock.port, 1),
        "teeproxy-1w": lambda: start_teeproxy("teeproxy-1w", workdir, mock.port, 1, True),
        "teeproxy-2w": lambda: start_teeproxy("teeproxy-2w", workdir, mock.port, 2, True),
        "teeproxy-1w-nometer": lambda: start_teeproxy("teeproxy-1w-nometer", workdir, mock.port, 1, False),
        "litellm": lambda: start_litellm(workdir, mock.port),
    }
    names = ["direct", *[n for n in starters if not plan.targets or n in plan.targets]]
    targets: dict[str, Target] = {"direct": Target("direct", port=mock.port, proc=None)}
    notes: dict[str, str] = {}
    samples: dict[str, dict[str, list[dict[str, float]]]] = {n: {} for n in names}
    try:
        for name in names[1:]:
            targets[name] = starters[name]()
            if targets[name].proc is None:
                notes[name] = targets[name].note
        live = [n for n in names if n == "direct" or targets[n].proc is not None]
        for rep in range(plan.reps):
            for name in live:
                target = targets[name]
                cpu_pid = mock.pid if name == "direct" else target.pid
                print(f"rep {rep + 1}/{plan.reps} {name}", file=sys.stderr, flush=True)
                samples[name].setdefault("ttfb", []).append(measure_ttfb(target, plan.ttfb_requests))
                for c in plan.concurrencies:
                    samples[name].setdefault(f"c{c}", []).append(
                        measure_throughput(target, c, plan.throughput_s, cpu_pid)
                    )
        # Memory under many slow streams: once per target (it is a level, not a rate).
        for name in live:
            if name == "direct":
                continue
            for count in plan.slow_counts:
                target = targets[name]
                # One process cannot hold 2 x 10,000 sockets under this machine's fd limit: use 2 workers there.
                if 2 * count + 100 > fd_limit and name not in ("teeproxy-2w",):
                    notes[f"{name}/slow{count}"] = f"skipped: needs {2 * count} fds in one process, limit {fd_limit}"
                    continue
                print(f"slow {count} {name}", file=sys.stderr, flush=True)
                samples[name].setdefault(f"slow{count}", []).append(measure_slow(target, count, plan.slow_chunks))
    finally:
        for target in targets.values():
            target.stop()
        mock.stop()
    results = {name: {scenario: median_of(runs) for scenario, runs in by.items()} for name, by in samples.items()}
    return {
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
            "fd_limit": fd_limit,
        },
        "plan": plan.__dict__,
        "results": results,
        "notes": notes,
    }


def ratio(a: float, b: float) -> str:
    if not (a == a and b == b) or b == 0:
        return "-"
    return f"{a / b:.2f}x"


def fmt(value: float, digits: int = 1) -> str:
    return "-" if value != value else f"{value:,.{digits}f}"


def markdown(report: dict[str, Any], command: str) -> str:
    res = report["results"]
    names = list(res)
    m = report["machine"]
    lines = [
        f"Command: `{command}` — {m['cpus']} cores shared by the mock upstream, the load generator and the target; "
        f"Python {m['python']}; medians of {report['plan']['reps']} interleaved repetitions.",
        "",
        "| target | TTFB p50 ms | added p50 ms | TTFB p99 ms | added p99 ms |",
        "|---|---|---|---|---|",
    ]
    direct = res.get("direct", {}).get("ttfb", {})
    for name in names:
        t = res[name].get("ttfb", {})
        if not t:
            continue
        lines.append(
            f"| {name} | {fmt(t['ttfb_p50_ms'], 3)} | {fmt(t['ttfb_p50_ms'] - direct.get('ttfb_p50_ms', 0), 3)} | "
            f"{fmt(t['ttfb_p99_ms'], 3)} | {fmt(t['ttfb_p99_ms'] - direct.get('ttfb_p99_ms', 0), 3)} |"
        )
    for c in report["plan"]["concurrencies"]:
        key = f"c{c}"
        lines += [
            "",
            f"Concurrency {c}, 100 chunks of 200 B per stream, no delay:",
            "",
            "| target | streams/s | chunks/s | vs direct | vs nginx | CPU µs/chunk | CPU vs nginx | max gap p99 ms |",
            "|---|---|---|---|---|---|---|---|",
        ]
        d = res.get("direct", {}).get(key, {})
        n = res.get("nginx", {}).get(key, {})
        for name in names:
            r = res[name].get(key)
            if not r:
                continue
            lines.append(
                f"| {name} | {fmt(r['streams_per_s'])} | {fmt(r['chunks_per_s'], 0)} | "
                f"{ratio(r['chunks_per_s'], d.get('chunks_per_s', float('nan')))} | "
                f"{ratio(r['chunks_per_s'], n.get('chunks_per_s', float('nan')))} | {fmt(r['cpu_us_per_chunk'])} | "
                f"{ratio(r['cpu_us_per_chunk'], n.get('cpu_us_per_chunk', float('nan')))} | "
                f"{fmt(r['max_gap_p99_ms'])} |"
            )
    slow_keys = [f"slow{c}" for c in report["plan"]["slow_counts"]]
    lines += [
        "",
        f"Slow streams (one 200 B chunk per 50 ms, {report['plan']['slow_chunks']} chunks), all open at once:",
        "",
        "| target | streams | completed | idle RSS MiB | peak RSS MiB | RSS per stream KiB | max gap p99 ms |",
        "|---|---|---|---|---|---|---|",
    ]
    for name in names:
        for key in slow_keys:
            r = res[name].get(key)
            if r:
                lines.append(
                    f"| {name} | {key[4:]} | {int(r['completed'])} | {fmt(r['idle_rss_mib'])} | "
                    f"{fmt(r['peak_rss_mib'])} | {fmt(r['rss_per_stream_kib'])} | {fmt(r['max_gap_p99_ms'])} |"
                )
    on = res.get("teeproxy-1w", {}).get("c50", {})
    off = res.get("teeproxy-1w-nometer", {}).get("c50", {})
    if on and off:
        extra = on["cpu_us_per_chunk"] / off["cpu_us_per_chunk"] - 1
        lines += [
            "",
            f"Metering on vs off (1 worker, concurrency 50): {fmt(on['cpu_us_per_chunk'])} vs "
            f"{fmt(off['cpu_us_per_chunk'])} CPU µs per chunk, {extra * 100:+.1f} %.",
        ]
    if report["notes"]:
        lines += ["", "Notes: " + "; ".join(f"{k}: {v}" for k, v in report["notes"].items())]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a smoke run of about a minute")
    parser.add_argument("--targets", nargs="*", default=[], help="a subset of targets (direct always runs)")
    parser.add_argument("--reps", type=int)
    parser.add_argument("--out", type=pathlib.Path, default=RESULTS)
    args = parser.parse_args(argv)
    plan = QUICK if args.quick else FULL
    plan.targets = args.targets
    if args.reps:
        plan.reps = args.reps
    with tempfile.TemporaryDirectory(prefix="teeproxy-bench-") as tmp:
        workdir = pathlib.Path(tmp)
        os.chmod(workdir, 0o755)
        report = run(plan, workdir)
    command = "make bench-quick" if args.quick else "make bench"
    args.out.mkdir(parents=True, exist_ok=True)
    stem = "quick" if args.quick else "latest"
    (args.out / f"{stem}.json").write_text(json.dumps(report, indent=2) + "\n")
    table = markdown(report, command)
    (args.out / f"{stem}.md").write_text(table)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
