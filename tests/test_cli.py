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
from tests.servers import CLIENT_KEY, Script, free_port, proxy_config_text

ROOT = pathlib.Path(__file__).resolve().parent.parent


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
    env = {k: v for k, v in os.environ.items() if not k.endswith("_API_KEY")}
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


def readme_examples() -> tuple[list[str], list[str]]:
    """The README's console commands (continuation lines joined, `$ ` dropped) and its Python examples, as written."""
    readme = (ROOT / "README.md").read_text()
    consoles = [
        re.sub(r"\\\n\s*", "", line).removeprefix("$ ").strip()
        for block in re.findall(r"```console\n(.*?)```", readme, re.S)
        for line in re.split(r"\n(?=\$ )", block)
    ]
    pythons = re.findall(r"```python\n(.*?)```", readme, re.S)
    return consoles, pythons


def readme_python(marker: str) -> str:
    [block] = [block for block in readme_examples()[1] if marker in block]
    return block


def readme_curls() -> list[str]:
    return [command for command in readme_examples()[0] if command.startswith("curl")]


def run_python(code: str, cwd: pathlib.Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=cwd, env=env)


def test_readme_examples_work_as_written(serve_process: Served) -> None:
    """Issue 2's 'done when': a newcomer runs `make run` and pastes the README's curl and SDK examples."""
    curls = [c for c in readme_curls() if "/v1/chat/completions" in c]
    python = readme_python("from openai import OpenAI")
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

    sdk = run_python(python.replace("127.0.0.1:8080", here))
    assert sdk.returncode == 0, sdk.stderr
    assert sdk.stdout.startswith("Hello from teeproxy's demo upstream!")


@pytest.mark.parametrize("marker", ["import anthropic", "from google import genai", 'endpoint_url="http://'])
def test_readme_sdk_examples_of_every_dialect_work_as_written(serve_process: Served, marker: str) -> None:
    """Each SDK's README example, pasted as is against `make run`'s demo: the demo text streams back in that
    provider's own format, and the ledger records the request."""
    here = f"127.0.0.1:{serve_process.port}"
    sdk = run_python(readme_python(marker).replace("127.0.0.1:8080", here))
    assert sdk.returncode == 0, sdk.stderr
    assert sdk.stdout.startswith("Hello from teeproxy's demo upstream!")


