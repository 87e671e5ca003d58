"""PostgreSQL for the tests (a pytest plugin, registered in tests/conftest.py).

``pg_server``: one throw-away server per session, started by ``scripts/postgres.sh`` (which
installs Debian's postgresql when pg_ctl is missing), or the server at ``ALIGNSERVE_TEST_PG_URL``
when that is set. ``pg_url``: a fresh, empty database on it for each test, dropped afterwards.
``open_backend``: a store of either backend, for tests parametrized over ``BACKENDS``.

If PostgreSQL cannot be installed or started, every test that needs it fails with the script's
own error output; only ``ALIGNSERVE_SKIP_PG=1`` turns that into an explicit skip.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from contracts.store import Store, open_store

logger = logging.getLogger(__name__)

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "postgres.sh"
BACKENDS = ["sqlite", "postgres"]
# apt-get update + install of postgresql on a fresh machine takes a few minutes at worst.
START_TIMEOUT_S = 900


def _skip_requested() -> bool:
    return os.environ.get("ALIGNSERVE_SKIP_PG") == "1"


@pytest.fixture(scope="session")
def pg_server() -> Iterator[str]:
    """URL of a running PostgreSQL server (its maintenance database)."""
    if _skip_requested():
        pytest.skip("ALIGNSERVE_SKIP_PG=1: PostgreSQL tests skipped on request")
    if url := os.environ.get("ALIGNSERVE_TEST_PG_URL"):
        yield url
        return
    # Not under pytest's tmp_path: its parents are private to root, and the server runs as the
    # postgres user, which must reach the folder.
    folder = tempfile.mkdtemp(prefix="alignserve-pg-")
    try:
        proc = subprocess.run(
            ["bash", str(SCRIPT), "start", folder], capture_output=True, text=True,
            timeout=START_TIMEOUT_S, check=False,
        )
        if proc.returncode != 0:
            pytest.fail(
                f"PostgreSQL could not be installed or started ({SCRIPT.name} exited"
                f" {proc.returncode}; set ALIGNSERVE_SKIP_PG=1 to skip these tests):\n"
                f"{proc.stderr.strip()}\n{proc.stdout.strip()}",
                pytrace=False,
            )
        url = proc.stdout.strip().splitlines()[-1]
        logger.info("test PostgreSQL at %s", url)
        yield url
    finally:
        subprocess.run(["bash", str(SCRIPT), "stop", folder], capture_output=True, check=False)
        shutil.rmtree(folder, ignore_errors=True)


def _with_database(url: str, name: str) -> str:
    return urlsplit(url)._replace(path=f"/{name}").geturl()


@pytest.fixture
def pg_url(pg_server: str) -> Iterator[str]:
    """A URL to a new empty database, dropped (with any connection left to it) after the test."""
    import psycopg

    name = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg_server, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield _with_database(pg_server, name)
    finally:
        with psycopg.connect(pg_server, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def open_backend(request: pytest.FixtureRequest, backend: str, home: Path) -> Store:
    """A store of ``backend``: SQLite at ``home/jobs.db`` or PostgreSQL in a fresh database."""
    if backend == "sqlite":
        return open_store(home / "jobs.db")
    if backend == "postgres":
        return open_store(request.getfixturevalue("pg_url"))
    raise ValueError(f"unknown backend {backend!r}")
