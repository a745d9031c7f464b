"""The processes the benchmark measures, and what /proc says they cost.

Every target is a process tree of its own, started in a new session on 127.0.0.1 and stopped by signalling
that session (its process group) and nothing else. Costs are read from /proc for the whole tree — hypercorn
with `--workers 2` and nginx each run a parent and worker children, and a figure for the parent alone would
miss nearly all the work:

- CPU: time on CPU of every thread of every process in the tree, from /proc/PID/task/TID/schedstat (the
  scheduler's own nanosecond count). /proc/PID/stat's utime + stime says the same to within sampling error,
  but in ticks sampled 250 times a second, too coarse for short runs; it is the fallback.
- Memory: VmRSS summed over the tree, sampled while a scenario runs (the simultaneous peak), and VmHWM summed
  (each process's own high-water mark; an upper bound of the simultaneous peak).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import pathlib
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

ROOT = pathlib.Path(__file__).resolve().parent.parent
CLK_TCK = os.sysconf("SC_CLK_TCK")
TEEPROXY_KEY = "tp-bench-key"
LITELLM_VENV = ROOT / "bench" / ".litellm-venv"
PORTKEY_DIR = ROOT / "bench" / ".portkey"
PORTKEY_SERVER = PORTKEY_DIR / "node_modules" / "@portkey-ai" / "gateway" / "build" / "start-server.js"
STOP_TIMEOUT_S = 30.0
# The commit before the work on issue 10 began: `teeproxy-baseline` runs it, side by side with today's teeproxy.
BASELINE_AT = "e9a9406"
BASELINE = "teeproxy-baseline"
SCRAPE_TIMEOUT_S = 10.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def process_tree(pid: int) -> list[int]:
    """pid and all its descendants, from /proc."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = pathlib.Path(f"/proc/{entry}/stat").read_bytes()
            except OSError:
                continue
            ppid = int(stat[stat.rindex(b")") + 2 :].split()[1])
            children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def cpu_seconds(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        try:
            tasks = os.listdir(f"/proc/{pid}/task")
            total += (
                sum(int(pathlib.Path(f"/proc/{pid}/task/{tid}/schedstat").read_bytes().split()[0]) for tid in tasks)
                / 1e9
            )
        except FileNotFoundError:
            continue  # the process has gone
        except (OSError, ValueError, IndexError):
            with contextlib.suppress(OSError):
                fields = pathlib.Path(f"/proc/{pid}/stat").read_bytes().rsplit(b")", 1)[1].split()
                total += (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime
    return total


def memory_kib(pids: list[int]) -> tuple[int, int]:
    """(sum of VmRSS, sum of VmHWM) in KiB."""
    rss = hwm = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            for line in pathlib.Path(f"/proc/{pid}/status").read_bytes().splitlines():
                if line.startswith(b"VmRSS:"):
                    rss += int(line.split()[1])
                elif line.startswith(b"VmHWM:"):
                    hwm += int(line.split()[1])
    return rss, hwm


def wait_port(port: int, proc: subprocess.Popen[bytes], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"exited with status {proc.returncode}")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"not listening after {timeout_s:.0f} s")


class NotAvailable(Exception):
    """The target's software is not installed here, or it would not start; the message says which."""


@dataclass
class Target:
    """One thing to send load to: a name, how to start it, and the process tree while it runs."""

    name: str
    launch: Callable[[Target], list[str]] | None  # None: the mock itself, not started here
    workers: int = 1
    key: str | None = None
    start_timeout_s: float = 30.0
    port: int = 0
    proc: subprocess.Popen[bytes] | None = None
    pids: list[int] = field(default_factory=list)
    log: pathlib.Path | None = None
    env: dict[str, str] = field(default_factory=dict)
    headers: list[str] = field(default_factory=list)  # extra request headers, "name: value"
    cwd: pathlib.Path = ROOT  # where the process starts (`python -m` imports the package found there first)

    def start(self) -> None:
        assert self.launch is not None
        self.port = free_port()
        cmd = self.launch(self)
        out = self.log.open("ab") if self.log else subprocess.DEVNULL
        try:
            self.proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                cwd=self.cwd,
                env={**os.environ, **self.env},
            )
        finally:
            if self.log:
                out.close()  # type: ignore[union-attr]
        try:
            wait_port(self.port, self.proc, self.start_timeout_s)
        except RuntimeError as exc:
            self.stop()
            raise NotAvailable(f"failed to start: {exc}{self._log_tail()}") from None
        self.refresh_pids()

    def refresh_pids(self) -> None:
        """Look the tree up again (hypercorn's workers come up after the parent listens)."""
        assert self.proc is not None
        self.pids = process_tree(self.proc.pid)

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        # SIGINT is hypercorn's graceful stop; nginx and uvicorn stop on SIGTERM.
        os.killpg(proc.pid, signal.SIGINT if self.name.startswith("teeproxy") else signal.SIGTERM)
        try:
            proc.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)

    def _log_tail(self) -> str:
        if self.log is None or not self.log.exists():
            return ""
        lines = [line for line in self.log.read_text(errors="replace").splitlines() if line.strip()]
        return f" ({lines[-1].strip()[:200]})" if lines else ""