def test_readme_anthropic_curl_works_as_written(serve_process: Served) -> None:
    [curl] = [c for c in readme_curls() if "/v1/messages" in c]
    here = f"127.0.0.1:{serve_process.port}"
    out = subprocess.run(["bash", "-c", curl.replace("127.0.0.1:8080", here)], capture_output=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith(b"event: message_start\ndata: {")
    assert out.stdout.rstrip().endswith(b'data: {"type":"message_stop"}')


def test_readme_tls_example_works_as_written(tmp_path: pathlib.Path) -> None:
    """The README's TLS set-up as a user pastes it: openssl makes a certificate, teeproxy serves TLS with it, and
    boto3 with AWS_BEARER_TOKEN_BEDROCK (sent only to https) gets the demo's answer."""
    commands = [c for c in readme_examples()[0] if c.startswith(("mkdir -p certs", ".venv/bin/teeproxy serve"))]
    assert len(commands) == 2
    made = subprocess.run(["bash", "-c", commands[0]], cwd=tmp_path, capture_output=True, timeout=60)
    assert made.returncode == 0, made.stderr
    port = free_port()
    serve_cmd = commands[1].replace(".venv/bin/teeproxy", f"{sys.executable} -m proxy").replace("8443", str(port))
    config = tmp_path / "teeproxy.toml"
    config.write_text(
        (ROOT / "config" / "teeproxy.toml").read_text().replace("teeproxy-ledger.db", str(tmp_path / "ledger.db"))
    )
    env = {k: v for k, v in os.environ.items() if not k.endswith("_API_KEY")}
    env["TEEPROXY_CONFIG"] = str(config)
    env["PYTHONPATH"] = str(ROOT)
    with open(tmp_path / "serve.log", "wb") as log:
        proc = subprocess.Popen(
            ["bash", "-c", "exec " + serve_cmd], cwd=tmp_path, env=env, stdout=log, stderr=log, start_new_session=True
        )
    served = Served(proc, port, tmp_path)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                assert time.monotonic() < deadline and proc.poll() is None, (tmp_path / "serve.log").read_text()
                time.sleep(0.05)
        sdk = run_python(readme_python('endpoint_url="https://').replace("8443", str(port)), cwd=tmp_path)
        assert sdk.returncode == 0, sdk.stderr
        assert sdk.stdout.startswith("Hello from teeproxy's demo upstream!")
    finally:
        served.stop()
    [record] = SQLiteBackend(str(tmp_path / "ledger.db")).query(None, None)
    assert (record.provider, record.outcome, record.usage_status) == ("demo", "completed", "reported")


# --- Issue 11: spend from the command line, and the newcomer defects (each test names the defect it pins). ---


def _ledger_with(path: pathlib.Path, count: int) -> None:
    from tests.test_spend import make_records

    backend = SQLiteBackend(str(path))
    backend.open()
    backend.write(make_records(count))
    backend.close()


def test_usage_group_by_model_prints_a_table(tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]) -> None:
    import json

    _ledger_with(tmp_path / "ledger.db", 300)
    config = tmp_path / "c.toml"
    config.write_text('[ledger]\npath = "ledger.db"\n')
    assert main(["usage", "--config", str(config), "--group-by", "model", "--key", "bob", "--since", "2026-11-21"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == [
        "model",
        "requests",
        "input",
        "cached",
        "cache_write",
        "output",
        "reasoning",
        "cost_usd",
        "unpriced",
    ]
    rows = {line.split()[0]: line.split()[1:] for line in lines[1:-2]}
    assert set(rows) == {"claude-haiku-4-5", "gemini-2.5-flash", "gpt-4o-mini"}
    assert set(lines[-2]) == {"-", " "} and lines[-1].split()[0] == "total"
    assert sum(int(row[0]) for row in rows.values()) == int(lines[-1].split()[1])
    # The same report as the admin endpoint's JSON and CSV.
    assert main(["usage", "--config", str(config), "--group-by", "model", "--key", "bob", "--json"]) == 0
    body = json.loads(capsys.readouterr().out)
    assert body["group_by"] == ["model"] and body["where"] == {"key": "bob"} and len(body["rows"]) == 3
    assert main(["usage", "--config", str(config), "--group-by", "day,provider", "--csv"]) == 0
    assert capsys.readouterr().out.splitlines()[0].startswith("day,provider,requests,input_tokens,")
    assert main(["usage", "--config", str(config), "--group-by", "week"]) == 2
    assert "unknown group 'week'" in capsys.readouterr().err


def test_usage_filters_narrow_the_record_listing(tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]) -> None:
    import json

    _ledger_with(tmp_path / "ledger.db", 40)
    config = tmp_path / "c.toml"
    config.write_text('[ledger]\npath = "ledger.db"\n')
    argv = ["usage", "--config", str(config), "--json", "--model", "gpt-4o-mini", "--until", "2026-11-22"]
    assert main(argv) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert records and all(r["model"] == "gpt-4o-mini" and r["time"] < "2026-11-22" for r in records)
    assert main(["usage", "--config", str(config), "--since", "soon"]) == 2
    assert "since: not an ISO 8601 time: 'soon'" in capsys.readouterr().err


def run_cli(*args: str, cwd: pathlib.Path, shell: bool = False) -> subprocess.CompletedProcess[str]:
    """`python -m proxy ...` in another process and folder, as a user runs it; with `shell`, `args[0]` is a bash
    command line whose `teeproxy` is this checkout's."""
    env = {k: v for k, v in os.environ.items() if not k.endswith("_API_KEY") and k != "TEEPROXY_CONFIG"}
    env["PYTHONPATH"] = str(ROOT)
    if shell:
        command = args[0].replace("teeproxy", f"{sys.executable} -m proxy", 1)
        return subprocess.run(["bash", "-c", command], cwd=cwd, env=env, capture_output=True, text=True, timeout=60)
    argv = [sys.executable, "-m", "proxy", *args]
    return subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=60)


def test_ledger_path_is_relative_to_the_config_file(tmp_path: pathlib.Path) -> None:
    """Defect: `teeproxy usage --config /abs/path.toml` from another folder looked for the ledger in the current
    folder, made an empty database there, and crashed."""
    (tmp_path / "conf" / "data").mkdir(parents=True)
    (tmp_path / "elsewhere").mkdir()
    config = tmp_path / "conf" / "teeproxy.toml"
    config.write_text('[ledger]\npath = "data/ledger.db"\n')
    _ledger_with(tmp_path / "conf" / "data" / "ledger.db", 5)
    assert load_config(config).ledger.path == str(tmp_path / "conf" / "data" / "ledger.db")
    out = run_cli("usage", "--config", str(config), "--json", cwd=tmp_path / "elsewhere")
    assert out.returncode == 0, out.stderr
    assert len(out.stdout.splitlines()) == 5
    assert list((tmp_path / "elsewhere").iterdir()) == []


def test_usage_without_a_ledger_says_so_and_creates_nothing(tmp_path: pathlib.Path) -> None:
    """Defect: a usage query on a ledger that did not exist made an empty one, then crashed on its missing table.
    A ledger left in the current folder by the old path rule is pointed at."""
    config = tmp_path / "conf" / "teeproxy.toml"
    config.parent.mkdir()
    config.write_text('[ledger]\npath = "teeproxy-ledger.db"\n')
    out = run_cli("usage", "--config", str(config), cwd=tmp_path)
    assert out.returncode == 2
    assert out.stderr.startswith(f"teeproxy usage: no ledger at {config.parent / 'teeproxy-ledger.db'}: ")
    assert "Traceback" not in out.stderr and out.stdout == ""
    assert not (config.parent / "teeproxy-ledger.db").exists() and not (tmp_path / "teeproxy-ledger.db").exists()
    _ledger_with(tmp_path / "teeproxy-ledger.db", 1)
    out = run_cli("usage", "--config", str(config), cwd=tmp_path)
    assert out.returncode == 2 and f"there is a ledger at {tmp_path / 'teeproxy-ledger.db'}" in out.stderr


