"""The command line as a user runs it: `teeproxy serve` in a real process, `keys new`, config errors."""

from __future__ import annotations

import hashlib
import os
import pathlib
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import httpx
import pytest

from proxy.__main__ import main
from proxy.config import load_config, parse_config
from proxy.demo import DEMO_TEXT
from proxy.errors import ConfigError
from proxy.ledger import SQLiteBackend
from tests.servers import CLIENT_KEY, Script, proxy_config_text

ROOT = pathlib.Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_until_serving(port: int, proc: subprocess.Popen[bytes], timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"teeproxy exited early with {proc.returncode}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            time.sleep(0.05)
    raise AssertionError("teeproxy did not start serving")


class Served:
    """`python -m proxy serve` in its own process group, ended by its PID with SIGINT, as Ctrl-C would."""

    def __init__(self, proc: subprocess.Popen[bytes], port: int, workdir: pathlib.Path) -> None:
        self.proc, self.port, self.workdir = proc, port, workdir

    def stop(self) -> int:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGINT)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        return self.proc.returncode


@pytest.fixture
def serve_process(tmp_path: pathlib.Path) -> Iterator[Served]:
    """The shipped config with the demo upstream (no provider key in the environment), 2 workers."""
    port = free_port()
    config = tmp_path / "teeproxy.toml"
    text = (ROOT / "config" / "teeproxy.toml").read_text()
    text = text.replace('path = "teeproxy-ledger.db"', f'path = "{tmp_path / "ledger.db"}"')
    text = text.replace("tokens_per_s = 40", "tokens_per_s = 400")
    config.write_text(text)
    env = {k: v for k, v in os.environ.items() if k != "OPENAI_API_KEY"}
    env["TEEPROXY_CONFIG"] = str(config)
    with open(tmp_path / "serve.log", "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "proxy", "serve", "--bind", f"127.0.0.1:{port}", "--workers", "2"],
            cwd=tmp_path,
            env=env,
            stdout=log,
            stderr=log,
            start_new_session=True,
        )
    served = Served(proc, port, tmp_path)
    try:
        wait_until_serving(port, proc)
        yield served
    finally:
        served.stop()


def test_serve_with_two_workers_streams_from_demo_upstream(serve_process: Served) -> None:
    """The README's first example: no provider key set, so the demo upstream answers through the proxy;
    the record reaches the ledger by the time Ctrl-C has shut the proxy down."""
    import openai

    client = openai.OpenAI(base_url=f"http://127.0.0.1:{serve_process.port}/v1", api_key="tp-demo-key", max_retries=0)
    with client:
        stream = client.chat.completions.create(
            model="gpt-4o-mini",
            stream=True,
            messages=[{"role": "user", "content": "Hello"}],
        )
        text = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
    assert text.startswith("Hello from teeproxy's demo upstream!")
    serve_process.stop()
    [record] = SQLiteBackend(str(serve_process.workdir / "ledger.db")).query(None, None)
    assert (record.key_name, record.provider, record.model, record.outcome) == (
        "demo",
        "demo",
        "gpt-4o-mini",
        "completed",
    )
    assert record.usage_status == "reported" and record.output_tokens == len(DEMO_TEXT.split(" "))
    assert record.cost_status == "priced"


def test_keys_new_prints_a_key_and_its_block(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["keys", "new", "alice"]) == 0
    out = capsys.readouterr().out
    key = re.search(r"^(tp-\S+)$", out, re.M)
    digest = re.search(r'sha256 = "([0-9a-f]{64})"', out)
    assert key and digest and 'name = "alice"' in out
    assert hashlib.sha256(key.group(1).encode()).hexdigest() == digest.group(1)
    # The printed block pastes into a config as is.
    block = out[out.index("[[keys]]") :]
    config = parse_config(block)
    assert config.keys[0].name == "alice"


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("[server]\nbnid = '1'\n", "bnid"),
        ("[server]\nworkers = 'two'\n", "workers"),
        ("[[providers]]\nname = 'x'\nbase_url = 'ftp://x'\n", "base_url"),
        ("[[routes]]\nmodels = ['*']\nproviders = ['ghost']\n", "ghost"),
        ("[[keys]]\nname = 'k'\nsha256 = 'nothex'\n", "sha256"),
        ("[prices.'m']\ninput_per_mtok = 'cheap'\noutput_per_mtok = '1'\n", "input_per_mtok"),
        ("not = [toml\n", "TOML"),
    ],
)
def test_bad_config_stops_startup_naming_the_key(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str], text: str, named: str
) -> None:
    with pytest.raises(ConfigError, match=named):
        parse_config(text)
    path = tmp_path / "bad.toml"
    path.write_text(text)
    assert main(["serve", "--config", str(path)]) == 2
    assert named in capsys.readouterr().err


