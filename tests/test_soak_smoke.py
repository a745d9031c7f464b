"""The soak's quick mode, as CI runs it: 500 streams with faults on both sides through a real `teeproxy serve`
with 2 workers, then the ledger audit (one run, shared by the tests below).

What a user would notice, asserted: every request that reached the upstream has its ledger record, exactly one,
and the proxy neither crashed nor logged a traceback. The mix is asserted too (every kind of request, every
upstream fault and client behaviour was exercised, failover happened), so that a quietly broken harness cannot
pass by sending nothing.
"""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys
from typing import Any

import pytest

from bench.fault_upstream import FAULT_WEIGHTS
from bench.soak_bodies import KINDS
from bench.soak_client import BEHAVIOUR_WEIGHTS

ROOT = pathlib.Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def soak() -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-m", "bench.soak", "--quick", "--json"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=110,
    )
    assert done.stdout.strip(), done.stderr[-3000:]
    report: dict[str, Any] = json.loads(done.stdout)
    report["exit_status"] = done.returncode
    return report


def test_every_request_the_upstream_saw_has_one_record(soak: dict[str, Any]) -> None:
    assert soak["records_missing"] == 0, soak["missing_sample"]
    assert soak["records_missing_for_answered"] == 0, soak["missing_sample"]
    assert soak["duplicate_records"] == 0
    assert soak["proxy_crashes"] == 0 and soak["proxy_exit_status"] == 0


def test_the_mix_was_exercised(soak: dict[str, Any]) -> None:
    assert soak["requests_sent"] >= 250  # 500 unless a very slow machine hit the 40 s limit first
    assert soak["requests_upstream_saw"] > soak["requests_sent"] // 2
    assert soak["ledger_records"] >= soak["requests_upstream_saw"]
    assert set(soak["upstream_kinds"]) == set(KINDS)
    assert set(soak["upstream_faults"]) == set(FAULT_WEIGHTS)
    assert set(soak["clients"]["by_client"]) == set(BEHAVIOUR_WEIGHTS)
    assert soak["failed_over"] > 0
    assert soak["peak_rss_mib"] > 0


def test_no_traceback_in_the_proxy_log(soak: dict[str, Any]) -> None:
    assert soak["tracebacks"] == 0, [(e["count"], e["exception"], e["where"]) for e in soak["distinct_tracebacks"]]
    assert soak["exit_status"] == 0
