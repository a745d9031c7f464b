"""Shared test fixtures.

The real provider captures live in ../shared/fixtures beside the project; they are read from there and
never copied in. Tests that need them take the `shared_fixtures` fixture, which skips with a reason when
the folder is absent.
"""

from __future__ import annotations

import json
import pathlib
from typing import Any

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
SHARED_FIXTURES = ROOT.parent / "shared" / "fixtures"


def load_expected() -> list[dict[str, Any]]:
    """The rows of ../shared/fixtures/expected.json, or [] when the folder is absent."""
    path = SHARED_FIXTURES / "expected.json"
    if not path.exists():
        return []
    rows: list[dict[str, Any]] = json.loads(path.read_text())
    return rows


@pytest.fixture(scope="session")
def shared_fixtures() -> pathlib.Path:
    if not SHARED_FIXTURES.is_dir():
        pytest.skip(f"provider captures not found at {SHARED_FIXTURES} (../shared is absent)")
    return SHARED_FIXTURES
