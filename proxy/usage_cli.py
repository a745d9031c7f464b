"""`teeproxy usage`: read the ledger.

Without `--group-by`, one line per request: `--json` prints one object per line with exactly the ledger's
field names, `--csv` those fields as columns; else an aligned table and the totals. With `--group-by`, the
spend totals of `proxy.spend` (the same as `GET /admin/usage`): a table, or the endpoint's own JSON or CSV.
The filters (`--key`, `--model`, `--provider`, `--since`, `--until`, `--request-id`) narrow both.

A ledger that is not there is an error that names the path (exit 2), never an empty database made on the spot.
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
from decimal import Decimal
from typing import Any, TextIO

import msgspec

from proxy.ledger import (
    FIELDS,
    LedgerRecord,
    LedgerUnavailable,
    open_backend,
    recover_files,
    spill_path_for,
    unrecovered,
)
from proxy.spend import GROUPS, SpendQuery, SpendReport, Totals, make_filter, parse_group_by, plain_decimal, spend

_COLUMNS = (
    ("time", 26),
    ("request_id", 32),
    ("key_name", 10),
    ("model", 22),
    ("outcome", 19),
    ("input_tokens", 9),
    ("cached_tokens", 9),
    ("output_tokens", 9),
    ("cost", 12),
    ("usage_status", 9),
)
# The grouped table's headings for the totals, in proxy.spend.TOTAL_FIELDS' order.
_TOTAL_HEADINGS = ("requests", "input", "cached", "cache_write", "output", "reasoning", "cost_usd", "unpriced")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--request-id", help="only this request")
    parser.add_argument("--key", help="only this client key's requests (its name in [[keys]])")
    parser.add_argument("--model", help="only this model")
    parser.add_argument("--provider", help="only this provider (its name in [[providers]])")
    parser.add_argument("--since", help="only requests that started at or after this ISO 8601 time (UTC if no offset)")
    parser.add_argument("--until", help="only requests that started before this ISO 8601 time")
    parser.add_argument(
        "--group-by",
        metavar="GROUPS",
        help=f"totals per group instead of one line per request: {', '.join(GROUPS)}, or several, e.g. day,model",
    )
    output = parser.add_mutually_exclusive_group()
    output.add_argument("--json", action="store_true", help="JSON (records: one object per line)")
    output.add_argument("--csv", action="store_true", help="CSV with a header line")
    parser.add_argument(
        "--recover",
        action="store_true",
        help="first write to the ledger what only the journals of stopped workers and the spill file hold",
    )


def run(args: argparse.Namespace, path: str | None, url: str | None) -> int:
    def option(name: str) -> Any:
        return getattr(args, name, None)  # callers from before the filters pass fewer options

    try:
        where = make_filter(
            key=option("key"),
            model=option("model"),
            provider=option("provider"),
            since=option("since"),
            until=option("until"),
            request_id=option("request_id"),
        )
        group_by = None if (groups := option("group_by")) is None else parse_group_by([groups])
        backend = open_backend(path, url)
        spill = spill_path_for(path, url)
        if option("recover"):
            backend.open()
            try:
                recovered = recover_files(backend, spill)
            finally:
                backend.close()
            print(f"teeproxy usage: recovered {recovered} records into the ledger", file=sys.stderr)
        if group_by is not None:
            report = spend(backend, SpendQuery(where=where, group_by=group_by))
        else:
            records = backend.records(where)
    except ValueError as exc:
        print(f"teeproxy usage: {exc}", file=sys.stderr)
        return 2
    except LedgerUnavailable as exc:
        hint = moved_ledger_hint(path) if url is None else ""
        print(f"teeproxy usage: {exc}" + (f"\n  ({hint})" if hint else ""), file=sys.stderr)
        return 2
    out = sys.stdout
    if group_by is not None:
        if option("json"):
            out.write(report.to_json().decode() + "\n")
        elif option("csv"):
            out.write(report.to_csv())
        else:
            _write_report_table(report, out)
    elif option("json"):
        encode = msgspec.json.Encoder().encode
        for record in records:
            out.write(encode(record).decode() + "\n")
    elif option("csv"):
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(FIELDS)
        writer.writerows([_csv_cell(getattr(record, name)) for name in FIELDS] for record in records)
    else:
        _write_records_table(records, out)
    _warn_unrecovered(spill)
    return 0


def _warn_unrecovered(spill: str) -> None:
    """Records on disk beside the ledger and not in it: say so, and how to get them in."""
    journals, spilled = unrecovered(spill)
    if journals:
        print(
            f"teeproxy usage: {journals} journal(s) of stopped workers hold records not yet in the ledger; the next "
            "`teeproxy serve`, or `teeproxy usage --recover`, writes them",
            file=sys.stderr,
        )
    if spilled:
        print(
            f"teeproxy usage: {spilled} records are in the spill file {spill} (the database was unreachable at "
            "shutdown); the next `teeproxy serve`, or `teeproxy usage --recover`, writes them",
            file=sys.stderr,
        )


def moved_ledger_hint(path: str | None) -> str:
    """Ledger paths were once relative to the current directory: if there is no ledger at `path` but there is
    one of its name here, say so (else "")."""
    if path is None or os.path.exists(path):
        return ""
    here = os.path.abspath(os.path.basename(path))
    if here != os.path.abspath(path) and os.path.isfile(here):
        return (
            f"there is a ledger at {here}: [ledger] path is relative to the config file, not to the current"
            " directory; move the file there, or point [ledger] path at it"
        )
    return ""


def _csv_cell(value: object) -> object:
    return "" if value is None else value


def _cell(record: LedgerRecord, name: str) -> str:
    value = getattr(record, name)
    return "-" if value is None else str(value)


def _write_records_table(records: list[LedgerRecord], out: TextIO) -> None:
    out.write("  ".join(name.ljust(width) for name, width in _COLUMNS).rstrip() + "\n")
    for record in records:
        out.write("  ".join(_cell(record, name).ljust(width) for name, width in _COLUMNS).rstrip() + "\n")
    cost = sum((Decimal(r.cost) for r in records if r.cost is not None), Decimal(0))
    unpriced = sum(1 for r in records if r.cost_status == "unpriced")
    out.write(
        f"{len(records)} requests, {sum(r.input_tokens for r in records)} input tokens "
        f"({sum(r.cached_tokens for r in records)} cached), {sum(r.output_tokens for r in records)} output tokens, "
        f"${cost} ({unpriced} unpriced)\n"
    )


def _write_report_table(report: SpendReport, out: TextIO) -> None:
    """Group labels left-aligned, figures right-aligned, a total line under a rule."""
    head = [*report.group_by, *_TOTAL_HEADINGS]
    lines = [[*("-" if label is None else label for label in labels), *_figures(t)] for labels, t in report.rows]
    total = ["total", *[""] * (len(report.group_by) - 1)] if report.group_by else []
    lines_with_total = [*lines, [*total, *_figures(report.total)]] if report.group_by else lines
    widths = [max(len(row[i]) for row in [head, *lines_with_total]) for i in range(len(head))]
    labels = len(report.group_by)

    def line(cells: list[str]) -> str:
        return "  ".join(
            c.ljust(w) if i < labels else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        )

    out.write(line(head).rstrip() + "\n")
    for row in lines:
        out.write(line(row).rstrip() + "\n")
    if report.group_by:
        out.write("  ".join("-" * w for w in widths) + "\n")
        out.write(line(lines_with_total[-1]).rstrip() + "\n")


def _figures(totals: Totals) -> list[str]:
    return [
        f"{totals.requests:,}",
        f"{totals.input_tokens:,}",
        f"{totals.cached_tokens:,}",
        f"{totals.cache_write_tokens:,}",
        f"{totals.output_tokens:,}",
        f"{totals.reasoning_tokens:,}",
        plain_decimal(totals.cost),
        f"{totals.unpriced:,}",
    ]
