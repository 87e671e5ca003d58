"""Real worker processes on a real SQLite file: SIGKILL mid-job, then a new worker finishes it
with no lost or duplicated steps; SIGTERM gives the job back with a resume point."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from contracts.store import Job, SqliteJobStore
from tests.trainers.conftest import pairs
from trainers.worker import Worker, WorkerConfig

REPO = Path(__file__).resolve().parents[2]
HYPER = {"max_steps": 40, "checkpoint_every": 5, "learning_rate": 1e-3}


def _spawn(home: Path, *extra: str) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "server.cli", "--log-level", "WARNING", "worker",
           "--home", str(home), "--lease", "2", "--poll", "0.2", *extra]
    env = {**os.environ, "ALIGNSERVE_HOME": str(home)}
    return subprocess.Popen(cmd, cwd=REPO, env=env)


def _wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def _step(store: SqliteJobStore, job_id: str) -> int:
    job = store.get_job(job_id)
    assert job is not None
    return job.step


def test_sigkill_mid_job_then_a_new_worker_finishes_it(
    make_job: Callable[..., Job], store: SqliteJobStore, home: Path
) -> None:
    job = make_job("dpo", pairs(16), hyperparameters=HYPER)
    first = _spawn(home)
    try:
        _wait_for(lambda: _step(store, job.id) >= 12, 120, "step 12")
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    killed = store.get_job(job.id)
    assert killed is not None and killed.status == "running" and killed.step < 40
    resume_step = int((killed.resume_path or "step-0").rsplit("-", 1)[1])
    assert resume_step >= 10 and resume_step % 5 == 0
    _wait_for(lambda: (store.get_job(job.id).lease_until or 0) < time.time(), 10, "lease")  # type: ignore[union-attr]
    second = _spawn(home, "--once")
    assert second.wait(timeout=180) == 0
    done = store.get_job(job.id)
    assert done is not None and done.status == "succeeded" and done.attempts == 2
    steps = [m["step"] for m in store.metrics(job.id)]
    assert steps == list(range(1, 41))  # none lost, none twice
    messages = [e.message for e in store.events(job.id)]
    assert any("requeued to resume" in m for m in messages)
    assert f"resuming after step {resume_step}" in messages
    # Same losses as an uninterrupted run of the same job: the resume is exact.
    reference = make_job("dpo", pairs(16), hyperparameters=HYPER)
    Worker(store, WorkerConfig(home, worker_id="ref")).run_forever(max_jobs=1)
    expected = [m["loss"] for m in store.metrics(reference.id)]
    got = [m["loss"] for m in store.metrics(job.id)]
    assert got == pytest.approx(expected, abs=1e-4)


def test_sigterm_saves_a_resume_point_and_requeues(
    make_job: Callable[..., Job], store: SqliteJobStore, home: Path
) -> None:
    job = make_job("dpo", pairs(16), hyperparameters={**HYPER, "checkpoint_every": 1000})
    worker = _spawn(home)
    try:
        _wait_for(lambda: _step(store, job.id) >= 3, 120, "step 3")
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=60) == 0
    finally:
        if worker.poll() is None:
            worker.kill()
    released = store.get_job(job.id)
    assert released is not None and released.status == "queued"
    assert released.resume_path and released.resume_path.endswith(f"step-{released.step:08d}")