def mock(workdir: pathlib.Path) -> Target:
    def launch(target: Target) -> list[str]:
        return [sys.executable, "-m", "bench.mock_upstream", "--port", str(target.port)]

    return Target("mock", launch, log=workdir / "mock.log")


def nginx_binary() -> str | None:
    return shutil.which("nginx") or ("/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else None)


def nginx(workdir: pathlib.Path, upstream_port: int, workers: int) -> Target:
    binary = nginx_binary()
    if binary is None:
        raise NotAvailable("not installed (Debian package `nginx`)")
    prefix = workdir / f"nginx-{workers}w"
    prefix.mkdir(exist_ok=True)
    os.chmod(prefix, 0o777)  # its workers run as an unprivileged user when started as root

    def launch(target: Target) -> list[str]:
        values = {"workers": workers, "prefix": prefix, "upstream_port": upstream_port, "listen_port": target.port}
        conf = (ROOT / "bench" / "nginx-sse.conf.template").read_text()
        for name, value in values.items():
            conf = conf.replace("{" + name + "}", str(value))
        (prefix / "nginx.conf").write_text(conf)
        return [binary, "-p", str(prefix), "-c", str(prefix / "nginx.conf"), "-e", "stderr", "-g", "daemon off;"]

    name = "nginx" if workers == 1 else f"nginx-{workers}w"
    return Target(name, launch, workers=workers, log=workdir / f"{name}.log")


def teeproxy_config(workdir: pathlib.Path, upstream_port: int, metering: bool, tag: str | None = None) -> pathlib.Path:
    digest = hashlib.sha256(TEEPROXY_KEY.encode()).hexdigest()
    tag = tag or ("on" if metering else "off")
    path = workdir / f"teeproxy-{tag}.toml"
    path.write_text(
        f"""\
[metering]
enabled = {"true" if metering else "false"}

[ledger]
path = "{workdir}/ledger-{tag}.db"

[[providers]]
name = "mock"
dialect = "openai"
base_url = "http://127.0.0.1:{upstream_port}/v1"

[[routes]]
models = ["*"]
providers = ["mock"]

[[keys]]
name = "bench"
sha256 = "{digest}"
"""
    )
    return path


def teeproxy(workdir: pathlib.Path, upstream_port: int, workers: int, metering: bool) -> Target:
    config = teeproxy_config(workdir, upstream_port, metering)

    def launch(target: Target) -> list[str]:
        bind = f"127.0.0.1:{target.port}"
        return [
            sys.executable,
            "-m",
            "proxy",
            "serve",
            "--config",
            str(config),
            "--bind",
            bind,
            "--workers",
            str(workers),
        ]

    name = f"teeproxy-{workers}w" + ("" if metering else "-nometer")
    return Target(name, launch, workers=workers, key=TEEPROXY_KEY, log=workdir / f"{name}.log")


def teeproxy_baseline(workdir: pathlib.Path, upstream_port: int, commit: str = BASELINE_AT) -> Target:
    """teeproxy as it was at `commit` (1 worker, metered), from `git archive` of this checkout's history, on the
    same interpreter and packages: the "CPU per request halved" goal's baseline, measured in the same run as what
    it is compared with instead of a figure recorded on another day (and maybe another machine)."""
    source = workdir / f"teeproxy-{commit}"
    if not source.exists():
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", commit], capture_output=True, check=False)
        if archive.returncode != 0:
            why = archive.stderr.decode(errors="replace").strip().splitlines()
            raise NotAvailable(f"{commit} is not in this checkout's history ({why[-1] if why else 'git failed'})")
        source.mkdir()
        subprocess.run(["tar", "-x", "-C", str(source)], input=archive.stdout, check=True)
    # Its own ledger file: the schema of the day may not be today's.
    config = teeproxy_config(workdir, upstream_port, metering=True, tag=commit)

    def launch(target: Target) -> list[str]:
        bind = f"127.0.0.1:{target.port}"
        return [sys.executable, "-m", "proxy", "serve", "--config", str(config), "--bind", bind, "--workers", "1"]

    return Target(
        BASELINE, launch, key=TEEPROXY_KEY, log=workdir / f"{BASELINE}.log", cwd=source, env={"PYTHONPATH": str(source)}
    )


def litellm(workdir: pathlib.Path, upstream_port: int) -> Target:
    exe = LITELLM_VENV / "bin" / "litellm"
    if not exe.exists():
        raise NotAvailable("not installed (`pip install 'litellm[proxy]'` into bench/.litellm-venv failed or not run)")
    key = "sk-bench-" + hashlib.sha256(b"litellm-bench").hexdigest()[:32]
    config = workdir / "litellm.yaml"
    config.write_text(
        "model_list:\n"
        "  - model_name: gpt-4o-mini\n"
        "    litellm_params:\n"
        "      model: openai/gpt-4o-mini\n"
        f"      api_base: http://127.0.0.1:{upstream_port}/v1\n"
        "      api_key: sk-mock\n"
        "general_settings:\n"
        f"  master_key: {key}\n"
        "litellm_settings:\n"
        "  drop_params: true\n"
        "  telemetry: false\n"
    )

    def launch(target: Target) -> list[str]:
        return [str(exe), "--config", str(config), "--host", "127.0.0.1", "--port", str(target.port)]

    # No network here but 127.0.0.1: keep it from fetching its model-cost map at start-up.
    env = {"LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_LOG": "ERROR", "LITELLM_TELEMETRY": "False"}
    return Target("litellm", launch, key=key, start_timeout_s=180, log=workdir / "litellm.log", env=env)


def protocol_relay(workdir: pathlib.Path, upstream_port: int) -> Target:
    """The Python floor (bench/protocol_relay.py): bytes both ways, no HTTP."""

    def launch(target: Target) -> list[str]:
        return [
            sys.executable,
            "-m",
            "bench.protocol_relay",
            "--port",
            str(target.port),
            "--upstream-port",
            str(upstream_port),
        ]

    return Target("protocol-relay", launch, log=workdir / "protocol-relay.log")


def hypercorn_relay(workdir: pathlib.Path, upstream_port: int) -> Target:
    """The floor on teeproxy's own stack (bench/hypercorn_relay.py): raw ASGI on hypercorn, no gateway work."""

    def launch(target: Target) -> list[str]:
        return [
            sys.executable,
            "-m",
            "bench.hypercorn_relay",
            "--port",
            str(target.port),
            "--upstream-port",
            str(upstream_port),
        ]

    return Target("hypercorn-relay", launch, log=workdir / "hypercorn-relay.log")


def portkey(workdir: pathlib.Path, upstream_port: int) -> Target:
    """Portkey's gateway (npm `@portkey-ai/gateway`, installed into bench/.portkey by bench/install-portkey.sh).

    It has no upstream configuration of its own: each request names the provider and, with
    `x-portkey-custom-host`, the base URL; the bearer token is passed on as the provider's key. Its start
    script listens on every interface and has no option for the address, so bench/portkey-loopback.mjs is
    preloaded to make an address-less listen() bind 127.0.0.1.
    """
    node = shutil.which("node")
    if node is None or not PORTKEY_SERVER.exists():
        raise NotAvailable("not installed (`bash bench/install-portkey.sh`: npm into bench/.portkey failed or not run)")
    preload = ROOT / "bench" / "portkey-loopback.mjs"

    def launch(target: Target) -> list[str]:
        return [node, "--import", str(preload), str(PORTKEY_SERVER), f"--port={target.port}", "--headless"]

    headers = ["x-portkey-provider: openai", f"x-portkey-custom-host: http://127.0.0.1:{upstream_port}/v1"]
    env = {"NODE_ENV": "production"}
    return Target("portkey", launch, key="sk-mock", log=workdir / "portkey.log", env=env, headers=headers)


def scrape(port: int, path: str = "/metrics") -> str | None:
    """GET a target's metrics page over a plain HTTP/1.1 connection; None if it has none or does not answer."""
    request = f"GET {path} HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\nconnection: close\r\n\r\n".encode()
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=SCRAPE_TIMEOUT_S) as sock:
            sock.sendall(request)
            chunks = []
            while chunk := sock.recv(65536):
                chunks.append(chunk)
    except OSError:
        return None
    head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
    if not head.startswith((b"HTTP/1.1 200", b"HTTP/1.0 200")):
        return None
    if b"transfer-encoding: chunked" in head.lower():
        body = _dechunk(body)
    return body.decode(errors="replace")


def _dechunk(body: bytes) -> bytes:
    out = []
    while body:
        size_line, _, rest = body.partition(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            break
        out.append(rest[:size])
        body = rest[size + 2 :]
    return b"".join(out)
