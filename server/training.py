"""The training service: datasets, jobs and checkpoints over the trainers' public API.

Only ``contracts.store``, ``contracts.datasets`` and ``contracts.specs`` are used (never trainer
internals). Trainer errors become domain errors here; routes stay thin.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from contracts.datasets import (
    DEFAULT_MAX_BYTES,
    METHOD_FORMATS,
    DatasetError,
    DatasetTooLargeError,
    import_dataset,
    import_path,
)
from contracts.specs import parse_spec, total_steps
from contracts.store import TERMINAL, CheckpointRecord, DatasetRecord, Event, Job, JobStore
from server.errors import InvalidRequestError, NotFoundError, PayloadTooLargeError

logger = logging.getLogger(__name__)


def dataset_view(d: DatasetRecord) -> dict[str, Any]:
    return {"id": d.id, "object": "dataset", "format": d.format, "records": d.records,
            "bytes": d.bytes, "sha256": d.sha256, "filename": d.filename,
            "created_at": int(d.created_at)}


def checkpoint_view(c: CheckpointRecord) -> dict[str, Any]:
    manifest = c.manifest
    return {"id": c.id, "object": "checkpoint", "job_id": c.job_id, "method": c.method,
            "path": c.path, "created_at": int(c.created_at), "format": manifest.get("format"),
            "base_model": manifest.get("base_model"), "deploy": manifest.get("deploy"),
            "final_metrics": manifest.get("metrics", {}).get("final")}


def _validation_message(err: ValidationError) -> tuple[str, str | None]:
    first = err.errors()[0]
    loc = [str(p) for p in first.get("loc", ()) if not str(p).startswith(("function-",))]
    # Drop the union tag pydantic puts first ("dpo", "ulma", ...).
    if loc and loc[0] in METHOD_FORMATS:
        loc = loc[1:]
    param = ".".join(loc) or None
    message = str(first.get("msg", "invalid job")).removeprefix("Value error, ")
    return (f"{param}: {message}" if param else message), param


@dataclass
class TrainingService:
    store: JobStore
    home: Path
    base_model: str | None = None
    max_dataset_bytes: int = DEFAULT_MAX_BYTES

    # -- datasets -----------------------------------------------------------------------------
    def upload(self, data: bytes, fmt: str | None, filename: str | None) -> DatasetRecord:
        return self._guard(lambda: import_dataset(
            self.store, self.home, data, fmt, filename, self.max_dataset_bytes))

    def import_server_path(self, path: str, fmt: str | None) -> DatasetRecord:
        return self._guard(lambda: import_path(
            self.store, self.home, Path(path), fmt, self.max_dataset_bytes))

    @staticmethod
    def _guard(action: Any) -> DatasetRecord:
        try:
            record: DatasetRecord = action()
        except DatasetTooLargeError as e:
            raise PayloadTooLargeError(str(e), param="file") from None
        except DatasetError as e:
            raise InvalidRequestError(str(e), param=e.field, code="invalid_dataset") from None
        logger.info("dataset %s imported: %s, %d records", record.id, record.format,
                    record.records)
        return record

    def datasets(self) -> list[DatasetRecord]:
        return self.store.list_datasets()

    # -- jobs ---------------------------------------------------------------------------------
    def create_job(self, body: Any) -> Job:
        try:
            spec = parse_spec(body)
        except ValidationError as e:
            message, param = _validation_message(e)
            raise InvalidRequestError(message, param=param, code="invalid_job") from None
        dataset = self.store.get_dataset(spec.dataset)
        if dataset is None:
            raise InvalidRequestError(f"dataset {spec.dataset!r} does not exist",
                                      param="dataset", code="dataset_not_found")
        if dataset.format not in METHOD_FORMATS[spec.method]:
            allowed = ", ".join(METHOD_FORMATS[spec.method])
            raise InvalidRequestError(
                f"method {spec.method} needs a dataset in format {allowed}; "
                f"{spec.dataset} is {dataset.format}", param="dataset", code="wrong_format")
        if spec.model is None:
            if self.base_model is None:
                raise InvalidRequestError("no base model is served; give 'model'", param="model")
            spec.model = self.base_model
        job = self.store.create_job(spec.method, spec.model_dump(mode="json"), total_steps(spec))
        logger.info("job %s queued: %s on %s", job.id, spec.method, spec.dataset)
        return job

    def get_job(self, job_id: str) -> Job:
        job = self.store.get_job(job_id)
        if job is None:
            raise NotFoundError(f"job {job_id!r} does not exist", param="job_id",
                                code="job_not_found")
        return job

    def jobs(self, limit: int = 100) -> list[Job]:
        return self.store.list_jobs(limit=limit)

    def job_view(self, job: Job) -> dict[str, Any]:
        view = job.public()
        view["metrics"] = self.store.metrics(job.id)[-1:] or None
        return view

    def cancel(self, job_id: str) -> Job:
        job = self.get_job(job_id)
        if job.status in TERMINAL:
            return job
        updated = self.store.request_cancel(job_id)
        assert updated is not None
        return updated

    def events(self, job_id: str, after: int = 0) -> list[Event]:
        return self.store.events(job_id, after)

    def metrics(self, job_id: str) -> list[dict[str, Any]]:
        self.get_job(job_id)
        return self.store.metrics(job_id)

    # -- checkpoints ----------------------------------------------------------------------------
    def checkpoints(self) -> list[CheckpointRecord]:
        return self.store.list_checkpoints()
