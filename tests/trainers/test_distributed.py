"""Distributed jobs: two CPU ranks under torchrun (gloo), launched by a real worker.

* DDP on two ranks, each in micro-batches, trains exactly as one process does with the same
  global batch (losses, gradient norms, final adapter); rank 0 alone writes resume points.
* FSDP: a SIGKILLed rank brings the run down (no hang, no process left) and the job is
  requeued; the next run resumes from the last resume point with the same batches, and a cancel
  reaches every rank between two steps.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from contracts.store import Job, SqliteJobStore
from tests.trainers.conftest import pairs
from trainers.worker import Worker, WorkerConfig


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """The in-process reference runs on one thread, as torchrun's ranks do (OMP_NUM_THREADS=1):
    the comparisons are then about distribution, and a busy two-core host is not oversubscribed."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _worker(store: SqliteJobStore, home: Path, name: str) -> Worker:
    return Worker(store, WorkerConfig(home, worker_id=name, lease_s=6, poll_s=0.2))


def _in_thread(worker: Worker) -> threading.Thread:
    thread = threading.Thread(target=worker.run_forever, kwargs={"max_jobs": 1}, daemon=True)
    thread.start()
    return thread


def _wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def _job(store: SqliteJobStore, job_id: str) -> Job:
    job = store.get_job(job_id)
    assert job is not None
    return job


def _messages(store: SqliteJobStore, job_id: str) -> list[str]:
    return [e.message for e in store.events(job_id)]


def _ranks(store: SqliteJobStore, job_id: str) -> list[dict[str, Any]]:
    """The ranks of the job's latest run (pids, agent pids, devices), as rank 0 reported."""
    found = [e.data for e in store.events(job_id) if e.message == "ranks started" and e.data]
    return list(found[-1]["ranks"]) if found else []


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _none_left(ranks: list[dict[str, Any]]) -> None:
    pids = [r["pid"] for r in ranks] + [r["agent"] for r in ranks]
    _wait_for(lambda: not any(_alive(p) for p in pids), 10, "the run's processes to exit")


def _losses(store: SqliteJobStore, job_id: str, name: str = "loss") -> list[float]:
    return [m[name] for m in store.metrics(job_id)]


def _adapter(home: Path, job: Job) -> dict[str, torch.Tensor]:
    assert job.checkpoint_id is not None
    return load_file(home / "checkpoints" / job.checkpoint_id / "adapter_model.safetensors")


def test_two_ddp_ranks_train_like_one_process(
    make_job: Callable[..., Job], store: SqliteJobStore, home: Path
) -> None:
    hyper = {"max_steps": 5, "batch_size": 4, "learning_rate": 1e-2, "checkpoint_every": 2}
    # each rank: 2 of the 4 examples of a step, as two micro-batches of one
    two = make_job("dpo", pairs(), hyperparameters={**hyper, "micro_batch_size": 1},
                   resources={"devices": 2})
    _worker(store, home, "dist").run_forever(max_jobs=1)
    done = _job(store, two.id)
    assert done.status == "succeeded", done.error
    ranks = _ranks(store, two.id)
    assert [(r["rank"], r["device"]) for r in ranks] == [(0, "cpu"), (1, "cpu")]
    assert len({r["pid"] for r in ranks}) == 2
    _none_left(ranks)

    one = make_job("dpo", pairs(), hyperparameters=hyper)
    _worker(store, home, "one").run_forever(max_jobs=1)
    reference = _job(store, one.id)
    assert reference.status == "succeeded"
    expected = _losses(store, one.id)
    assert expected[-1] < expected[0] - 0.05  # it trains: equal losses are not a frozen model
    assert _losses(store, two.id) == pytest.approx(expected, rel=1e-5, abs=1e-6)
    for name in ("grad_norm", "rewards/margin", "logps/chosen"):
        assert _losses(store, two.id, name) == pytest.approx(_losses(store, one.id, name),
                                                             rel=1e-4, abs=1e-5), name
    mine, theirs = _adapter(home, done), _adapter(home, reference)
    assert mine.keys() == theirs.keys()
    for key, value in theirs.items():
        torch.testing.assert_close(mine[key], value, rtol=1e-4, atol=1e-6)
    # Resume points: written by rank 0 alone, once per period, older ones dropped.
    points = [e.message for e in store.events(two.id) if e.message.startswith("resumable")]
    assert points == ["resumable checkpoint at step 2", "resumable checkpoint at step 4"]
    assert [p.name for p in (home / "jobs" / two.id / "resume").iterdir()] == ["step-00000004"]


def test_fsdp_rank_killed_then_resumed_with_the_same_batches_then_cancelled(
    make_job: Callable[..., Job], store: SqliteJobStore, home: Path
) -> None:
    hyper = {"max_steps": 400, "batch_size": 4, "learning_rate": 1e-3, "checkpoint_every": 5}
    job = make_job("dpo", pairs(16), hyperparameters=hyper,
                   resources={"devices": 2, "strategy": "fsdp"})

    # 1. SIGKILL rank 1 mid-run: torchrun ends the run, the worker requeues the job.
    first = _in_thread(_worker(store, home, "first"))
    _wait_for(lambda: _job(store, job.id).step >= 7, 180, "step 7")
    ranks = _ranks(store, job.id)
    os.kill(next(r["pid"] for r in ranks if r["rank"] == 1), signal.SIGKILL)
    killed = time.monotonic()
    first.join(timeout=90)
    assert not first.is_alive() and time.monotonic() - killed < 60  # no hang
    _none_left(ranks)
    requeued = _job(store, job.id)
    assert requeued.status == "queued" and requeued.attempts == 1
    assert requeued.resume_path is not None
    resume_step = int(requeued.resume_path.rsplit("-", 1)[1])
    assert resume_step >= 5 and resume_step % 5 == 0
    released = [e.message for e in store.events(job.id) if e.message.startswith("released")]
    assert released and "torchrun exited with code" in released[0]

    # 2. The next run resumes there; a cancel then stops every rank between two steps.
    second = _in_thread(_worker(store, home, "second"))
    # The step the first run reached stays on the job until the second run claims it and
    # goes back to the resume point; wait for that before counting steps again.
    _wait_for(lambda: f"resuming after step {resume_step}" in _messages(store, job.id), 180,
              "the second run to resume")
    _wait_for(lambda: _job(store, job.id).step >= resume_step + 5, 180, "training to resume")
    store.request_cancel(job.id)
    second.join(timeout=90)
    assert not second.is_alive()
    _none_left(_ranks(store, job.id))
    cancelled = _job(store, job.id)
    assert cancelled.status == "cancelled" and cancelled.attempts == 2
    last = cancelled.step
    assert resume_step + 5 <= last < 400
    assert [m["step"] for m in store.metrics(job.id)] == list(range(1, last + 1))

    # Every step, before the kill and after the resume, is the step one process would train.
    reference = make_job("dpo", pairs(16), hyperparameters={**hyper, "max_steps": last})
    _worker(store, home, "one").run_forever(max_jobs=1)
    expected = _losses(store, reference.id)
    assert expected[-1] < expected[0]
    assert _losses(store, job.id) == pytest.approx(expected, rel=1e-4, abs=1e-5)
