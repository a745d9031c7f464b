"""The benchmark's quick mode, as CI runs it: every target is measured and every stream arrives whole.

Figures are not asserted (a test is no place for a timing budget). What is: the harness wrote its JSON and
markdown with the figures the issue asks for, and through each target every stream carried exactly the chunks
the mock was asked to send, plus `data: [DONE]` (teeproxy strips the usage chunk it asked for on the client's
behalf), with no errors.
"""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys

from bench.targets import nginx_binary

ROOT = pathlib.Path(__file__).resolve().parent.parent
TEEPROXY = ["teeproxy-1w", "teeproxy-2w", "teeproxy-1w-nometer"]


def test_bench_quick_mode(tmp_path: pathlib.Path) -> None:
    targets = ["nginx", *TEEPROXY]
    done = subprocess.run(
        [sys.executable, "-m", "bench.run", "--quick", "--out", str(tmp_path), "--targets", *targets],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=110,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((tmp_path / "quick.json").read_text())
    plan, results = report["plan"], report["results"]
    measured = {"direct", *TEEPROXY} | ({"nginx"} if nginx_binary() else set())
    if not nginx_binary():
        assert report["notes"]["nginx"].startswith("not installed")

    paced = plan["paced"][0]
    expected = {
        "ttfb": (plan["ttfb_chunks"], plan["ttfb_streams"]),
        "c50": (plan["burst_chunks"], None),
        f"paced{paced['streams']}": (paced["chunks"], paced["streams"]),
    }
    assert set(results) == set(expected)
    for scenario, (chunks, streams) in expected.items():
        assert set(results[scenario]) == measured, scenario
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
        assert {"ttfb_p50_ms", "ttfb_p99_ms", "added_ttfb_p50_ms"} <= set(results["ttfb"][name])
        assert {"streams_per_s", "chunks_per_s", "max_gap_p99_ms"} <= set(results["c50"][name])
        row = results[f"paced{paced['streams']}"][name]
        assert row["peak_in_flight"] == paced["streams"], name
        if name != "direct":
            assert row["peak_rss_mib"] >= row["idle_rss_mib"] > 0, name
            assert "rss_per_stream_kib" in row
    assert {g["goal"] for g in report["goals"]} >= {
        "added TTFB p50 at most 0.5 ms",
        "metering under 10 % of forwarding CPU",
    }
    assert "c50" in report["ratios"] and "target_cpu_us_per_chunk_x_direct" in report["ratios"]["c50"]["teeproxy-1w"]
    table = (tmp_path / "quick.md").read_text()
    assert "teeproxy-1w" in table and "CPU µs/chunk" in table
