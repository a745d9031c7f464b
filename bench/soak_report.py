"""The soak's audit and its report: what the ledger, the clients, the upstream and the proxy's log say.

The audit's question: did every request the upstream saw get exactly one ledger record? A request is known by
its soak id on all sides (the record's `request_id`, the upstream's account of the bodies it read, the clients'
log). Responses whose head named a provider are checked the same way. Then: worker crashes, tracebacks in the
proxy's log (grouped by exception and innermost frame, each with the soak streams it happened on and the
command that replays them), the other lines it logged, the outcomes and usage statuses in the ledger, and
"clean" streams (a good first upstream attempt and a client that reads it all) that did not come through whole.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import re
from collections import Counter
from typing import Any

from proxy.ledger import SQLiteBackend

# Where a stream ought to come through whole: its first attempt's upstream fault is one of these and its client
# reads normally. Reported (not an exit condition: on 2 busy cores a timeout can fire on a good stream too).
CLEAN_FAULTS = frozenset({"normal", "slow_drip", "big_line"})
TRACEBACK = b"Traceback (most recent call last)"


def _ledger(workdir: pathlib.Path) -> tuple[list[Any], set[str]]:
    records = SQLiteBackend(str(workdir / "ledger.db")).query(None, None)
    spilled: set[str] = set()
    for spill in workdir.glob("*.spill.jsonl"):
        spilled |= {json.loads(line)["request_id"] for line in spill.read_text().splitlines() if line.strip()}
    return records, spilled


def _streams(workdir: pathlib.Path) -> list[dict[str, Any]]:
    path = workdir / "streams.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def audit(
    args: argparse.Namespace,
    workdir: pathlib.Path,
    clients: dict[str, Any],
    seen: dict[str, Any],
    *,
    elapsed_s: float,
    peak_rss_kib: int,
    workers_seen: int,
    workers: int,
    alive_at_end: bool,
    proxy_status: int | None,
) -> dict[str, Any]:
    """Every figure of the report, from the ledger, the clients' and the upstream's accounts, and the log."""
    records, spilled = _ledger(workdir)
    by_id: dict[str, Any] = {}
    duplicates = 0
    for record in records:
        duplicates += record.request_id in by_id
        by_id[record.request_id] = record
    recorded = set(by_id) | spilled
    upstream_saw = set(seen["seen"])
    streams = _streams(workdir)
    answered = {s["sid"] for s in streams if s.get("provider")}
    missing = sorted(upstream_saw - recorded)
    missing_answered = sorted(answered - recorded)
    plans = {s["sid"]: s for s in streams}

    clean = [s for s in streams if s["up"][0] in CLEAN_FAULTS and s["client"] == "normal"]
    clean_cut = [s["sid"] for s in clean if not s["result"].startswith("complete_2xx")]
    clean_not_completed = [s["sid"] for s in clean if s["sid"] in by_id and by_id[s["sid"]].outcome != "completed"]

    log = (workdir / "proxy.log").read_bytes()
    tracebacks = log.count(TRACEBACK)
    distinct = distinct_tracebacks(log, plans)
    other_lines = Counter(
        _message(line)
        for line in log.splitlines()
        if line.strip() and b"[INFO]" not in line and not line.startswith((b" ", TRACEBACK))
    )
    crashes = max(0, workers_seen - workers) + (0 if alive_at_end else 1)

    return {
        "streams_planned": args.streams,
        "interrupted_after_s": args.interrupt_after_s,
        "time_limit_s": args.time_limit_s,
        "concurrency": args.concurrency,
        "seed": args.seed,
        "workers": workers,
        "elapsed_s": round(elapsed_s, 1),
        "requests_sent": clients["sent"],
        "requests_upstream_saw": len(upstream_saw),
        "upstream_attempts": seen["requests"],
        "upstream_requests_without_id": seen["no_id"],
        "ledger_records": len(records),
        "spilled_records": len(spilled),
        "records_missing": len(missing),
        "records_missing_for_answered": len(missing_answered),
        "answered_by_a_provider": len(answered),
        "duplicate_records": duplicates,
        "missing_sample": [plans.get(sid, {"sid": sid}) for sid in (missing + missing_answered)[:10]],
        "proxy_crashes": crashes,
        "worker_pids_seen": workers_seen,
        "proxy_exit_status": proxy_status,
        "tracebacks": tracebacks,
        "distinct_tracebacks": distinct,
        "first_traceback": distinct[0]["text"] if distinct else None,
        "other_log_lines": sum(other_lines.values()),
        "other_log_messages": dict(other_lines.most_common(8)),
        "peak_rss_mib": round(peak_rss_kib / 1024, 1),
        "outcomes": dict(Counter(r.outcome for r in records).most_common()),
        "usage_status": dict(Counter(r.usage_status for r in records).most_common()),
        "failed_over": sum(1 for r in records if (r.attempts or 1) > 1),
        "upstream_faults": seen["faults"],
        "upstream_kinds": seen["kinds"],
        "captures_served_from": seen["captures"],
        "clients": clients,
        "clean_streams": len(clean),
        "clean_streams_cut": len(clean_cut),
        "clean_streams_not_completed": len(clean_not_completed),
        "clean_sample": (clean_cut + clean_not_completed)[:10],
        "workdir": str(workdir),
    }


def distinct_tracebacks(log: bytes, plans: dict[str, Any]) -> list[dict[str, Any]]:
    """The tracebacks in the proxy's log, one entry per (exception type, innermost frame): how often, the first
    one's text (with the line logged before it), and the soak streams named in those lines, with their plans."""
    lines = [line.decode("utf-8", "replace") for line in log.splitlines() if b"socket.send() raised" not in line]
    found: dict[tuple[str, str], dict[str, Any]] = {}
    for i, line in enumerate(lines):
        if not line.startswith(TRACEBACK.decode()):
            continue
        end = i + 1
        while end < len(lines) and lines[end].startswith(" "):
            end += 1
        exception = lines[end] if end < len(lines) else "?"
        frames = [text.strip() for text in lines[i + 1 : end] if text.strip().startswith("File ")]
        key = (exception.split(":")[0], frames[-1] if frames else "?")
        entry = found.setdefault(key, {"count": 0, "exception": exception[:300], "where": key[1], "streams": []})
        entry["count"] += 1
        if "text" not in entry:
            entry["text"] = "\n".join(lines[max(0, i - 1) : end + 1])
        ids = re.findall(r"soak-\d+-\d+", lines[i - 1]) if i else []
        if ids and len(entry["streams"]) < 3:
            entry["streams"].append(plans.get(ids[0], {"sid": ids[0]}))
    return sorted(found.values(), key=lambda e: -e["count"])


