"""`proxy.collector`: the collector set for a relay, full collections only when the worker is idle."""

from __future__ import annotations

import gc
import subprocess
import sys

from proxy.collector import GEN0_THRESHOLD, GEN1_MULTIPLIER, GEN2_MULTIPLIER, GcWatch, IdleCollector


def test_a_server_process_freezes_start_up_and_raises_the_thresholds() -> None:
    code = "import gc; from proxy import collector; collector.tune(); print(gc.get_threshold(), gc.get_freeze_count())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split(")")
    assert out[0] + ")" == str((GEN0_THRESHOLD, GEN1_MULTIPLIER, GEN2_MULTIPLIER))
    assert int(out[1]) > 1_000  # what start-up made (in a server: every module, the price list): never walked again


def test_a_full_collection_runs_only_when_idle_after_serving_and_not_too_often() -> None:
    watch = GcWatch()
    watch.install()
    try:
        idle = IdleCollector(every_s=30)
        start = idle._last
        assert not idle.maybe_collect(in_flight=0, started=0, now=start + 60)  # nothing served yet
        assert not idle.maybe_collect(in_flight=3, started=5, now=start + 60)  # busy
        assert not idle.maybe_collect(in_flight=0, started=5, now=start + 10)  # too soon
        watch.drain()
        assert idle.maybe_collect(in_flight=0, started=5, now=start + 60)
        assert 2 in [generation for generation, _ in watch.drain()]  # a full one, timed like any other
        assert not idle.maybe_collect(in_flight=0, started=5, now=start + 200)  # nothing served since
        assert idle.maybe_collect(in_flight=0, started=6, now=start + 200)
    finally:
        watch.uninstall()
        gc.enable()
