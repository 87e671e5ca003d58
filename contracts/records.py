"""Records of the job store and the ``JobStore`` protocol (implemented in ``contracts.store_sqlite``
and ``contracts.store_postgres``; ``contracts.store.open_store`` picks one)."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from typing import Any, Literal, Protocol

JobStatus = Literal["queued", "running", "paused", "succeeded", "failed", "cancelled"]
TERMINAL: frozenset[str] = frozenset({"succeeded", "failed", "cancelled"})
# Jobs that still hold on to their dataset (a file in use cannot be deleted).
IN_FLIGHT: frozenset[str] = frozenset({"queued", "running", "paused"})
Control = Literal["continue", "cancel", "pause", "lost"]


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:16]}"


def json_text(value: Any) -> str:
    """JSON as both backends store it: text, not PostgreSQL's jsonb, which refuses the NaN a
    diverged loss reports and reorders keys."""
    return json.dumps(value, separators=(",", ":"), sort_keys=True)


@dataclass(frozen=True)
class Job:
    """One row of the jobs table, with its config decoded."""

    id: str
    method: str
    status: str
    config: dict[str, Any]
    created_at: float
    updated_at: float
    started_at: float | None
    finished_at: float | None
    worker_id: str | None
    lease_until: float | None
    attempts: int
    step: int
    total_steps: int
    cancel_requested: bool
    resume_path: str | None
    checkpoint_id: str | None
    error: str | None
    # Set on a running job: its worker stops at the next step, saves a resume point and marks
    # it ``paused``; ``resume`` queues it again, to continue from that point.
    pause_requested: bool = False

    def public(self) -> dict[str, Any]:
        """The JSON view the API returns."""
        return {
            "id": self.id, "object": "training.job", "method": self.method,
            "status": self.status, "created_at": self.created_at, "started_at": self.started_at,
            "finished_at": self.finished_at, "step": self.step, "total_steps": self.total_steps,
            "attempts": self.attempts, "checkpoint_id": self.checkpoint_id, "error": self.error,
            "cancel_requested": self.cancel_requested, "pause_requested": self.pause_requested,
            "config": self.config,
        }


@dataclass(frozen=True)
class DatasetRecord:
    id: str
    format: str
    path: str
    records: int
    sha256: str
    bytes: int
    filename: str | None
    created_at: float


@dataclass(frozen=True)
class Event:
    id: int
    job_id: str
    ts: float
    level: str
    message: str
    data: dict[str, Any] | None


@dataclass(frozen=True)
class CheckpointRecord:
    id: str
    job_id: str
    path: str
    method: str
    created_at: float
    manifest: dict[str, Any]


class DatasetInUse(RuntimeError):
    """A dataset that queued, running or paused jobs train on cannot be deleted."""

    def __init__(self, dataset_id: str, job_ids: list[str]) -> None:
        super().__init__(f"dataset {dataset_id} is used by {', '.join(job_ids)}")
        self.dataset_id, self.job_ids = dataset_id, job_ids


class JobStore(Protocol):
    """What the server and the workers need; a networked database can implement it too."""

    def create_job(
        self, method: str, config: dict[str, Any], total_steps: int, job_id: str | None = None
    ) -> Job:
        """Queue a job; ``job_id`` (from ``new_id("job")``) when the caller needs it first."""
        ...
    def get_job(self, job_id: str) -> Job | None: ...
    def list_jobs(self, limit: int = 100, status: str | None = None) -> list[Job]: ...
    def jobs_before(self, job_id: str | None, limit: int) -> list[Job]: ...
    def request_cancel(self, job_id: str) -> Job | None: ...
    def request_pause(self, job_id: str) -> Job | None: ...
    def resume(self, job_id: str) -> Job | None: ...
    def pause(self, job_id: str, worker_id: str) -> None: ...
    def claim(self, worker_id: str, lease_s: float) -> Job | None: ...
    def heartbeat(self, job_id: str, worker_id: str, lease_s: float) -> Control: ...
    def recover_expired(self, max_attempts: int) -> list[str]: ...
    def record_step(self, job_id: str, step: int, metrics: dict[str, float]) -> None: ...
    def set_resume_point(self, job_id: str, step: int, path: str) -> None: ...
    def truncate_metrics(self, job_id: str, after_step: int) -> None: ...
    def metrics(self, job_id: str) -> list[dict[str, Any]]: ...
    def metric_rows(self, job_id: str) -> list[tuple[int, float, dict[str, Any]]]: ...
    def add_event(
        self, job_id: str, message: str, level: str = "info", data: dict[str, Any] | None = None
    ) -> None: ...
    def events(self, job_id: str, after: int = 0) -> list[Event]: ...
    def finish(
        self, job_id: str, worker_id: str, status: str, *, checkpoint_id: str | None = None,
        error: str | None = None,
    ) -> None: ...
    def release(self, job_id: str, worker_id: str, reason: str) -> None: ...
    def add_dataset(self, record: DatasetRecord) -> None: ...
    def get_dataset(self, dataset_id: str) -> DatasetRecord | None: ...
    def list_datasets(self) -> list[DatasetRecord]: ...
    def delete_dataset(self, dataset_id: str) -> DatasetRecord | None: ...
    def add_checkpoint(self, record: CheckpointRecord) -> None: ...
    def get_checkpoint(self, checkpoint_id: str) -> CheckpointRecord | None: ...
    def list_checkpoints(self) -> list[CheckpointRecord]: ...
