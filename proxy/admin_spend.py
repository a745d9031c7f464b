"""`GET /admin/usage`: spend totals from the ledger, for the people who pay. Admin key only.

    GET /admin/usage?group_by=day,model&key=alice&since=2026-11-01&until=2026-12-01&format=csv

Parameters, all optional: `key`, `model`, `provider` (exact match), `since` (inclusive) and `until`
(exclusive) as ISO 8601 (`2026-11-01` is its midnight UTC), `group_by` (`key`, `model`, `provider`, `day`,
`hour`; comma-separated or repeated, for groups of groups), `format` (`json`, the default, or `csv`). An
unknown parameter is a 400 rather than silently ignored: a typo must not turn one key's bill into everyone's.
JSON and CSV are those of `proxy.spend.SpendReport`, the same as `teeproxy usage --group-by ... --json/--csv`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Protocol

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from proxy.config import Config
from proxy.errors import BadRequest, ProxyError, Unauthorized
from proxy.ledger import Ledger, LedgerUnavailable
from proxy.providers.openai import error_body
from proxy.spend import SpendQuery, check_admin_key, make_filter, parse_group_by, spend

_FILTERS = ("key", "model", "provider", "since", "until")
PARAMETERS = frozenset({*_FILTERS, "group_by", "format"})


class SpendState(Protocol):
    """What the routes read from the proxy's state (`proxy.state.ProxyState`)."""

    @property
    def config(self) -> Config: ...
    @property
    def ledger(self) -> Ledger: ...


class Unavailable(ProxyError):
    """503: the proxy is starting or stopping, or its ledger cannot be read."""

    status = 503
    code = "unavailable"


def spend_routes(state_getter: Callable[[], SpendState | None]) -> list[Route]:
    """The spend routes; `state_getter()` is the running proxy's state, None while it starts or stops."""

    async def usage(request: Request) -> Response:
        try:
            state = state_getter()
            if state is None:
                raise Unavailable("The proxy is starting or stopping; try again in a moment.")
            check_admin_key(request.headers, state.config)
            query, csv = _query(request)
            try:
                report = await asyncio.to_thread(spend, state.ledger.backend, query)
            except LedgerUnavailable as exc:
                raise Unavailable(str(exc)) from None
        except ProxyError as exc:
            headers = {"www-authenticate": "Bearer"} if isinstance(exc, Unauthorized) else None
            return Response(error_body(exc), exc.status, headers=headers, media_type="application/json")
        if csv:
            return Response(report.to_csv(), media_type="text/csv; charset=utf-8")
        return Response(report.to_json(), media_type="application/json")

    return [Route("/admin/usage", usage, methods=["GET"])]


def _query(request: Request) -> tuple[SpendQuery, bool]:
    """The query and whether CSV was asked for; BadRequest names the parameter at fault."""
    params = request.query_params
    unknown = sorted(set(params) - PARAMETERS)
    if unknown:
        raise BadRequest(f"Unknown parameter {unknown[0]!r}; the parameters are {', '.join(sorted(PARAMETERS))}.")
    single: dict[str, str | None] = {}
    for name in (*_FILTERS, "format"):
        values = params.getlist(name)
        if len(values) > 1:
            raise BadRequest(f"Give {name!r} once.")
        single[name] = values[0] if values else None
    fmt = single.pop("format") or "json"
    if fmt not in ("json", "csv"):
        raise BadRequest(f"format must be 'json' or 'csv', not {fmt!r}.")
    try:
        where = make_filter(**single)
        group_by = parse_group_by(params.getlist("group_by"))
    except ValueError as exc:
        raise BadRequest(str(exc)) from None
    return SpendQuery(where=where, group_by=group_by), fmt == "csv"
