"""`make soak`: many streams through a real `teeproxy serve` with faults on both sides, then the ledger audit.

Three processes besides this one, each in its own session on 127.0.0.1 and ended by its own process group id:
the fault-injecting upstream (`bench.fault_upstream`), `python -m proxy serve --workers 2` with a config written
to a temporary directory (two providers per route, so failover happens; short timeouts; the ledger a SQLite file
there), and the clients (`bench.soak_client`). The streams mix the four dialects (OpenAI chat streamed and not,
Responses, Anthropic, Gemini SSE, JSON array and generateContent, Bedrock ConverseStream and Converse), and draw
an upstream fault for each attempt and a client behaviour for each stream, all from the seed: stream n of a seed
is the same every time, and `--only n,...` replays just those.

After the clients are done the proxy is stopped as Ctrl-C stops it (its ledger is flushed then), and
`bench.soak_report` audits: did every request the upstream saw get exactly one ledger record? Requests are
matched by id: the client sets `x-teeproxy-request-id: soak-<seed>-<n>` (the record's `request_id`) and puts the
same id in the body, where the upstream reads it (the proxy keeps `x-teeproxy-*` request headers to itself).
Also counted: worker crashes, tracebacks in the proxy's log, and the peak RSS of its process tree (VmRSS summed,
sampled every `SAMPLE_EVERY_S`). `--interrupt-after-s` Ctrl-Cs the proxy mid-run instead: a shutdown under load,
after which the same audit holds (records of streams cut by the shutdown included).

Exit status 1 when a record is missing or duplicated, a worker crashed, the log holds a traceback, or a client
got bytes that another stream's upstream sent (a response desync on a pooled upstream connection).

    python -m bench.soak                       # 100,000 streams or 15 minutes, whichever ends first
    python -m bench.soak --quick --json        # 500 streams, well under a minute (tests/test_soak_smoke.py)
    SOAK_STREAMS=20000 SOAK_TIME_LIMIT_S=600 make soak
    python -m bench.soak --seed 1 --only 183,449   # replay two streams of seed 1
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from typing import Any

from bench.soak_client import REQUEST_TIMEOUT_S
from bench.soak_report import audit, failed, render
from bench.targets import ROOT, free_port, memory_kib, process_tree, wait_port

KEY = "tp-soak-key"
UPSTREAM_KEY_ENV = "SOAK_UPSTREAM_KEY"
WORKERS = 2
# The proxy's timeouts in the soak config, and the upstream's stalls just past them.
FIRST_BYTE_TIMEOUT_S = 2.0
READ_TIMEOUT_S = 2.0
STALL_HEAD_S = FIRST_BYTE_TIMEOUT_S + 0.5
STALL_BODY_S = READ_TIMEOUT_S + 1.5
SAMPLE_EVERY_S = 0.5
STOP_TIMEOUT_S = 60.0
DIALECTS = {"openai": "gpt-*", "anthropic": "claude-*", "gemini": "gemini-*", "bedrock": "anthropic.*"}


def _env_number(name: str, default: float) -> float:
    value = os.environ.get(name)
    return float(value) if value else default


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__.split("\n\n")[0])
    parser.add_argument("--streams", type=int, default=int(_env_number("SOAK_STREAMS", 100_000)))
    parser.add_argument(
        "--time-limit-s",
        type=float,
        default=_env_number("SOAK_TIME_LIMIT_S", 900.0),
        help="no new stream starts after this long",
    )
    parser.add_argument("--concurrency", type=int, default=int(_env_number("SOAK_CONCURRENCY", 128)))
    parser.add_argument("--seed", type=int, default=int(_env_number("SOAK_SEED", 1)))
    parser.add_argument("--quick", action="store_true", help="500 streams, 40 s at most: the CI smoke run")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--only", default=None, help="run just these streams of the seed's plan (n,n,...): a replay")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (kept anyway on failure)")
    parser.add_argument(
        "--interrupt-after-s",
        type=float,
        default=None,
        help="Ctrl-C the proxy this long into the run, streams still in flight (a shutdown under load)",
    )
    args = parser.parse_args(argv)
    if args.only:
        args.streams = len(args.only.split(","))
    if args.quick:
        args.streams, args.time_limit_s, args.concurrency = min(args.streams, 500), min(args.time_limit_s, 40.0), 64
    return args


def write_config(workdir: pathlib.Path, upstream_port: int) -> pathlib.Path:
    digest = hashlib.sha256(KEY.encode()).hexdigest()
    blocks = [
        f"""\
[server]
keepalive_ping_s = 1.0
graceful_timeout_s = 10.0
body_timeout_s = 10.0

[ledger]
path = "{workdir / "ledger.db"}"

[retry]
backoff_initial_s = 0.05
backoff_max_s = 0.5
retry_after_cap_s = 2.5

