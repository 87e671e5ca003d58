"""Training workers started next to the server (``Settings.workers``): separate processes,
restarted when one dies (a crash or the OOM killer), terminated with a timeout on shutdown
(SIGTERM lets each one save a resume point). A job whose worker died is picked up again by the
replacement once its lease expires, from its last resume point.

Worker ``i`` gets ``ALIGNSERVE_WORKER_INDEX=i``: with the default device setting (``auto``, or a
GPU list in ``ALIGNSERVE_WORKER_DEVICE``) each worker of the host trains on its own GPU
(``trainers.devices``); a restarted worker keeps its index."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

logger = logging.getLogger(__name__)

RESTART_BACKOFF_S = (1.0, 5.0, 30.0)
WORKER_INDEX_ENV = "ALIGNSERVE_WORKER_INDEX"  # trainers.devices.INDEX_ENV (no torch import here)


def _die_with_parent() -> None:
    """In the child, before exec: SIGTERM when the server dies, even by SIGKILL (Linux), so an
    orphaned worker saves a resume point and leaves instead of holding its job's lease."""
    if sys.platform.startswith("linux"):
        import ctypes
        import signal

        pr_set_pdeathsig = 1
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


class WorkerPool:
    def __init__(self, count: int, home: Path, model: str | None = None) -> None:
        self.count, self.home, self.model = count, home, model
        self.processes: list[subprocess.Popen[bytes]] = []
        self._stopping = threading.Event()
        self._monitor: threading.Thread | None = None
        self.restarts = 0

    def _spawn(self, index: int) -> subprocess.Popen[bytes]:
        cmd = [sys.executable, "-m", "server.cli", "worker", "--home", str(self.home)]
        if self.model:
            cmd += ["--model", self.model]
        return subprocess.Popen(
            cmd, env={**os.environ, WORKER_INDEX_ENV: str(index)}, preexec_fn=_die_with_parent
        )

    def start(self) -> None:
        self.processes = [self._spawn(i) for i in range(self.count)]
        if self.processes:
            logger.info("started %d training workers: pids %s", len(self.processes),
                        [p.pid for p in self.processes])
            self._monitor = threading.Thread(target=self._supervise, name="worker-pool",
                                             daemon=True)
            self._monitor.start()

    def _supervise(self) -> None:
        failures = 0
        while not self._stopping.wait(2.0):
            for i, proc in enumerate(self.processes):
                code = proc.poll()
                if code is None or self._stopping.is_set():
                    continue
                delay = RESTART_BACKOFF_S[min(failures, len(RESTART_BACKOFF_S) - 1)]
                logger.error("training worker %d exited with %s; restarting in %.0f s",
                             proc.pid, code, delay)
                failures += 1
                if self._stopping.wait(delay):
                    return
                self.processes[i] = self._spawn(i)
                self.restarts += 1
                logger.info("training worker restarted: pid %d", self.processes[i].pid)

    def stop(self, timeout_s: float = 30.0) -> None:
        """Terminate every worker (idempotent: the app's shutdown and the CLI both call it)."""
        self._stopping.set()
        if self._monitor is not None:
            self._monitor.join(timeout=5)
        for proc in self.processes:
            if proc.poll() is None:
                proc.terminate()
        deadline = time.monotonic() + timeout_s
        for proc in self.processes:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                logger.warning("worker %d did not stop in %.0f s; killing it", proc.pid, timeout_s)
                proc.kill()
                proc.wait()
        self.processes.clear()
