"""Training workers started next to the server (``Settings.workers``): separate processes,
terminated with a timeout on shutdown (SIGTERM lets each one save a resume point)."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

logger = logging.getLogger(__name__)


class WorkerPool:
    def __init__(self, count: int, home: Path, model: str | None = None) -> None:
        self.count, self.home, self.model = count, home, model
        self.processes: list[subprocess.Popen[bytes]] = []

    def start(self) -> None:
        for _ in range(self.count):
            cmd = [sys.executable, "-m", "server.cli", "worker", "--home", str(self.home)]
            if self.model:
                cmd += ["--model", self.model]
            self.processes.append(subprocess.Popen(cmd))
        if self.processes:
            logger.info("started %d training workers: pids %s", len(self.processes),
                        [p.pid for p in self.processes])

    def stop(self, timeout_s: float = 30.0) -> None:
        for proc in self.processes:
            if proc.poll() is None:
                proc.terminate()
        for proc in self.processes:
            try:
                proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                logger.warning("worker %d did not stop in %.0f s; killing it", proc.pid, timeout_s)
                proc.kill()
                proc.wait()
        self.processes.clear()