def _message(line: bytes) -> str:
    """A log line without its timestamp and pid, so that repeats of one message count together."""
    text = line.decode("utf-8", "replace")
    text = re.sub(r"^\[[^\]]*\] \[\d+\] ", "", text)  # hypercorn's "[time] [pid] [LEVEL] message"
    text = re.sub(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ ", "", text)  # logging's asctime
    return re.sub(r"soak-\d+-\d+", "soak-<id>", text)[:160]


def failed(report: dict[str, Any]) -> list[str]:
    checks = {
        "records missing": report["records_missing"] + report["records_missing_for_answered"],
        "duplicate records": report["duplicate_records"],
        "proxy crashes": report["proxy_crashes"],
        "tracebacks": report["tracebacks"],
        "responses holding another stream's upstream bytes": report["clients"]["crosstalk"],
    }
    return [f"{name}: {value}" for name, value in checks.items() if value]


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{name} {value:,}" for name, value in counts.items())


def render(report: dict[str, Any]) -> str:
    r = report
    c = r["clients"]
    rate = r["requests_sent"] / r["elapsed_s"] if r["elapsed_s"] else 0.0
    lines = [
        f"teeproxy soak: {r['streams_planned']:,} streams planned or {r['time_limit_s']:g} s, "
        f"{r['workers']} workers, concurrency {r['concurrency']}, seed {r['seed']}"
        + (f"; proxy Ctrl-C'd at {r['interrupted_after_s']:g} s" if r["interrupted_after_s"] is not None else ""),
        f"  requests sent            {r['requests_sent']:>9,}   ({r['elapsed_s']:g} s, {rate:,.1f}/s)",
        f"  requests upstream saw    {r['requests_upstream_saw']:>9,}   ({r['upstream_attempts']:,} attempts; "
        f"{r['failed_over']:,} records failed over)",
        f"  ledger records           {r['ledger_records']:>9,}   ({r['spilled_records']:,} spilled)",
        f"  records missing          {r['records_missing']:>9,}   (also {r['records_missing_for_answered']:,} "
        f"of the {r['answered_by_a_provider']:,} a provider answered)",
        f"  duplicate records        {r['duplicate_records']:>9,}",
        f"  proxy crashes            {r['proxy_crashes']:>9,}   (exit status {r['proxy_exit_status']})",
        f"  tracebacks in its log    {r['tracebacks']:>9,}   ({r['other_log_lines']:,} other lines besides INFO)",
        f"  peak RSS, process tree   {r['peak_rss_mib']:>9,.1f} MiB",
        f"  ledger outcomes:   {_counts(r['outcomes'])}",
        f"  usage status:      {_counts(r['usage_status'])}",
        f"  upstream faults:   {_counts(r['upstream_faults'])}",
        f"  upstream kinds:    {_counts(r['upstream_kinds'])}",
        f"  client behaviour:  {_counts(c['by_client'])}",
        f"  client results:    {_counts(c['results'])}",
        f"  client statuses:   {_counts(c['statuses'])}; request id echoed wrong: {c['id_mismatch']:,}; "
        f"trailers received: {c['trailers_seen']:,}",
        f"  inline usage comments received: {c['inline_comments']:,}, of which not at a line start: "
        f"{c['inline_comments_mid_line']:,}",
        f"  responses holding another stream's upstream bytes: {c['crosstalk']:,}"
        + (f" (e.g. {', '.join(c['crosstalk_sample'][:3])})" if c["crosstalk"] else ""),
        f"  clean streams (first upstream attempt good, client normal): {r['clean_streams']:,}; "
        f"not through whole: {r['clean_streams_cut']:,}; recorded other than completed: "
        f"{r['clean_streams_not_completed']:,}",
    ]
    for message, count in r["other_log_messages"].items():
        lines.append(f"  log: {count:>7,} x {message}")
    problems = failed(report)
    lines.append("RESULT: " + ("FAIL (" + "; ".join(problems) + ")" if problems else "PASS"))
    if problems:
        lines.append(f"  work directory kept: {r['workdir']}")
        for sample in r["missing_sample"]:
            lines.append(f"  missing: {json.dumps(sample)[:400]}")
        for entry in r["distinct_tracebacks"]:
            lines.append(f"  traceback x {entry['count']:,}: {entry['exception']}\n    at {entry['where']}")
            for stream in entry["streams"]:
                keys = ("n", "kind", "up", "client", "result", "status")
                lines.append(f"    stream {json.dumps({k: stream.get(k) for k in keys})}")
            if entry["streams"]:
                only = ",".join(str(stream["n"]) for stream in entry["streams"] if "n" in stream)
                lines.append(f"    replay: python -m bench.soak --seed {r['seed']} --only {only}")
            lines.append("    " + entry["text"].replace("\n", "\n    ")[:2500])
    return "\n".join(lines)
