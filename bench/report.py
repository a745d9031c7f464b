"""From the medians to what a reader checks: ratios to direct, nginx and the Python floor, the goals, a markdown page.

python -m bench.report bench/results/latest.json   # re-render latest.md from the JSON, without a re-run
"""

from __future__ import annotations

import json
import pathlib
import sys
from typing import Any

from bench.targets import BASELINE, BASELINE_AT

NAN = float("nan")
METRICS = {
    "ttfb": ["ttfb_p50_ms", "ttfb_p99_ms", "added_ttfb_p50_ms", "added_ttfb_p99_ms", "target_cpu_us_per_stream"],
    "burst": ["streams_per_s", "chunks_per_s", "target_cpu_us_per_chunk", "max_gap_p99_ms"],
    "paced": ["peak_rss_mib", "rss_per_stream_kib", "target_cpu_us_per_chunk", "max_gap_p99_ms", "chunks_per_s"],
    "steady": ["target_cpu_us_per_chunk", "peak_rss_mib", "cpu_last_x_first", "peak_rss_last_x_first"],
}
FLOOR = "protocol-relay"  # the Python floor: a bare asyncio Protocol relay (bench/protocol_relay.py)
# The targets (issue 10).
GOAL_PACED_CPU_X_NGINX = (3.0, 2.0)  # first this, then this
GOAL_BURST_CPU_X_NGINX = 10.0
GOAL_ADDED_TTFB_MS = 0.4
GOAL_10K_RSS_MIB = 600.0
GOAL_METERING_SHARE = 0.10
# "Steady state no worse than a fresh process": last wave over first at most 1.0, plus a noise tolerance. Measured
# here (5 waves of 1,000 paced streams, single repetitions): CPU per chunk last over first 0.87-1.03 for teeproxy-1w
# (~38 µs/chunk), 0.94-1.29 for nginx (6-8 µs) and 1.00-1.34 for protocol-relay (8-12 µs), whose small figures
# move most with the other processes on the 2 shared cores; peak RSS 1.00 for nginx and 1.12-1.14 for
# protocol-relay (3-4 MiB of allocator warm-up over its first waves, then flat). The goal row is a median of 3.
STEADY_NOISE = 0.15
# "CPU per request halved" against `teeproxy-baseline` (teeproxy-1w at e9a9406, the commit before the work on issue
# 10 began) in the same run. Where that target could not run (no git history), against the figure recorded when
# the work began: 975, 983 and 988 µs in 3 repetitions of this harness's ttfb scenario (nginx 14 µs, protocol-relay
# 16 µs in the same run), on the machine of that day; machines since have differed by up to 3x in absolute figures.
BASELINE_CPU_US_PER_REQUEST = 983.0
# Targets that run only the ttfb scenario: the baseline is there for its figures at concurrency 1.
TTFB_ONLY = frozenset({BASELINE})


def kind(scenario: str) -> str:
    if scenario in ("ttfb", "steady"):
        return scenario
    return "paced" if scenario.startswith("paced") else "burst"


def nginx_of(by_target: dict[str, Any]) -> str | None:
    """The nginx row a scenario compares with: 1 worker, or 2 where one process cannot hold the sockets."""
    return "nginx" if "nginx" in by_target else "nginx-2w" if "nginx-2w" in by_target else None


def _get(row: dict[str, Any] | None, key: str) -> float:
    value = (row or {}).get(key, NAN)
    return float(value) if isinstance(value, int | float) else NAN


def _ratio(a: float, b: float) -> float:
    return a / b if a == a and b == b and b != 0 else NAN


