"""The worker pool restarts a worker that died and stops cleanly."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from server.workers import WorkerPool


class ShortLivedPool(WorkerPool):
    """Workers that exit at once with an error, as a crashed or OOM-killed worker would."""

    def _spawn(self, index: int) -> subprocess.Popen[bytes]:
        return subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])


class SleepingPool(WorkerPool):
    def _spawn(self, index: int) -> subprocess.Popen[bytes]:
        return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])


def test_dead_worker_is_restarted(tmp_path: Path) -> None:
    pool = ShortLivedPool(1, tmp_path)
    pool.start()
    deadline = time.monotonic() + 15
    while pool.restarts < 1 and time.monotonic() < deadline:
        time.sleep(0.2)
    pool.stop(timeout_s=5)
    assert pool.restarts >= 1
    assert pool.processes == []


def test_stop_terminates_running_workers(tmp_path: Path) -> None:
    pool = SleepingPool(2, tmp_path)
    pool.start()
    procs = list(pool.processes)
    pool.stop(timeout_s=5)
    assert all(p.poll() is not None for p in procs)