def test_usage_piped_into_head_ends_quietly(tmp_path: pathlib.Path) -> None:
    """Defect: `teeproxy usage | head` ended in a BrokenPipeError traceback. 1,000 records are ~170 KB, more
    than a pipe holds, so head is gone while the listing is still being written."""
    _ledger_with(tmp_path / "ledger.db", 1000)
    (tmp_path / "c.toml").write_text('[ledger]\npath = "ledger.db"\n')
    out = run_cli("set -o pipefail; teeproxy usage --config c.toml | head -n 3", cwd=tmp_path, shell=True)
    assert out.stderr == ""
    assert len(out.stdout.splitlines()) == 3
    assert out.returncode == 141  # as any Unix tool whose reader went away, under pipefail; 0 without it


def test_a_busy_port_is_one_line_and_a_nonzero_exit(tmp_path: pathlib.Path) -> None:
    """Defect: a taken port printed a 30-line traceback, after starting the demo upstream."""
    config = tmp_path / "teeproxy.toml"
    text = (ROOT / "config" / "teeproxy.toml").read_text()
    config.write_text(text.replace('path = "teeproxy-ledger.db"', f'path = "{tmp_path / "ledger.db"}"'))
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        for workers in ("1", "2"):
            out = run_cli(
                "serve", "--config", str(config), "--bind", f"127.0.0.1:{port}", "--workers", workers, cwd=tmp_path
            )
            assert out.returncode == 1
            [line] = out.stderr.splitlines()
            assert line.startswith(f"teeproxy: cannot listen on 127.0.0.1:{port}: Address already in use")
    assert not (tmp_path / "ledger.db").exists()  # nothing started


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit:
        main(["--version"])
    assert exit.value.code == 0
    assert re.fullmatch(r"teeproxy \d+\.\d+\.\d+\S*\n", capsys.readouterr().out)


def test_the_venv_has_the_teeproxy_command(tmp_path: pathlib.Path) -> None:
    """Defect: `teeproxy keys new` as the README wrote it was "command not found": the command lives in the
    venv that `make run` makes, as .venv/bin/teeproxy. It runs from any folder."""
    command = pathlib.Path(sys.executable).parent / "teeproxy"
    assert command.is_file(), "pip install -e . puts the teeproxy command beside the venv's python"
    out = subprocess.run([str(command), "--version"], capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert out.returncode == 0 and out.stdout.startswith("teeproxy ")
    out = subprocess.run([str(command), "keys", "new", "bob"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and 'name = "bob"' in out.stdout


def test_keys_new_admin_prints_the_admin_block(capsys: pytest.CaptureFixture[str]) -> None:
    from proxy.spend import check_admin_key

    assert main(["keys", "new", "--admin"]) == 0
    out = capsys.readouterr().out
    key = re.search(r"^(tp-\S+)$", out, re.M)
    assert key is not None
    config = parse_config(out[out.index("[admin]") :])
    check_admin_key({"authorization": f"Bearer {key.group(1)}"}, config)
    assert main(["keys", "new"]) == 2
    assert "give a NAME" in capsys.readouterr().err


def test_describe_upstreams_says_which_upstream_each_provider_uses(monkeypatch: pytest.MonkeyPatch) -> None:
    """Defect: setting one provider key silently turned the demo off for every provider. Start-up now says, one
    line per provider, where its requests go and why."""
    from proxy.routing import demo_wanted, describe_upstreams

    config = load_config(ROOT / "config" / "teeproxy.toml")
    for name in ("OPENAI_API_KEY", "ANTHROPIC_API_KEY", "GEMINI_API_KEY", "BEDROCK_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    assert demo_wanted(config)
    demo = describe_upstreams(config, "http://127.0.0.1:5555")
    assert demo == [
        "provider openai (openai): demo upstream at http://127.0.0.1:5555/v1 (no provider key is set)",
        "provider anthropic (anthropic): demo upstream at http://127.0.0.1:5555 (no provider key is set)",
        "provider google (gemini): demo upstream at http://127.0.0.1:5555 (no provider key is set)",
        "provider bedrock (bedrock): demo upstream at http://127.0.0.1:5555 (no provider key is set)",
    ]
    monkeypatch.setenv("OPENAI_API_KEY", "sk-secret-value")
    assert not demo_wanted(config)
    real = describe_upstreams(config, None)
    assert real[0] == "provider openai (openai): https://api.openai.com/v1, key from $OPENAI_API_KEY"
    assert real[1] == (
        "provider anthropic (anthropic): https://api.anthropic.com, $ANTHROPIC_API_KEY is not set: the provider "
        "will refuse its requests; the demo upstream is off because $OPENAI_API_KEY is set"
    )
    assert "SigV4 from botocore's credential chain" in real[3]
    assert not any("sk-secret-value" in line for line in real)
