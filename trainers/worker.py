"""The training worker: a separate process that claims jobs from the store and runs them.

``alignserve worker`` runs ``Worker.run_forever``. On start (and before each claim) it requeues
jobs whose worker died (expired lease). While a job runs, a heartbeat thread renews the lease
(also through long data-generation phases) and every training step checks for cancellation, a
pause request, a lost lease, or SIGTERM/SIGINT; on a signal the worker saves a resume point, gives
the job back to the queue and exits. A paused job stops the same way (resume point, then
``store.pause``) but stays out of the queue until it is resumed.

Jobs train on the worker's device (``ALIGNSERVE_WORKER_DEVICE``, ``trainers.devices``). A job
whose ``resources`` ask for DDP or FSDP runs under torchrun (``trainers.launch``) while this
process keeps its lease; when a rank dies (``RankFailure``) or the serving engine fails the job's
synthesis for a while (``Transient``), the job is requeued to resume.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

from contracts.store import Control as StoreControl
from contracts.store import JobStore, open_store
from trainers.devices import DEVICE_ENV, INDEX_ENV
from trainers.launch import RankFailure
from trainers.loop import Interrupted, JobCancelled, LeaseLost, Transient
from trainers.runner import JobError, run_job

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class WorkerConfig:
    home: Path
    default_model: str | None = None
    lease_s: float = 30.0
    poll_s: float = 1.0
    max_attempts: int = 3
    worker_id: str = ""
    # Where jobs train (``trainers.devices``): the worker pool gives each worker of a host its
    # index, so that each takes its own GPU.
    device: str = field(default_factory=lambda: os.environ.get(DEVICE_ENV, "auto"))
    index: int = field(default_factory=lambda: int(os.environ.get(INDEX_ENV, "0")))


class JobControl:
    """The loop's ``Control`` for one job: store writes, heartbeats and stop checks."""

    def __init__(self, store: JobStore, job_id: str, worker_id: str, lease_s: float,
                 stopping: threading.Event, total: int) -> None:
        self.store, self.job_id, self.worker_id = store, job_id, worker_id
        self.lease_s, self.stopping, self.total = lease_s, stopping, total
        self.state: StoreControl = "continue"
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._beat, daemon=True, name="heartbeat")

    def __enter__(self) -> JobControl:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join(timeout=5)

    def _beat(self) -> None:
        while not self._done.wait(self.lease_s / 3):
            try:
                self.state = self.store.heartbeat(self.job_id, self.worker_id, self.lease_s)
            except Exception:  # a busy database must not kill the job; the next beat retries
                logger.warning("job %s: heartbeat failed", self.job_id, exc_info=True)

    def check(self) -> None:
        if self.stopping.is_set():
            raise Interrupted("worker shutting down")
        self.state = self.store.heartbeat(self.job_id, self.worker_id, self.lease_s)
        if self.state == "lost":
            raise LeaseLost("lease lost")
        if self.state == "cancel":
            raise JobCancelled("cancelled")
        if self.state == "pause":  # the loop saves a resume point on Interrupted; run_one pauses
            raise Interrupted("paused by request")

    def report(self, step: int, metrics: dict[str, float]) -> None:
        self.store.record_step(self.job_id, step, metrics)
        logger.info("job %s step %d/%d loss %.4f", self.job_id, step, self.total,
                    metrics.get("loss", float("nan")))

    def event(self, message: str, data: dict[str, Any] | None = None) -> None:
        self.store.add_event(self.job_id, message, data=data)
        logger.info("job %s: %s", self.job_id, message)

    def resume_point(self, step: int, path: str) -> None:
        self.store.set_resume_point(self.job_id, step, path)


class Worker:
    def __init__(self, store: JobStore, config: WorkerConfig) -> None:
        self.store, self.config = store, config
        self.id = config.worker_id or f"{socket.gethostname()}-{os.getpid()}"
        self.stopping = threading.Event()

    def install_signal_handlers(self) -> None:
        def stop(signum: int, _: FrameType | None) -> None:
            logger.info("worker %s: signal %d, stopping after the current step", self.id, signum)
            self.stopping.set()

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)

    def run_forever(self, max_jobs: int | None = None) -> int:
        """Claim and run jobs until stopped (or ``max_jobs`` ran, or, with ``max_jobs``, the
        queue is empty). Returns the number of jobs run."""
        done = 0
        logger.info("worker %s started (home %s, device %s, index %d)", self.id,
                    self.config.home, self.config.device, self.config.index)
        while not self.stopping.is_set() and (max_jobs is None or done < max_jobs):
            self.store.recover_expired(self.config.max_attempts)
            job = self.store.claim(self.id, self.config.lease_s)
            if job is None:
                if max_jobs is not None:
                    break
                self.stopping.wait(self.config.poll_s)
                continue
            self.run_one(job.id)
            done += 1
        logger.info("worker %s stopped after %d jobs", self.id, done)
        return done

    def run_one(self, job_id: str) -> None:
        job = self.store.get_job(job_id)
        assert job is not None
        ctl = JobControl(self.store, job.id, self.id, self.config.lease_s, self.stopping,
                         job.total_steps)
        try:
            with ctl:
                checkpoint = run_job(self.store, self.config.home, job, ctl,
                                     self.config.default_model, self.config.device,
                                     self.config.index)
            self.store.finish(job.id, self.id, "succeeded", checkpoint_id=checkpoint)
        except JobCancelled:
            self.store.finish(job.id, self.id, "cancelled", error="cancelled by request")
        except LeaseLost:
            logger.warning("job %s: lease lost; another worker owns it", job.id)
        except Interrupted:
            if ctl.state == "pause":
                self.store.pause(job.id, self.id)
            else:
                self.store.release(job.id, self.id, "worker shut down; will resume")
        except JobError as e:
            self.store.finish(job.id, self.id, "failed", error=str(e))
        except (RankFailure, Transient) as e:  # resume from what was kept, or give up
            logger.error("job %s: %s", job.id, e)
            if job.attempts < self.config.max_attempts:
                self.store.release(job.id, self.id, f"{e}; will resume")
            else:
                self.store.finish(job.id, self.id, "failed",
                                  error=f"{e} (after {job.attempts} attempts)")
        except Exception as e:
            logger.error("job %s failed", job.id, exc_info=True)
            self.store.add_event(job.id, "traceback", level="error",
                                 data={"traceback": traceback.format_exc()[-4000:]})
            self.store.finish(job.id, self.id, "failed", error=f"{type(e).__name__}: {e}")


def main(home: Path, default_model: str | None, *, once: bool = False,
         lease_s: float = 30.0, poll_s: float = 1.0, max_attempts: int = 3,
         store_url: str | None = None) -> int:
    """Entry point of ``alignserve worker``. ``store_url`` (PostgreSQL) defaults to SQLite at
    ``home/jobs.db``."""
    store = open_store(store_url or Path(home) / "jobs.db")
    worker = Worker(store, WorkerConfig(home, default_model, lease_s, poll_s, max_attempts))
    worker.install_signal_handlers()
    started = time.monotonic()
    try:
        ran = worker.run_forever(max_jobs=1 if once else None)
    finally:
        store.close()
    logger.info("worker %s ran %d jobs in %.0f s", worker.id, ran, time.monotonic() - started)
    return 0
