"""kill -9 of the server mid-job under chat load, then a restart: the job finishes with each step
once, no process of the killed server is left, and the deployment that was live answers again
(``scripts/chaos.py --short``; the full run also kills a worker, docs/operations.md)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO


def test_kill_9_of_the_server_mid_job_loses_nothing(default_model: Path, tmp_path: Path) -> None:
    run = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "chaos.py"), "--short", "--steps", "4",
         "--clients", "1", "--home", str(tmp_path / "chaos"), "--model", str(default_model),
         "--timeout", "600"],
        cwd=REPO, capture_output=True, text=True, timeout=1800,
    )
    report = run.stdout + run.stderr[-3000:]
    assert run.returncode == 0, report
    for check in ("no orphan after kill -9 of the server", "chaos-live answers after the restart",
                  "each step exactly once", "resumed from a resume point",
                  "chaos-dpo answers at the end", "no orphan after SIGTERM of the server"):
        assert f"PASS  {check}" in run.stdout, report
