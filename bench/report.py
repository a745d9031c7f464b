"""From the medians to what a reader checks: ratios to direct and to nginx, the issue's goals, a markdown page.

python -m bench.report bench/results/latest.json   # re-render latest.md from the JSON, without a re-run
"""

from __future__ import annotations

import json
import pathlib
import sys
from typing import Any

NAN = float("nan")
METRICS = {
    "ttfb": ["ttfb_p50_ms", "ttfb_p99_ms", "added_ttfb_p50_ms", "added_ttfb_p99_ms"],
    "burst": ["streams_per_s", "chunks_per_s", "target_cpu_us_per_chunk", "max_gap_p99_ms"],
    "paced": ["peak_rss_mib", "rss_per_stream_kib", "target_cpu_us_per_chunk", "max_gap_p99_ms", "chunks_per_s"],
}
GOAL_CPU_X_NGINX = 2.0
GOAL_ADDED_TTFB_MS = 0.5
GOAL_10K_RSS_MIB = 1024.0
GOAL_METERING_SHARE = 0.10


def kind(scenario: str) -> str:
    return "ttfb" if scenario == "ttfb" else "paced" if scenario.startswith("paced") else "burst"


def nginx_of(by_target: dict[str, Any]) -> str | None:
    """The nginx row a scenario compares with: 1 worker, or 2 where one process cannot hold the sockets."""
    return "nginx" if "nginx" in by_target else "nginx-2w" if "nginx-2w" in by_target else None


def _get(row: dict[str, Any] | None, key: str) -> float:
    value = (row or {}).get(key, NAN)
    return float(value) if isinstance(value, int | float) else NAN


def _ratio(a: float, b: float) -> float:
    return a / b if a == a and b == b and b != 0 else NAN


def ratios(results: dict[str, dict[str, Any]]) -> dict[str, dict[str, dict[str, float]]]:
    """Every figure of every target over direct's and over nginx's, per scenario."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    for scenario, by_target in results.items():
        nginx = nginx_of(by_target)
        for name, row in by_target.items():
            entry = out.setdefault(scenario, {}).setdefault(name, {})
            for metric in METRICS[kind(scenario)]:
                if metric.startswith("added_"):
                    # Over direct this is zero by definition; over nginx it is "how much more than nginx adds".
                    entry[f"{metric}_x_nginx"] = _ratio(_get(row, metric), _get(by_target.get(nginx or ""), metric))
                    continue
                entry[f"{metric}_x_direct"] = _ratio(_get(row, metric), _get(by_target.get("direct"), metric))
                if nginx:
                    entry[f"{metric}_x_nginx"] = _ratio(_get(row, metric), _get(by_target[nginx], metric))
    return out


def goals(results: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """The issue's targets, each measured where it can be, with whether it is met."""
    out: list[dict[str, Any]] = []

    def add(goal: str, where: str, measured: float, limit: float, unit: str) -> None:
        met = measured <= limit if measured == measured else None
        out.append({"goal": goal, "where": where, "measured": measured, "limit": limit, "unit": unit, "met": met})

    for scenario, by_target in results.items():
        if kind(scenario) == "ttfb":
            continue
        nginx = nginx_of(by_target)
        for name in ("teeproxy-1w", "teeproxy-2w"):
            if name in by_target and nginx and (name == "teeproxy-1w" or scenario == "paced10000"):
                cpu = _ratio(
                    _get(by_target[name], "target_cpu_us_per_chunk"), _get(by_target[nginx], "target_cpu_us_per_chunk")
                )
                add("CPU per chunk at most 2x nginx's", f"{name} vs {nginx}, {scenario}", cpu, GOAL_CPU_X_NGINX, "x")
    for name in ("teeproxy-1w", "teeproxy-2w"):
        row = results.get("ttfb", {}).get(name)
        if row:
            add(
                "added TTFB p50 at most 0.5 ms",
                f"{name}, concurrency 1",
                _get(row, "added_ttfb_p50_ms"),
                GOAL_ADDED_TTFB_MS,
                "ms",
            )
    paced = results.get("paced10000", {}).get("teeproxy-2w")
    goal = "10,000 concurrent streams under 1 GiB RSS"
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
        if kind(scenario) != "ttfb" and on and off:
            share = _ratio(_get(on, "target_cpu_us_per_chunk"), _get(off, "target_cpu_us_per_chunk")) - 1
            add("metering under 10 % of forwarding CPU", f"1 worker, {scenario}", share, GOAL_METERING_SHARE, "share")
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
        "every row alike (the 2 cores are shared); CPU µs per chunk is the target's own process tree, whole.",
        "",
        "| goal | where | measured | met |",
        "|---|---|---|---|",
    ]
    for goal in summary["goals"]:
        met = {True: "yes", False: "**no**", None: "–"}[goal["met"]]
        detail = f" ({goal['detail']})" if goal.get("detail") else ""
        lines.append(f"| {goal['goal']} | {goal['where']} | {_measured(goal)}{detail} | {met} |")

    def missing_rows(present: dict[str, Any], columns: int) -> list[str]:
        rows = []
        for name in plan["targets"]:
            if name not in present and name in notes:
                rows.append(f"| {name} | {notes[name]} |" + " |" * (columns - 2))
        return rows

    ttfb = results.get("ttfb", {})
    if ttfb:
        lines += [
            "",
            f"**Time to first byte**, concurrency 1, {plan['ttfb_streams']} streams of {plan['ttfb_chunks']} chunks:",
            "",
            "| target | TTFB p50 ms | TTFB p99 ms | added p50 ms | added p99 ms | added p50 × nginx's |",
            "|---|---|---|---|---|---|",
        ]
        for name, row in ttfb.items():
            lines.append(
                f"| {name} | {fmt(row['ttfb_p50_ms'], 3)} | {fmt(row['ttfb_p99_ms'], 3)} | "
                f"{fmt(row.get('added_ttfb_p50_ms'), 3)} | {fmt(row.get('added_ttfb_p99_ms'), 3)} | "
                f"{fx(rat['ttfb'][name].get('added_ttfb_p50_ms_x_nginx', NAN))} |"
            )
        lines += missing_rows(ttfb, 7)
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
        lines += missing_rows(rows, 10)
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
        lines += missing_rows(rows, 12)
    on_off = [g for g in summary["goals"] if g["goal"].startswith("metering")]
    if on_off:
        lines += ["", "**Metering on vs off** (teeproxy, 1 worker), CPU µs per chunk:", ""]
        lines += ["| scenario | metering on | metering off | metering's share |", "|---|---|---|---|"]
        for goal in on_off:
            scenario = goal["where"].split(", ")[1]
            on = results[scenario]["teeproxy-1w"]["target_cpu_us_per_chunk"]
            off = results[scenario]["teeproxy-1w-nometer"]["target_cpu_us_per_chunk"]
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
