"""Three real worker processes on one PostgreSQL queue, one SIGKILLed in the middle of a job:
every job succeeds exactly once, none is run by two workers at a time, none is lost (the killed
worker's job comes back when its lease expires and another worker finishes it)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest

from contracts.store import Event, Job, Store, open_store
from tests.trainers.conftest import pairs

REPO = Path(__file__).resolve().parents[2]
JOBS = 12
LEASE_S = 3.0  # short, so the orphaned job comes back soon; long enough for 2 busy cores
HYPER = {"max_steps": 2, "checkpoint_every": 1000}


@pytest.fixture
def store(pg_url: str) -> Iterator[Store]:
    """Overrides the trainer tier's SQLite store: ``make_job`` imports into PostgreSQL."""
    opened = open_store(pg_url)
    yield opened
    opened.close()


def _spawn(home: Path, url: str, log: Path) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "server.cli", "--log-level", "WARNING", "worker",
           "--home", str(home), "--store-url", url, "--lease", str(LEASE_S), "--poll", "0.1"]
    # One thread each: three training processes share two cores.
    env = {**os.environ, "ALIGNSERVE_HOME": str(home), "OMP_NUM_THREADS": "1"}
    with log.open("wb") as out:
        return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)


def _logs(logs: list[Path]) -> str:
    return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}" for p in logs)


def _wait_for(predicate: Callable[[], bool], timeout: float, what: str, logs: list[Path]) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}\n{_logs(logs)}")
        time.sleep(0.1)


def _kill_mid_job(
    store: Store, proc: subprocess.Popen[bytes], worker_id: str, logs: list[Path]
) -> tuple[str, float]:
    """SIGKILL ``proc`` while it holds a running job; returns that job and the kill time.

    The worker is frozen (SIGSTOP) before looking, so that what the store says it holds is what
    it holds when it dies; the pause lets a commit it had already sent land first."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        proc.send_signal(signal.SIGSTOP)
        time.sleep(0.2)
        held = [j for j in store.list_jobs(limit=100)
                if j.status == "running" and j.worker_id == worker_id]
        if held:
            proc.send_signal(signal.SIGKILL)
            killed_at = time.time()
            proc.wait()
            return held[0].id, killed_at
        proc.send_signal(signal.SIGCONT)
        time.sleep(0.05)
    raise AssertionError(f"worker {worker_id} never held a job\n{_logs(logs)}")


def _claims(events: list[Event]) -> list[Event]:
    return [e for e in events if e.message.startswith("claimed by worker ")]


def test_three_workers_one_killed_every_job_succeeds_exactly_once(
    make_job: Callable[..., Job], store: Store, home: Path, pg_url: str, tmp_path: Path
) -> None:
    ids = [make_job("dpo", pairs(4), hyperparameters=HYPER).id for _ in range(JOBS)]
    logs = [tmp_path / f"worker-{i}.log" for i in range(3)]
    procs = [_spawn(home, pg_url, log) for log in logs]
    worker_ids = [f"{socket.gethostname()}-{p.pid}" for p in procs]
    victim, survivors = worker_ids[0], worker_ids[1:]
    try:
        def succeeded() -> int:
            return sum(j.status == "succeeded" for j in store.list_jobs(limit=100))

        _wait_for(lambda: succeeded() >= 3, 180, "3 jobs done", logs)
        orphan, killed_at = _kill_mid_job(store, procs[0], victim, logs)
        held = store.get_job(orphan)
        assert held is not None and held.status == "running" and held.worker_id == victim
        _wait_for(lambda: succeeded() == JOBS, 180, "every job done", logs)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGCONT)
                proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    assert [p.returncode for p in procs[1:]] == [0, 0], _logs(logs)

    jobs = {j.id: j for j in store.list_jobs(limit=100)}
    with psycopg.connect(pg_url) as conn:  # metric times are not part of the store's API
        written = conn.execute("SELECT job_id, step, ts FROM metrics ORDER BY step").fetchall()
    assert sorted(jobs) == sorted(ids) and all(j.status == "succeeded" for j in jobs.values())
    for job_id, job in jobs.items():
        events = store.events(job_id)
        claims = _claims(events)
        done = [e for e in events if e.message == "job succeeded"]
        assert len(done) == 1, (job_id, [e.message for e in events])  # succeeded exactly once
        assert len(claims) == job.attempts  # every run is a claim the store counted
        # One job's events carry ids in commit order, and their times follow that order.
        assert [e.ts for e in events] == sorted(e.ts for e in events)
        # The final metrics were all written by the last claimant, while it held the job.
        last_claim = claims[-1]
        assert job.worker_id is not None and last_claim.message.endswith(job.worker_id)
        steps = [(step, ts) for j, step, ts in written if j == job_id]
        assert [step for step, _ in steps] == [1, 2]
        assert all(last_claim.ts <= ts <= done[0].ts for _, ts in steps)
        if job_id != orphan:
            assert job.attempts == 1, (job_id, [e.message for e in events])  # never run twice
            continue
        # The orphan: claimed by the victim, requeued only once the victim was dead and its
        # lease had run out, then claimed and finished by a survivor.
        requeued = [e for e in events if "requeued to resume" in e.message]
        assert job.attempts == 2 and len(requeued) == 1
        assert claims[0].message.endswith(victim) and job.worker_id in survivors
        assert claims[0].ts < killed_at < requeued[0].ts < claims[1].ts < done[0].ts
        assert f"worker {victim} stopped heartbeating" in requeued[0].message
    ran_by = {j.worker_id for j in jobs.values()}
    assert ran_by <= set(worker_ids) and set(survivors) <= ran_by