def ratios(results: dict[str, dict[str, Any]]) -> dict[str, dict[str, dict[str, float]]]:
    """Every figure of every target over direct's, nginx's and the floor's (protocol-relay), per scenario."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    for scenario, by_target in results.items():
        nginx = nginx_of(by_target)
        floor = by_target.get(FLOOR)
        for name, row in by_target.items():
            entry = out.setdefault(scenario, {}).setdefault(name, {})
            for metric in METRICS[kind(scenario)]:
                if metric.startswith("added_"):
                    # Over direct this is zero by definition; over nginx it is "how much more than nginx adds".
                    # (Over the floor, which adds hundredths of a millisecond, a ratio is noise: the report shows
                    # the two side by side instead.)
                    entry[f"{metric}_x_nginx"] = _ratio(_get(row, metric), _get(by_target.get(nginx or ""), metric))
                    continue
                entry[f"{metric}_x_direct"] = _ratio(_get(row, metric), _get(by_target.get("direct"), metric))
                if nginx:
                    entry[f"{metric}_x_nginx"] = _ratio(_get(row, metric), _get(by_target[nginx], metric))
                if floor is not None:
                    entry[f"{metric}_x_relay"] = _ratio(_get(row, metric), _get(floor, metric))
    return out


def goals(results: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """The issue's targets, each measured where it can be, with whether it is met."""
    out: list[dict[str, Any]] = []

    def add(goal: str, where: str, measured: float, limit: float, unit: str) -> None:
        met = measured <= limit if measured == measured else None
        out.append({"goal": goal, "where": where, "measured": measured, "limit": limit, "unit": unit, "met": met})

    def cpu_x_nginx(scenario: str, name: str) -> tuple[str, float] | None:
        by_target = results.get(scenario, {})
        nginx = nginx_of(by_target)
        if name not in by_target or nginx is None:
            return None
        cpu = _get(by_target[name], "target_cpu_us_per_chunk")
        return f"{name} vs {nginx}, {scenario}", _ratio(cpu, _get(by_target[nginx], "target_cpu_us_per_chunk"))

    for limit in GOAL_PACED_CPU_X_NGINX:
        for scenario, name in (("paced1000", "teeproxy-1w"), ("paced10000", "teeproxy-2w")):
            if found := cpu_x_nginx(scenario, name):
                add(f"CPU per paced chunk at most {limit:g}x nginx's", *found, limit, "x")
    for scenario in results:
        if kind(scenario) == "burst" and (found := cpu_x_nginx(scenario, "teeproxy-1w")):
            add(f"CPU per burst chunk at most {GOAL_BURST_CPU_X_NGINX:g}x nginx's", *found, GOAL_BURST_CPU_X_NGINX, "x")
    ttfb = results.get("ttfb", {})
    for name in ("teeproxy-1w", "teeproxy-2w"):
        if name in ttfb:
            goal = f"added TTFB p50 at most {GOAL_ADDED_TTFB_MS:g} ms"
            add(goal, f"{name}, concurrency 1", _get(ttfb[name], "added_ttfb_p50_ms"), GOAL_ADDED_TTFB_MS, "ms")
    if "teeproxy-1w" in ttfb:
        base = _get(ttfb.get(BASELINE), "target_cpu_us_per_stream")
        if base == base:
            where = f"teeproxy-1w vs {BASELINE} ({BASELINE_AT}) in this run, concurrency 1: {base:,.0f} µs"
        else:
            base = BASELINE_CPU_US_PER_REQUEST
            where = f"teeproxy-1w, concurrency 1; baseline {base:,.0f} µs at {BASELINE_AT}, recorded on another day"
        add("CPU per request halved", where, _get(ttfb["teeproxy-1w"], "target_cpu_us_per_stream"), base / 2, "µs")
        # The 0.4 ms target was half of what the baseline added when it was set (0.80 ms); on a machine slower or
        # faster than that day's, the same goal in the same run's terms.
        base_added = _get(ttfb.get(BASELINE), "added_ttfb_p50_ms")
        if base_added == base_added:
            add(
                "added TTFB p50 at most half the baseline's (the 0.4 ms goal, in this run's terms)",
                f"teeproxy-1w vs {BASELINE} ({BASELINE_AT}): {base_added:.3f} ms",
                _get(ttfb["teeproxy-1w"], "added_ttfb_p50_ms"),
                base_added / 2,
                "ms",
            )
    paced = results.get("paced10000", {}).get("teeproxy-2w")
    goal = f"10,000 streams on 2 workers under {GOAL_10K_RSS_MIB:,.0f} MiB"
    if paced:
        streams = 10000
        peak = _get(paced, "peak_rss_mib")
        held, completed = paced.get("peak_in_flight", 0), paced.get("completed", 0)
        add(goal, "teeproxy-2w, paced10000", peak, GOAL_10K_RSS_MIB, "MiB")
        if (held, completed) != (streams, streams) or paced.get("errors"):
            out[-1]["met"] = False
            out[-1]["detail"] = (
                f"held {held:,} of {streams:,} streams open at once; {completed:,} completed, "
                f"{paced.get('errors', 0):,} errors, {paced.get('unfinished', 0):,} unfinished"
            )
    else:
        add(goal, "not run (quick mode, or teeproxy-2w not selected)", NAN, GOAL_10K_RSS_MIB, "MiB")
    for scenario, by_target in results.items():
        on, off = by_target.get("teeproxy-1w"), by_target.get("teeproxy-1w-nometer")
        if on and off and kind(scenario) != "steady":
            metric = "target_cpu_us_per_stream" if kind(scenario) == "ttfb" else "target_cpu_us_per_chunk"
            where = f"1 worker, {scenario}" + (" (per request)" if kind(scenario) == "ttfb" else "")
            share = _ratio(_get(on, metric), _get(off, metric)) - 1
            add(
                f"metering under {GOAL_METERING_SHARE * 100:g} % of forwarding CPU",
                where,
                share,
                GOAL_METERING_SHARE,
                "share",
            )
    steady = results.get("steady", {}).get("teeproxy-1w")
    if steady:
        limit = 1.0 + STEADY_NOISE
        for figure, key in (("CPU per chunk", "cpu_last_x_first"), ("peak RSS", "peak_rss_last_x_first")):
            goal = f"steady state no worse than fresh: last wave's {figure} ÷ first's at most {limit:.2f}"
            add(goal, f"teeproxy-1w, {steady.get('waves', '?')} waves", _get(steady, key), limit, "x")
    return out