[[keys]]
name = "soak"
sha256 = "{digest}"
"""
    ]
    for dialect, models in DIALECTS.items():
        names = [f"{dialect}-a", f"{dialect}-b"]
        for name in names:
            base = f"http://127.0.0.1:{upstream_port}/{name}" + ("/v1" if dialect == "openai" else "")
            region = 'region = "us-east-1"\n' if dialect == "bedrock" else ""
            blocks.append(
                f'[[providers]]\nname = "{name}"\ndialect = "{dialect}"\nbase_url = "{base}"\n'
                f'api_key_env = "{UPSTREAM_KEY_ENV}"\n{region}connect_timeout_s = 2.0\n'
                f"read_timeout_s = {READ_TIMEOUT_S}\nfirst_byte_timeout_s = {FIRST_BYTE_TIMEOUT_S}\n"
            )
        extra = {"anthropic": "gate_first_chunk = true\n", "gemini": "max_attempts = 3\n"}.get(dialect, "")
        blocks.append(f'[[routes]]\nmodels = ["{models}"]\nproviders = {json.dumps(names)}\n{extra}')
    path = workdir / "teeproxy.toml"
    path.write_text("\n".join(blocks))
    return path


class Process:
    """A child in a session of its own, stopped by signalling its process group (and nothing else)."""

    def __init__(self, cmd: list[str], log: pathlib.Path, env: dict[str, str] | None = None) -> None:
        with log.open("wb") as out:
            self.proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                cwd=ROOT,
                env={**os.environ, **(env or {})},
            )

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = STOP_TIMEOUT_S) -> int | None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        return self.proc.returncode


class TreeWatch(threading.Thread):
    """Samples the proxy's process tree: the peak of VmRSS summed over it, and every worker pid ever seen (a
    worker that dies is replaced by hypercorn with a new pid, or ends the server)."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.peak_rss_kib = 0
        self.workers: set[int] = set()
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.wait(SAMPLE_EVERY_S):
            self.sample()

    def sample(self) -> None:
        pids = process_tree(self.pid)
        self.peak_rss_kib = max(self.peak_rss_kib, memory_kib(pids)[0])
        for pid in pids[1:]:
            try:
                cmdline = pathlib.Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                continue
            if b"spawn_main" in cmdline:
                self.workers.add(pid)


def wait_healthy(port: int, proc: subprocess.Popen[bytes], timeout_s: float = 30.0) -> None:
    wait_port(port, proc, timeout_s)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as reply:
                if reply.status == 200:
                    return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError("teeproxy did not answer /healthz")


def run(args: argparse.Namespace, workdir: pathlib.Path) -> dict[str, Any]:
    python = sys.executable
    upstream_port, proxy_port = free_port(), free_port()
    upstream = Process(
        [python, "-m", "bench.fault_upstream", "--port", str(upstream_port), "--seed", str(args.seed)]
        + ["--stall-head-s", str(STALL_HEAD_S), "--stall-body-s", str(STALL_BODY_S)],
        workdir / "upstream.log",
    )
    proxy: Process | None = None
    watch: TreeWatch | None = None
    try:
        wait_port(upstream_port, upstream.proc, 30)
        config = write_config(workdir, upstream_port)
        proxy = Process(
            [python, "-m", "proxy", "serve", "--config", str(config), "--bind", f"127.0.0.1:{proxy_port}"]
            + ["--workers", str(WORKERS)],
            workdir / "proxy.log",
            env={UPSTREAM_KEY_ENV: "sk-soak-upstream", "PYTHONUNBUFFERED": "1"},
        )
        wait_healthy(proxy_port, proxy.proc)
        watch = TreeWatch(proxy.proc.pid)
        watch.sample()
        watch.start()
        started = time.monotonic()
        interrupt = None
        if args.interrupt_after_s is not None:
            interrupt = threading.Timer(args.interrupt_after_s, proxy.stop, (signal.SIGINT,))
            interrupt.start()
        client = subprocess.run(
            [python, "-m", "bench.soak_client", "--port", str(proxy_port), "--key", KEY]
            + ["--streams", str(args.streams), "--time-limit-s", str(args.time_limit_s)]
            + ["--concurrency", str(args.concurrency), "--seed", str(args.seed)]
            + ["--log", str(workdir / "streams.jsonl")]
            + (["--only", args.only] if args.only else []),
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            timeout=args.time_limit_s + REQUEST_TIMEOUT_S + 60,
            check=False,
        )
        elapsed_s = time.monotonic() - started
        if interrupt is not None:
            interrupt.join()
        if client.returncode != 0:
            raise RuntimeError(f"the soak clients failed with status {client.returncode}")
        clients = json.loads(client.stdout.decode().strip().splitlines()[-1])
        alive_at_end = proxy.proc.poll() is None or interrupt is not None
        watch.sample()
        watch.halt.set()
        watch.join(5)
        proxy_status = proxy.stop(signal.SIGINT)  # Ctrl-C: graceful, and the ledger is flushed
        with urllib.request.urlopen(f"http://127.0.0.1:{upstream_port}/__soak/stats", timeout=30) as reply:
            seen = json.loads(reply.read())
    finally:
        if watch is not None:
            watch.halt.set()
        if proxy is not None:
            proxy.stop(signal.SIGINT)
        upstream.stop()
    return audit(
        args,
        workdir,
        clients,
        seen,
        elapsed_s=elapsed_s,
        peak_rss_kib=watch.peak_rss_kib,
        workers_seen=len(watch.workers),
        workers=WORKERS,
        alive_at_end=alive_at_end,
        proxy_status=proxy_status,
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    workdir = pathlib.Path(tempfile.mkdtemp(prefix="teeproxy-soak-"))
    try:
        report = run(args, workdir)
    except Exception:
        print(f"soak: the harness failed; work directory kept: {workdir}", file=sys.stderr)
        raise
    problems = failed(report)
    print(json.dumps(report, indent=2) if args.json else render(report), flush=True)
    if not problems and not args.keep:
        shutil.rmtree(workdir, ignore_errors=True)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
