"""Streaming load with locust, as a user runs it: `locust -f bench/locustfile_sse.py` against `teeproxy serve`
with the shipped config and its demo upstream, for each dialect; incomplete streams counted as failures; and
`make load`, which starts its own teeproxy and stops it afterwards."""

from __future__ import annotations

import os
import pathlib
import re
import socket
import subprocess
import sys
from collections.abc import Iterator

import pytest

from tests.servers import CLIENT_KEY, Script, Stack, free_port, start_stack
from tests.test_cli import Served, wait_until_serving

ROOT = pathlib.Path(__file__).resolve().parent.parent
LOCUST = pathlib.Path(sys.executable).parent / "locust"
LOCUSTFILE = ROOT / "bench" / "locustfile_sse.py"
# One row of the summary's first table: type, name, # reqs, # fails(percent).
ROW = re.compile(r"^(STREAM|TTFC|GAP|\s*)\s+(\S+)\s+(\d+)\s+(\d+)\(", re.M)


def demo_config(tmp_path: pathlib.Path) -> pathlib.Path:
    """The shipped config with its ledger in tmp_path and the demo sped up tenfold (short streams, many of them)."""
    text = (ROOT / "config" / "teeproxy.toml").read_text()
    for old, new in [
        ('path = "teeproxy-ledger.db"', f'path = "{tmp_path / "ledger.db"}"'),
        ("tokens_per_s = 40", "tokens_per_s = 400"),
    ]:
        assert text.count(old) == 1, old
        text = text.replace(old, new)
    path = tmp_path / "teeproxy.toml"
    path.write_text(text)
    return path


def without_provider_keys() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.endswith("_API_KEY") and not k.startswith("LOAD_")}


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """`teeproxy serve` with the shipped config and no provider key: every dialect from the demo upstream."""
    tmp = tmp_path_factory.mktemp("load")
    port = free_port()
    env = without_provider_keys()
    with open(tmp / "serve.log", "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "proxy", "serve", "--config", str(demo_config(tmp)), "--bind", f"127.0.0.1:{port}"],
            cwd=tmp,
            env=env,
            stdout=log,
            stderr=log,
            start_new_session=True,
        )
    served = Served(proc, port, tmp)
    try:
        wait_until_serving(port, proc)
        yield served
    finally:
        served.stop()


def locust(host: str, seconds: int, users: int, **env: str) -> subprocess.CompletedProcess[str]:
    command = [str(LOCUST), "-f", str(LOCUSTFILE), "--headless", "-u", str(users), "-r", str(users)]
    return subprocess.run(
        [*command, "-t", f"{seconds}s", "--host", host, "--only-summary"],
        cwd=ROOT,
        env={**without_provider_keys(), **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def summary(output: str) -> dict[str, tuple[int, int]]:
    """{"STREAM openai": (requests, failures), ..., "Aggregated": (...)} from locust's closing table."""
    rows: dict[str, tuple[int, int]] = {}
    for kind, name, requests, failures in ROW.findall(output):
        rows[f"{kind.strip()} {name}".strip()] = (int(requests), int(failures))
    return rows


@pytest.mark.parametrize("dialect", ["openai", "anthropic", "gemini", "bedrock"])
def test_locust_streams_each_dialect_from_the_demo(demo: Served, dialect: str) -> None:
    """5 users for a few seconds: streams complete, with their end event, and the summary says so."""
    done = locust(f"http://127.0.0.1:{demo.port}", seconds=3, users=5, LOAD_DIALECT=dialect)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-3000:]
    rows = summary(output)
    streams, failures = rows[f"STREAM {dialect}"]
    assert streams >= 5 and failures == 0, output[-3000:]
    # Every complete stream has its time to first chunk and its largest gap (streams cut by the end of the run
    # may add one each, with failures then, so those rows are at least as many as the successful streams).
    assert rows[f"TTFC {dialect}"][0] >= streams - 5 and rows[f"GAP {dialect}"][0] >= streams - 5
    assert rows["Aggregated"][1] == 0


@pytest.fixture
def stack(tmp_path: pathlib.Path) -> Iterator[Stack]:
    yield from start_stack(tmp_path)


@pytest.mark.parametrize(
    ("script", "why"),
    [
        (Script(body=b'data: {"choices": []}\n\n'), "without its end event"),
        (
            Script(body=b'data: {"choices": []}\n\n' * 50 + b"data: [DONE]\n\n", chunk_sizes=[22], cut_after=100),
            "in-stream error",
        ),
    ],
    ids=["no-done", "upstream-cut"],
)
def test_incomplete_streams_are_failures(stack: Stack, script: Script, why: str) -> None:
    """A stream without `data: [DONE]` (or one cut short, which teeproxy ends with an in-stream error) is a
    failure in locust's summary and its exit code, however fine its HTTP status was."""
    stack.upstream.script = script
    done = locust(stack.url, seconds=1, users=1, TEEPROXY_API_KEY=CLIENT_KEY)
    output = done.stdout + done.stderr
    assert done.returncode == 1, output[-3000:]
    streams, failures = summary(output)["STREAM openai"]
    assert streams > 0 and failures == streams
    assert why in output


def test_make_load_starts_its_own_proxy_and_stops_it(tmp_path: pathlib.Path) -> None:
    """`make load` with no LOAD_HOST: a teeproxy on a free port with the shipped config's demo, a short run, the
    summary, and the teeproxy it started is gone afterwards."""
    done = subprocess.run(
        # -o: the venv is there already; make must not reinstall it because pyproject.toml is newer
        ["make", "-s", "-o", ".venv/.installed", "load", "LOAD_USERS=3", "LOAD_TIME=2s"]
        + [f"LOAD_CONFIG={demo_config(tmp_path)}"],
        cwd=ROOT,
        env=without_provider_keys(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-3000:]
    streams, failures = summary(output)["STREAM openai"]
    assert streams > 0 and failures == 0
    started = re.search(r"teeproxy \(pid (\d+)\) on http://127\.0\.0\.1:(\d+)", output)
    assert started, output[-3000:]
    pid, port = int(started.group(1)), int(started.group(2))
    assert not pathlib.Path(f"/proc/{pid}").exists()
    with socket.socket() as sock:
        assert sock.connect_ex(("127.0.0.1", port)) != 0