def test_config_from_environment(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "env.toml"
    path.write_text(proxy_config_text("http://127.0.0.1:9/v1", str(tmp_path / "l.db")))
    monkeypatch.setenv("TEEPROXY_CONFIG", str(path))
    assert load_config().providers[0].name == "replay"


def test_shipped_config_loads() -> None:
    config = load_config(ROOT / "config" / "teeproxy.toml")
    assert config.server.bind == "127.0.0.1:8080"
    assert config.providers[0].api_key_env == "OPENAI_API_KEY"
    assert config.demo.when_no_keys


def test_h2c_prior_knowledge_streams(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.servers import UPSTREAM_KEY_ENV, UPSTREAM_SECRET, start_stack

    monkeypatch.setenv(UPSTREAM_KEY_ENV, UPSTREAM_SECRET)
    for stack in start_stack(tmp_path):
        body = b'data: {"choices":[{"index":0,"delta":{"content":"hi"}}]}\n\ndata: [DONE]\n\n'
        stack.upstream.script = Script(body=body, chunk_sizes=[10])
        with (
            httpx.Client(http1=False, http2=True) as client,
            client.stream(
                "POST",
                stack.url + "/v1/chat/completions",
                json={"model": "gpt-4o", "stream": True, "stream_options": {"include_usage": True}},
                headers={"authorization": f"Bearer {CLIENT_KEY}"},
            ) as response,
        ):
            assert response.http_version == "HTTP/2"
            assert b"".join(response.iter_raw()) == body
            assert response.headers["x-teeproxy-provider"] == "replay"


def readme_examples() -> tuple[list[str], str]:
    """The README's curl commands (continuation lines joined) and its OpenAI-SDK example, as written there."""
    readme = (ROOT / "README.md").read_text()
    consoles = re.findall(r"```console\n(.*?)```", readme, re.S)
    curls = [
        re.sub(r"\\\n\s*", "", block).removeprefix("$ ").strip() for block in consoles if block.startswith("$ curl")
    ]
    [python] = re.findall(r"```python\n(.*?)```", readme, re.S)[:1]
    return curls, python


def test_readme_examples_work_as_written(serve_process: Served) -> None:
    """Issue 2's 'done when': a newcomer runs `make run` and pastes the README's curl and SDK examples."""
    curls, python = readme_examples()
    assert len(curls) == 2 and all("127.0.0.1:8080" in c for c in curls)
    here = f"127.0.0.1:{serve_process.port}"

    streamed = subprocess.run(["bash", "-c", curls[0].replace("127.0.0.1:8080", here)], capture_output=True, timeout=30)
    assert streamed.returncode == 0, streamed.stderr
    frames = [f for f in streamed.stdout.split(b"\n\n") if f]
    assert frames[-1] == b"data: [DONE]" and len(frames) > 3
    assert sum(b'"delta":{"content":' in f for f in frames) > 3 and b'{"content":" upstream!"}' in b"".join(frames)

    with_trailers = subprocess.run(
        ["bash", "-c", curls[1].replace("127.0.0.1:8080", here)], capture_output=True, timeout=30
    )
    head, _, rest = with_trailers.stdout.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200") and b"trailer: x-teeproxy-input-tokens" in head.lower()
    body, _, trailers = rest.rpartition(b"data: [DONE]\n\n")
    assert b"x-teeproxy-usage: reported" in trailers.lower() and b"x-teeproxy-cost-usd: " in trailers.lower()
    assert b'"usage"' not in body  # the usage chunk the proxy asked for is not the client's

    sdk = subprocess.run(
        [sys.executable, "-c", python.replace("127.0.0.1:8080", here)], capture_output=True, text=True, timeout=60
    )
    assert sdk.returncode == 0, sdk.stderr
    assert sdk.stdout.startswith("Hello from teeproxy's demo upstream!")
