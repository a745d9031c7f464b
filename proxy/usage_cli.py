"""`teeproxy usage`: read the ledger.

`--json` prints one object per line with exactly the ledger's field names; without it, an aligned table and
the totals.
"""

from __future__ import annotations

import argparse
import sys
from decimal import Decimal

import msgspec

from proxy.ledger import LedgerRecord, open_backend

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


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--request-id", help="only this request")
    parser.add_argument("--since", help="only requests that started at or after this ISO 8601 time")
    parser.add_argument("--json", action="store_true", help="one JSON object per line")


def _cell(record: LedgerRecord, name: str) -> str:
    value = getattr(record, name)
    return "-" if value is None else str(value)


def run(args: argparse.Namespace, path: str | None, url: str | None) -> int:
    try:
        records = open_backend(path, url).query(args.request_id, args.since)
    except ValueError as exc:
        print(f"teeproxy usage: {exc}", file=sys.stderr)
        return 2
    out = sys.stdout
    if args.json:
        encode = msgspec.json.Encoder().encode
        for record in records:
            out.write(encode(record).decode() + "\n")
        return 0
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
    return 0
