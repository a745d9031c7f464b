"""The benchmark harness's quick mode, as CI runs it: it measures every target and every stream completes.

Figures are not asserted (a test is no place for a timing budget); what is asserted is that the harness
produced them, that the mock delivered every chunk through each target, and that nothing errored.
"""

from __future__ import annotations

import json
import pathlib
import shutil
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent


def test_bench_quick_mode(tmp_path: pathlib.Path) -> None:
    targets = ["teeproxy-1w", "teeproxy-1w-nometer"]
    if shutil.which("nginx") or pathlib.Path("/usr/sbin/nginx").exists():
        targets.append("nginx")
    subprocess.run(
        [sys.executable, "-m", "bench.run", "--quick", "--out", str(tmp_path), "--targets", *targets],
        cwd=ROOT,
        check=True,
        capture_output=True,
        timeout=180,
    )
    report = json.loads((tmp_path / "quick.json").read_text())
    results = report["results"]
    assert set(results) == {"direct", *targets}
    for name, scenarios in results.items():
        assert scenarios["ttfb"]["errors"] == 0, name
        assert scenarios["ttfb"]["ttfb_p50_ms"] > 0
        c50 = scenarios["c50"]
        assert c50["errors"] == 0, name
        # Every stream is 100 content chunks + [DONE]: the chunk rate is exactly 101 x the stream rate.
        assert abs(c50["chunks_per_s"] - 101 * c50["streams_per_s"]) < 1e-6 * c50["chunks_per_s"], name
        assert c50["cpu_us_per_chunk"] > 0
        if name != "direct":
            slow = scenarios["slow300"]
            assert (slow["completed"], slow["errors"]) == (300, 0), name
            assert slow["peak_rss_mib"] >= slow["idle_rss_mib"] > 0
    table = (tmp_path / "quick.md").read_text()
    assert "teeproxy-1w" in table and "CPU µs/chunk" in table
