"""The benchmark's quick mode, as CI runs it: every target is measured and every stream arrives whole.

Figures are not asserted (a test is no place for a timing budget). What is: the harness wrote its JSON and
markdown with the figures the issue asks for, and through each target every stream carried exactly the chunks
the mock was asked to send, plus `data: [DONE]` (teeproxy strips the usage chunk it asked for on the client's
behalf), with no errors. The GC-pause figures come from parsing teeproxy's /metrics, checked here on canned
exposition text (the metric may be absent: then they are null).
"""

from __future__ import annotations

import asyncio
import json
import math
import pathlib
import subprocess
import sys
from typing import Any

import httpx
import pytest

from bench import gc_pauses, report, targets
from bench.mock_upstream import MockUpstream
from bench.targets import nginx_binary

ROOT = pathlib.Path(__file__).resolve().parent.parent
TEEPROXY = ["teeproxy-1w", "teeproxy-2w", "teeproxy-1w-nometer"]
FLOOR = "protocol-relay"


def _quick_run(out: pathlib.Path, *args: str) -> dict[str, Any]:
    """`make bench-quick` with `args`, as CI runs it; the JSON it wrote."""
    done = subprocess.run(
        [sys.executable, "-m", "bench.run", "--quick", "--out", str(out), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=110,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result: dict[str, Any] = json.loads((out / "quick.json").read_text())
    return result


def test_bench_quick_mode(tmp_path: pathlib.Path) -> None:
    out = _quick_run(tmp_path, "--targets", "nginx", *TEEPROXY, FLOOR)
    plan, results = out["plan"], out["results"]
    measured = {"direct", *TEEPROXY, FLOOR} | ({"nginx"} if nginx_binary() else set())
    if not nginx_binary():
        assert out["notes"]["nginx"].startswith("not installed")

    paced, steady = plan["paced"][0], plan["steady"]
    expected = {
        "ttfb": (plan["ttfb_chunks"], plan["ttfb_streams"]),
        "c50": (plan["burst_chunks"], None),
        f"paced{paced['streams']}": (paced["chunks"], paced["streams"]),
        "steady": (steady["chunks"], steady["waves"] * steady["streams"]),
    }
    assert set(results) == set(expected)
    for scenario, (chunks, streams) in expected.items():
        assert set(results[scenario]) == (measured & set(steady["targets"]) if scenario == "steady" else measured)
        for name, row in results[scenario].items():
            where = f"{scenario} via {name}"
            assert (row["errors"], row["unfinished"]) == (0, 0), (where, row["error_kinds"])
            assert row["frames_per_stream"] == {str(chunks + 1): row["completed"]}, where
            if streams is not None:
                assert row["completed"] == streams, where
            else:
                assert row["completed"] > 0, where

    for name in measured:
        assert results["c50"][name]["target_cpu_us_per_chunk"] > 0
        assert results["ttfb"][name]["target_cpu_us_per_stream"] > 0
        assert {"ttfb_p50_ms", "ttfb_p99_ms", "added_ttfb_p50_ms"} <= set(results["ttfb"][name])
        assert {"streams_per_s", "chunks_per_s", "max_gap_p99_ms"} <= set(results["c50"][name])
        row = results[f"paced{paced['streams']}"][name]
        assert row["peak_in_flight"] == paced["streams"], name
        if name != "direct":
            assert row["peak_rss_mib"] >= row["idle_rss_mib"] > 0, name
            assert "rss_per_stream_kib" in row
    for name, row in results["steady"].items():
        assert row["waves"] == steady["waves"], name
        assert len(row["target_cpu_us_per_chunk_by_wave"]) == len(row["peak_rss_mib_by_wave"]) == steady["waves"]
        assert row["cpu_last_x_first"] > 0 and row["peak_rss_last_x_first"] > 0, name
    for scenario, rows in results.items():
        for name in TEEPROXY if scenario != "steady" else ["teeproxy-1w"]:
            figures = {key: rows[name][key] for key in gc_pauses.FIGURES}
            assert figures["gc_pause_ms"] is None or figures["gc_collections"] >= 0, (scenario, name, figures)
    goals = [g["goal"] for g in out["goals"]]
    expected_goals = ["added TTFB p50 at most", "CPU per request halved", "metering under 10 %", "steady state"]
    if nginx_binary():
        expected_goals.append("CPU per burst chunk at most 10x nginx's")
    for prefix in expected_goals:
        assert any(goal.startswith(prefix) for goal in goals), (prefix, goals)
    assert "target_cpu_us_per_chunk_x_direct" in out["ratios"]["c50"]["teeproxy-1w"]
    assert "target_cpu_us_per_chunk_x_relay" in out["ratios"]["c50"]["teeproxy-1w"]
    table = (tmp_path / "quick.md").read_text()
    assert "teeproxy-1w" in table and "CPU µs/chunk" in table and "How far from the floor" in table


# Two scrapes as prometheus_client renders a histogram: cumulative buckets, `_count`, `_sum`, and `_created`
# (which is not a sample of the histogram and must be ignored).
SCRAPE_BEFORE = """\
# HELP teeproxy_gc_pause_seconds Time the garbage collector stopped the world, by generation.
# TYPE teeproxy_gc_pause_seconds histogram
teeproxy_gc_pause_seconds_bucket{generation="0",le="0.0001"} 90.0
teeproxy_gc_pause_seconds_bucket{generation="0",le="0.001"} 100.0
teeproxy_gc_pause_seconds_bucket{generation="0",le="+Inf"} 100.0
teeproxy_gc_pause_seconds_count{generation="0"} 100.0
teeproxy_gc_pause_seconds_sum{generation="0"} 0.005
teeproxy_gc_pause_seconds_created{generation="0"} 1.7e9
teeproxy_gc_pause_seconds_bucket{generation="2",le="0.001"} 1.0
teeproxy_gc_pause_seconds_bucket{generation="2",le="0.01"} 1.0
teeproxy_gc_pause_seconds_bucket{generation="2",le="0.1"} 1.0
teeproxy_gc_pause_seconds_bucket{generation="2",le="+Inf"} 1.0
teeproxy_gc_pause_seconds_count{generation="2"} 1.0
teeproxy_gc_pause_seconds_sum{generation="2"} 0.0008
teeproxy_requests_total{outcome="ok"} 5.0
"""
SCRAPE_AFTER = (
    SCRAPE_BEFORE.replace('"0",le="0.0001"} 90.0', '"0",le="0.0001"} 180.0')
    .replace('"0",le="0.001"} 100.0', '"0",le="0.001"} 200.0')
    .replace('"0",le="+Inf"} 100.0', '"0",le="+Inf"} 200.0')
    .replace('count{generation="0"} 100.0', 'count{generation="0"} 200.0')
    .replace('sum{generation="0"} 0.005', 'sum{generation="0"} 0.011')
    .replace('"2",le="0.001"} 1.0', '"2",le="0.001"} 1.0')
    .replace('"2",le="0.01"} 1.0', '"2",le="0.01"} 2.0')
    .replace('"2",le="0.1"} 1.0', '"2",le="0.1"} 3.0')
    .replace('"2",le="+Inf"} 1.0', '"2",le="+Inf"} 3.0')
    .replace('count{generation="2"} 1.0', 'count{generation="2"} 3.0')
    .replace('sum{generation="2"} 0.0008', 'sum{generation="2"} 0.0508')
)


def test_gc_pauses_from_two_scrapes() -> None:
    figures = gc_pauses.delta(gc_pauses.parse(SCRAPE_BEFORE), gc_pauses.parse(SCRAPE_AFTER))
    assert figures["gc_collections"] == 102
    assert math.isclose(figures["gc_pause_ms"], 56.0)
    assert figures["gc_gen2_collections"] == 2
    assert math.isclose(figures["gc_gen2_pause_ms"], 50.0)
    # One new gen-2 collection fell in (1 ms, 10 ms], the other in (10 ms, 100 ms]: the longest is at most 100 ms.
    assert math.isclose(figures["gc_gen2_max_bucket_ms"], 100.0)
    assert math.isclose(figures["gc_max_bucket_ms"], 100.0)  # generation 0's all fell at or under 1 ms


def test_gc_pauses_absent_or_idle() -> None:
    """A proxy without the metric gives null figures; no gen-2 collection gives no bound."""
    without = "teeproxy_requests_total 5.0\n"
    assert gc_pauses.parse(without) is None and gc_pauses.parse(None) is None
    assert gc_pauses.delta(gc_pauses.parse(without), gc_pauses.parse(SCRAPE_AFTER)) == dict.fromkeys(gc_pauses.FIGURES)
    same = gc_pauses.delta(gc_pauses.parse(SCRAPE_BEFORE), gc_pauses.parse(SCRAPE_BEFORE))
    assert same["gc_collections"] == same["gc_gen2_collections"] == 0
    assert same["gc_gen2_max_bucket_ms"] is None and same["gc_max_bucket_ms"] is None


def test_the_mock_writes_openais_null_usage_only_for_a_stream_that_asked_for_usage() -> None:
    """As OpenAI's API does now: with `include_usage`, every chunk before the usage chunk has `"usage":null`. The
    chunks are the same size either way, so every target sends its clients the same bytes a chunk."""

    async def stream(body: dict[str, object]) -> list[bytes]:
        mock = MockUpstream(n_chunks=3, chunk_bytes=200)
        port = await mock.start()
        assert mock.server is not None
        try:
            async with httpx.AsyncClient() as client:
                response = await client.post(f"http://127.0.0.1:{port}/v1/chat/completions", json=body)
        finally:
            mock.server.close()
        return [frame for frame in response.content.split(b"\n\n") if frame]

    plain = asyncio.run(stream({"model": "m", "stream": True}))
    asked = asyncio.run(stream({"model": "m", "stream": True, "stream_options": {"include_usage": True}}))
    assert len(plain) == 4 and len(asked) == 5  # 3 chunks, (the usage chunk,) [DONE]
    assert not any(b'"usage"' in frame for frame in plain)
    assert all(frame.endswith(b',"usage":null}') for frame in asked[:3])
    assert [len(frame) for frame in asked[:3]] == [len(frame) for frame in plain[:3]]
    assert json.loads(asked[3][len(b"data: ") :])["usage"]["completion_tokens"] == 3


def _has_baseline_commit() -> bool:
    found = subprocess.run(
        ["git", "-C", str(ROOT), "cat-file", "-e", f"{report.BASELINE_AT}^{{commit}}"], capture_output=True, check=False
    )
    return found.returncode == 0


def test_the_baseline_runs_side_by_side_in_the_ttfb_scenario(tmp_path: pathlib.Path) -> None:
    """`teeproxy-baseline` is teeproxy as it was at e9a9406, started from `git archive` of this checkout: its streams
    arrive whole, and the "CPU per request halved" goal is measured against it in the same run. Without the history
    (a shallow clone) it is noted and the goal falls back to the recorded figure."""
    out = _quick_run(tmp_path, "--scenarios", "ttfb", "burst", "--targets", "teeproxy-1w", report.BASELINE)
    results, goals = out["results"], {g["goal"]: g for g in out["goals"]}
    assert set(results) == {"ttfb", "c50"}
    assert set(results["c50"]) == {"direct", "teeproxy-1w"}  # the baseline runs the ttfb scenario only
    halved = goals["CPU per request halved"]
    if not _has_baseline_commit():
        assert out["notes"][report.BASELINE].startswith(f"{report.BASELINE_AT} is not in this checkout's history")
        assert halved["limit"] == report.BASELINE_CPU_US_PER_REQUEST / 2
        return
    base = results["ttfb"][report.BASELINE]
    streams = out["plan"]["ttfb_streams"]
    assert (base["completed"], base["errors"], base["frames_per_stream"]) == (streams, 0, {"6": streams})
    assert halved["limit"] == base["target_cpu_us_per_stream"] / 2
    assert halved["where"].startswith(f"teeproxy-1w vs {report.BASELINE} ({report.BASELINE_AT}) in this run")
    scaled = goals["added TTFB p50 at most half the baseline's (the 0.4 ms goal, in this run's terms)"]
    assert scaled["limit"] == base["added_ttfb_p50_ms"] / 2


def test_goals_take_the_baseline_from_the_same_run_when_it_ran() -> None:
    def ttfb(cpu: float, added: float) -> dict[str, float]:
        return {"target_cpu_us_per_stream": cpu, "added_ttfb_p50_ms": added}

    with_base = {"ttfb": {"teeproxy-1w": ttfb(900.0, 0.7), report.BASELINE: ttfb(2400.0, 1.6)}}
    goals = {g["goal"]: g for g in report.goals(with_base)}
    assert (goals["CPU per request halved"]["limit"], goals["CPU per request halved"]["met"]) == (1200.0, True)
    scaled = goals["added TTFB p50 at most half the baseline's (the 0.4 ms goal, in this run's terms)"]
    assert (scaled["limit"], scaled["met"]) == (0.8, True)
    assert goals["added TTFB p50 at most 0.4 ms"]["met"] is False  # the absolute goal stays as the issue set it

    without = {"ttfb": {"teeproxy-1w": ttfb(900.0, 0.7)}}
    goals = {g["goal"]: g for g in report.goals(without)}
    halved = goals["CPU per request halved"]
    assert (halved["limit"], halved["met"]) == (report.BASELINE_CPU_US_PER_REQUEST / 2, False)
    assert "recorded on another day" in halved["where"]
    assert not any(goal.startswith("added TTFB p50 at most half") for goal in goals)


def test_the_baseline_target_runs_the_commit_before_the_work(tmp_path: pathlib.Path) -> None:
    """What `teeproxy-baseline` starts is e9a9406's source, not this checkout's: `python -m proxy` from the archive
    (its directory first on the path), which has none of the work since (`proxy/h11_body_send.py` came later)."""
    if not _has_baseline_commit():
        with pytest.raises(targets.NotAvailable):
            targets.teeproxy_baseline(tmp_path, upstream_port=1)
        return
    target = targets.teeproxy_baseline(tmp_path, upstream_port=1)
    source = tmp_path / f"teeproxy-{report.BASELINE_AT}"
    assert target.cwd == source and target.env["PYTHONPATH"] == str(source)
    assert target.launch is not None and target.launch(target)[1:3] == ["-m", "proxy"]
    assert (source / "proxy" / "__main__.py").exists() and (ROOT / "proxy" / "h11_body_send.py").exists()
    assert not (source / "proxy" / "h11_body_send.py").exists()