def fmt(value: Any, digits: int = 1) -> str:
    if not isinstance(value, int | float) or value != value:
        return "–"
    return f"{value:,.{digits}f}"


def fx(value: float) -> str:
    return "–" if value != value else f"{value:.2f}×"


def _measured(goal: dict[str, Any]) -> str:
    value = goal["measured"]
    if goal["unit"] == "share":
        return "–" if value != value else f"{value * 100:+.1f} %"
    if goal["unit"] == "x":
        return fx(value)
    return f"{fmt(value, 3 if goal['unit'] == 'ms' else 0)} {goal['unit']}"


def _fxs(values: Any, digits: int = 1) -> str:
    """Per-wave figures, separated by a slash."""
    return " / ".join(fmt(v, digits) for v in values) if isinstance(values, list) else "–"


def _bound(value: Any) -> str:
    """A histogram's bound on the longest pause."""
    if value is None:
        return "–"
    return "above the largest bucket" if value == float("inf") else f"≤ {value:g} ms"


def markdown(summary: dict[str, Any]) -> str:
    m = summary["machine"]
    plan = summary["plan"]
    results = summary["results"]
    rat = summary["ratios"]
    notes: dict[str, str] = summary["notes"]
    versions = ", ".join(f"{k} {v}" for k, v in m["versions"].items())
    lines = [
        f"Command: `{summary['command']}` ({summary['duration_s']:.0f} s), on {m['cpu'] or 'an unnamed CPU'}: "
        f"**{m['cores']} cores shared by the mock upstream, the load generator and the target**, "
        f"{m['memory_gib']} GiB, "
        f"Linux {m['kernel']}, fd limit {m['fd_limit']:,}; {versions}; teeproxy {summary['teeproxy']}. "
        f"Medians of {plan['reps']} repetitions, targets interleaved within each. Throughput is a lower bound for "
        "every row alike (the 2 cores are shared); CPU µs per chunk is the target's own process tree, whole."
        + (
            f" `{FLOOR}` is a bare asyncio Protocol TCP relay, no HTTP: the Python floor."
            if FLOOR in plan["targets"]
            else ""
        ),
        "",
        "| goal | where | measured | met |",
        "|---|---|---|---|",
    ]
    for goal in summary["goals"]:
        met = {True: "yes", False: "**no**", None: "–"}[goal["met"]]
        detail = f" ({goal['detail']})" if goal.get("detail") else ""
        lines.append(f"| {goal['goal']} | {goal['where']} | {_measured(goal)}{detail} | {met} |")

    def missing_rows(present: dict[str, Any], columns: int, only: Any = None, exclude: Any = ()) -> list[str]:
        rows = []
        for name in plan["targets"]:
            if name not in present and name in notes and (only is None or name in only) and name not in exclude:
                rows.append(f"| {name} | {notes[name]} |" + " |" * (columns - 2))
        return rows

    lines += _floor(results, rat)
    ttfb = results.get("ttfb", {})
    if ttfb:
        lines += [
            "",
            f"**Time to first byte**, concurrency 1, {plan['ttfb_streams']} streams of {plan['ttfb_chunks']} chunks "
            "(CPU per request: the target's CPU during the run ÷ streams; the `direct` row's is the mock's):",
            "",
            "| target | TTFB p50 ms | TTFB p99 ms | added p50 ms | added p99 ms | added p50 × nginx's | "
            "CPU µs/request | CPU × nginx |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for name, row in ttfb.items():
            r = rat["ttfb"][name]
            lines.append(
                f"| {name} | {fmt(row['ttfb_p50_ms'], 3)} | {fmt(row['ttfb_p99_ms'], 3)} | "
                f"{fmt(row.get('added_ttfb_p50_ms'), 3)} | {fmt(row.get('added_ttfb_p99_ms'), 3)} | "
                f"{fx(r.get('added_ttfb_p50_ms_x_nginx', NAN))} | {fmt(row.get('target_cpu_us_per_stream'), 0)} | "
                f"{fx(r.get('target_cpu_us_per_stream_x_nginx', NAN))} |"
            )
        lines += missing_rows(ttfb, 9)
    for concurrency in plan["concurrencies"]:
        scenario = f"c{concurrency}"
        rows = results.get(scenario, {})
        if not rows:
            continue
        lines += [
            "",
            f"**Burst, concurrency {concurrency}**: streams of {plan['burst_chunks']} chunks of "
            f"{plan['chunk_bytes']} B sent back to back, for {plan['burst_s']:g} s:",
            "",
            "| target | streams/s | chunks/s | × direct | × nginx | CPU µs/chunk | CPU × nginx | max gap p99 ms | "
            "errors |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for name, row in rows.items():
            r = rat[scenario][name]
            lines.append(
                f"| {name} | {fmt(row['streams_per_s'])} | {fmt(row['chunks_per_s'], 0)} | "
                f"{fx(r['chunks_per_s_x_direct'])} | {fx(r.get('chunks_per_s_x_nginx', NAN))} | "
                f"{fmt(row['target_cpu_us_per_chunk'])} | {fx(r.get('target_cpu_us_per_chunk_x_nginx', NAN))} | "
                f"{fmt(row['max_gap_p99_ms'])} | {row['errors']} |"
            )
        lines += missing_rows(rows, 10, exclude=TTFB_ONLY)
    for paced in plan["paced"]:
        scenario = f"paced{paced['streams']}"
        rows = results.get(scenario, {})
        if not rows:
            continue
        lines += [
            "",
            f"**Paced, {paced['streams']:,} streams open at once**: one {plan['chunk_bytes']} B chunk per "
            f"{paced['delay_ms']} ms, {paced['chunks']} chunks each; a fresh target process for every run:",
            "",
            "| target | open at peak | completed | idle RSS MiB | peak RSS MiB | RSS/stream KiB | RSS × nginx | "
            "CPU µs/chunk | CPU × nginx | chunks/s | max gap p99 ms |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for name, row in rows.items():
            r = rat[scenario][name]
            lines.append(
                f"| {name} | {row['peak_in_flight']:,} | {row['completed']:,} | {fmt(row.get('idle_rss_mib'))} | "
                f"{fmt(row.get('peak_rss_mib'))} | {fmt(row.get('rss_per_stream_kib'))} | "
                f"{fx(r.get('peak_rss_mib_x_nginx', NAN))} | {fmt(row['target_cpu_us_per_chunk'])} | "
                f"{fx(r.get('target_cpu_us_per_chunk_x_nginx', NAN))} | {fmt(row['chunks_per_s'], 0)} | "
                f"{fmt(row['max_gap_p99_ms'])} |"
            )
        lines += missing_rows(rows, 12, exclude=TTFB_ONLY)
    steady, steady_plan = results.get("steady", {}), plan.get("steady")
    if steady and steady_plan:
        lines += [
            "",
            f"**Steady state**: {steady_plan['waves']} waves of {steady_plan['streams']:,} streams (one "
            f"{plan['chunk_bytes']} B chunk per {steady_plan['delay_ms']} ms, {steady_plan['chunks']} chunks each) "
            "back to back on one process, started fresh and warmed up once; wave by wave:",
            "",
            "| target | CPU µs/chunk | last ÷ first | peak RSS MiB | last ÷ first | RSS after MiB | chunks/s | "
            "errors |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for name, row in steady.items():
            lines.append(
                f"| {name} | {_fxs(row.get('target_cpu_us_per_chunk_by_wave'))} | "
                f"{fx(_get(row, 'cpu_last_x_first'))} | {_fxs(row.get('peak_rss_mib_by_wave'))} | "
                f"{fx(_get(row, 'peak_rss_last_x_first'))} | {_fxs(row.get('rss_after_mib_by_wave'))} | "
                f"{_fxs(row.get('chunks_per_s_by_wave'), 0)} | "
                f"{row['errors']} |"
            )
        lines += missing_rows(steady, 9, only=steady_plan.get("targets"))
    lines += _gc(results)
    on_off = [g for g in summary["goals"] if g["goal"].startswith("metering")]
    if on_off:
        lines += ["", "**Metering on vs off** (teeproxy, 1 worker), CPU µs per chunk (per request at c1):", ""]
        lines += ["| scenario | metering on | metering off | metering's share |", "|---|---|---|---|"]
        for goal in on_off:
            scenario = goal["where"].split(", ")[1].split(" ")[0]
            metric = "target_cpu_us_per_stream" if scenario == "ttfb" else "target_cpu_us_per_chunk"
            on = results[scenario]["teeproxy-1w"].get(metric)
            off = results[scenario]["teeproxy-1w-nometer"].get(metric)
            lines.append(f"| {scenario} | {fmt(on)} | {fmt(off)} | {_measured(goal)} |")
    burst = results.get(f"c{plan['concurrencies'][0]}", {}) if plan["concurrencies"] else {}
    if "direct" in burst:
        direct = burst["direct"]
        lines += [
            "",
            f"The harness's own costs at concurrency {plan['concurrencies'][0]}, direct: the mock upstream "
            f"{fmt(direct['target_cpu_us_per_chunk'])} µs of CPU per chunk, the load generator "
            f"{fmt(direct['loadgen_cpu_us_per_chunk'])} µs; {fmt(direct['chunks_per_s'], 0)} chunks/s straight "
            "from the mock, more than any proxy row.",
        ]
    other = {k: v for k, v in notes.items() if k not in plan["targets"]}
    if other:
        lines += ["", "Notes:", ""] + [f"- {k}: {v}" for k, v in other.items()]
    return "\n".join(lines) + "\n"


def _floor(results: dict[str, dict[str, Any]], rat: dict[str, dict[str, dict[str, float]]]) -> list[str]:
    """How far from the floor: teeproxy over protocol-relay, figure by figure, where both ran."""
    rows = []
    ttfb = results.get("ttfb", {})
    for name in ("teeproxy-1w", "teeproxy-2w"):
        if name in ttfb and FLOOR in ttfb:
            rows.append(
                f"| {name} | added TTFB p50, ms | {fmt(ttfb[name].get('added_ttfb_p50_ms'), 3)} | "
                f"{fmt(ttfb[FLOOR].get('added_ttfb_p50_ms'), 3)} | – |"
            )
    figures = [("ttfb", "target_cpu_us_per_stream", "CPU µs per request", 0)]
    figures += [(s, "target_cpu_us_per_chunk", "CPU µs per chunk", 1) for s in results if kind(s) in ("burst", "paced")]
    figures += [
        ("steady", "target_cpu_us_per_chunk", "CPU µs per chunk", 1),
        ("paced1000", "peak_rss_mib", "peak RSS MiB", 1),
    ]
    for scenario, metric, label, digits in figures:
        by_target = results.get(scenario, {})
        for name in ("teeproxy-1w", "teeproxy-2w"):
            if name in by_target and FLOOR in by_target:
                ratio = rat.get(scenario, {}).get(name, {}).get(f"{metric}_x_relay", NAN)
                rows.append(
                    f"| {name} | {label}, {scenario} | {fmt(by_target[name].get(metric), digits)} | "
                    f"{fmt(by_target[FLOOR].get(metric), digits)} | {fx(ratio)} |"
                )
    if not rows:
        return []
    head = [
        "",
        f"**How far from the floor**: teeproxy against `{FLOOR}` (bench/protocol_relay.py: one upstream connection "
        "per client connection, bytes both ways, no HTTP), figure by figure:",
        "",
        f"| teeproxy | figure | teeproxy | {FLOOR} | teeproxy ÷ floor |",
        "|---|---|---|---|---|",
    ]
    return head + rows


def _gc(results: dict[str, dict[str, Any]]) -> list[str]:
    """Garbage-collector pauses of the teeproxy targets, from their /metrics around each run."""
    rows, absent = [], False
    for scenario, by_target in results.items():
        for name, row in by_target.items():
            if not name.startswith("teeproxy") or "gc_pause_ms" not in row:
                continue
            if row["gc_pause_ms"] is None:
                absent = True
                continue
            rows.append(
                f"| {scenario} | {name} | {fmt(row.get('gc_collections'), 0)} | {fmt(row.get('gc_pause_ms'))} | "
                f"{_bound(row.get('gc_max_bucket_ms'))} | {fmt(row.get('gc_gen2_collections'), 0)} | "
                f"{fmt(row.get('gc_gen2_pause_ms'))} | {_bound(row.get('gc_gen2_max_bucket_ms'))} |"
            )
    if rows:
        return [
            "",
            "**Garbage-collector pauses** (teeproxy's `teeproxy_gc_pause_seconds`, all workers, over each run; "
            "medians over the repetitions):",
            "",
            "| scenario | target | collections | pause ms, total | longest | gen-2 collections | gen-2 pause ms | "
            "longest gen-2 |",
            "|---|---|---|---|---|---|---|---|",
            *rows,
        ]
    if absent:
        return [
            "",
            "Garbage-collector pauses: this teeproxy's /metrics has no `teeproxy_gc_pause_seconds` (null in the JSON).",
        ]
    return []


def main(argv: list[str]) -> int:
    path = pathlib.Path(argv[0])
    summary = json.loads(path.read_text())
    summary["ratios"] = ratios(summary["results"])
    summary["goals"] = goals(summary["results"])
    summary.setdefault("teeproxy", summary["machine"].pop("teeproxy_commit", "?"))
    path.write_text(json.dumps(summary, indent=1) + "\n")
    path.with_suffix(".md").write_text(markdown(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
