"""Shared fixtures. The real tier shares one pulled model and one running server per session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

# PostgreSQL server and per-test databases for the job-store tests.
pytest_plugins = ["tests.pg"]


@pytest.fixture(scope="session")
def alignserve_home() -> Path:
    """Where the real tier keeps the pulled model (reused across runs: pulling costs a minute)."""
    home = Path(os.environ.get("ALIGNSERVE_TEST_HOME", REPO / ".home"))
    home.mkdir(parents=True, exist_ok=True)
    return home


@pytest.fixture(scope="session")
def default_model(alignserve_home: Path) -> Path:
    from server.model_store import resolve_model

    return resolve_model(None, alignserve_home).path
