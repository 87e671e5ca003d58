"""Schema fuzz (issue 14): Schemathesis generates requests from the app's own OpenAPI document,
valid and invalid, for every operation, with an admin key, and no answer may be a 500
(its ``not_a_server_error`` check).

Two passes, because one cannot do both jobs in CI's time:

- **wide** (``test_fuzz_every_operation``): every operation of the app over the typed fake
  engine (tests/fakes.py) with a real SQLite store, real training and deployment services and a
  faked engine switch, served by uvicorn in this process. Requests cost microseconds, so a
  minute covers thousands of cases in all four Schemathesis phases. The edge, the error layer,
  the admin routes and the stores are the same code as in production; only the engine is not.
- **real** (``test_fuzz_generation_on_the_real_engine``): the generation operations against
  the session's real server (real vLLM engine, embedded model, real HTTP), where vLLM's own
  parameter checks live. Every request there costs real decoding on 2 CPU cores, so it is short
  and its bodies are capped (tests/real/fuzz_hooks.py); admin operations are left to the wide
  pass (they would also change the state the other real tests share).

Budgets: ``ALIGNSERVE_FUZZ_SECONDS`` (wide, default 60) and ``ALIGNSERVE_FUZZ_REAL_SECONDS``
(real, default 45); ``ALIGNSERVE_FUZZ_SEED`` repeats a run; ``ALIGNSERVE_FUZZ_REPORT_DIR`` keeps
the reports (Schemathesis' JSON report and its console output). docs/security.md has the
5-minute command.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from contracts.store import SqliteJobStore, open_store
from server.api.app import create_app
from server.auth import KeyRing
from server.training import TrainingService
from tests.real.conftest import ADMIN_KEY, USER_KEY
from tests.real.server_process import ServerProcess, free_port
from tests.unit.test_edge_validation import PAIRS, DeployingEngine

REPO = Path(__file__).resolve().parents[2]
ST = Path(sys.executable).with_name("st")
GENERATION_OPERATIONS = r"^/v1/(chat/completions|completions|responses|models|rewards)"
logger = logging.getLogger(__name__)


def _budget(name: str, default: int) -> int:
    return int(os.environ.get(name, default))


def run_schemathesis(
    base_url: str, seconds: int, report_dir: Path, *args: str, env: dict[str, str] | None = None
) -> dict[str, Any]:
    """One ``st run`` (the CLI: the same command docs/security.md gives) for ``seconds``; its
    JSON report. One worker: Schemathesis' parallel workers race on a lazy import (4.32)."""
    report_dir.mkdir(parents=True, exist_ok=True)
    command = [
        str(ST), "run", f"{base_url}/openapi.json",
        "--header", f"Authorization: Bearer {ADMIN_KEY}",
        "--checks", "not_a_server_error",
        "--max-time", str(seconds),
        "--workers", "1",
        "--request-timeout", "120",
        "--report", "json", "--report-json-path", str(report_dir / "report.json"),
        "--no-color", *args,
    ]
    if seed := os.environ.get("ALIGNSERVE_FUZZ_SEED"):
        command += ["--seed", seed]
    with open(report_dir / "console.txt", "wb") as console:
        subprocess.run(
            command, cwd=REPO, stdout=console, stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})}, timeout=seconds + 600, check=False,
        )
    report: dict[str, Any] = json.loads((report_dir / "report.json").read_text())
    return report


def assert_no_server_errors(report: dict[str, Any], report_dir: Path, min_cases: int) -> None:
    cases = report["test_cases"]["generated"]
    server_errors = [f for f in report["failures"] if f["code"] == "ST101"]
    logger.warning(
        "schema fuzz: %d cases over %d operations in %.0f s, %d server errors, "
        "Schemathesis errors %s (report in %s)",
        cases, len(report["operations"]) if "operations" in report else -1,
        report["running_time"], sum(f["count"] for f in server_errors), report["errors"],
        report_dir,
    )
    console = (report_dir / "console.txt").read_text(errors="replace")
    assert not server_errors, f"500s found: {server_errors}\n{console[-8000:]}"
    assert cases >= min_cases, f"only {cases} cases ran\n{console[-4000:]}"


# -- wide pass: every operation over the fake engine ---------------------------------------------
class _Background(uvicorn.Server):
    def install_signal_handlers(self) -> None:  # pytest's thread, not the main one: no signals
        pass


@pytest.fixture
def fake_server(tmp_path: Path) -> Iterator[str]:
    home = tmp_path / "home"
    (home / "models" / "base").mkdir(parents=True)
    (home / "imports").mkdir()
    (home / "checkpoints").mkdir()  # as in production: ids are looked up as folders in it
    (home / "imports" / "pairs.jsonl").write_bytes(PAIRS)
    store = open_store(home / "jobs.db")
    assert isinstance(store, SqliteJobStore)
    training = TrainingService(store, home, base_model="fake-model")
    dataset = training.import_server_path("pairs.jsonl", None)  # some state to list and read
    training.create_job({"method": "dpo", "dataset": dataset.id})
    app = create_app(
        DeployingEngine(home / "models" / "base"), KeyRing.build([USER_KEY], [ADMIN_KEY]),
        home=home, training=training, store=store,
    )
    server = _Background(uvicorn.Config(app, port=free_port(), log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "uvicorn did not start"
        time.sleep(0.1)
    yield f"http://127.0.0.1:{server.config.port}"
    server.should_exit = True
    thread.join(30)


def test_fuzz_every_operation(fake_server: str, tmp_path: Path) -> None:
    seconds = _budget("ALIGNSERVE_FUZZ_SECONDS", 60)
    report_dir = Path(os.environ.get("ALIGNSERVE_FUZZ_REPORT_DIR", tmp_path)) / "wide"
    report = run_schemathesis(fake_server, seconds, report_dir)
    assert_no_server_errors(report, report_dir, min_cases=3 * seconds)


# -- real pass: generation on the real engine -----------------------------------------------------
def served_model(base_url: str) -> str:
    r = httpx.get(f"{base_url}/v1/models", headers={"Authorization": f"Bearer {USER_KEY}"})
    return str(r.json()["data"][0]["id"])


def test_fuzz_generation_on_the_real_engine(server: ServerProcess, tmp_path: Path) -> None:
    seconds = _budget("ALIGNSERVE_FUZZ_REAL_SECONDS", 45)
    report_dir = Path(os.environ.get("ALIGNSERVE_FUZZ_REPORT_DIR", tmp_path)) / "real"
    report = run_schemathesis(
        server.base_url, seconds, report_dir,
        "--include-path-regex", GENERATION_OPERATIONS,
        env={"SCHEMATHESIS_HOOKS": "tests.real.fuzz_hooks", "PYTHONPATH": str(REPO),
             "ALIGNSERVE_FUZZ_MODEL": served_model(server.base_url)},
    )
    assert_no_server_errors(report, report_dir, min_cases=seconds // 5)
