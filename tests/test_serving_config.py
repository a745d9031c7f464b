"""`proxy.serving.HypercornConfig`: the headers hypercorn adds to every response (Date, Server) are built once a
second, and are hypercorn's own for that second."""

from __future__ import annotations

import time

import pytest
from hypercorn.config import Config

from proxy.serving import HypercornConfig


@pytest.mark.parametrize("protocol", ["h11", "h2"])
def test_each_response_gets_hypercorns_headers_for_its_second(monkeypatch: pytest.MonkeyPatch, protocol: str) -> None:
    ours, theirs = HypercornConfig(), Config()
    dates = set()
    for now in (1_700_000_000.2, 1_700_000_000.9, 1_700_000_001.0, 1_700_000_001.5, 1_700_000_061.5, 1_700_000_000.3):
        monkeypatch.setattr(time, "time", lambda now=now: now)
        monkeypatch.setattr("hypercorn.config.time", lambda now=now: now)
        headers = ours.response_headers(protocol)
        assert headers == theirs.response_headers(protocol)
        dates.add(dict(headers)[b"date"])
        headers.append((b"x-added", b"by the caller"))  # the list is the caller's: the next one is unchanged
    assert len(dates) == 3
