"""OpenAI-shaped fine-tuning: ``/v1/fine_tuning/jobs``. Routes only delegate to
``TrainingService``."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Request

from contracts.store import Job
from server.api.admin_jobs import Training, json_body
from server.api.deps import AdminScope
from server.errors import InvalidRequestError

router = APIRouter()


_OPENAI_STATUS = {
    "queued": "queued",
    "running": "running",
    "succeeded": "succeeded",
    "failed": "failed",
    "cancelled": "cancelled",
}


def _openai_to_spec(body: dict[str, Any]) -> dict[str, Any]:
    method = body.get("method") or {"type": "dpo"}
    kind = method.get("type") if isinstance(method, dict) else None
    if not isinstance(kind, str):
        raise InvalidRequestError("method.type is required", param="method.type")
    options = dict(method.get(kind) or {})
    hyper = {k: v for k, v in (options.pop("hyperparameters", None) or {}).items() if v != "auto"}
    for unsupported in ("n_epochs", "learning_rate_multiplier"):
        if unsupported in hyper:
            raise InvalidRequestError(
                f"{unsupported} is not supported; use max_steps / learning_rate",
                param=f"method.{kind}.hyperparameters.{unsupported}",
            )
    spec = {
        "method": kind,
        "dataset": body.get("training_file"),
        "hyperparameters": hyper,
        **options,
    }
    if body.get("model") and "/" in str(body["model"]):
        spec["model"] = body["model"]
    if body.get("suffix"):
        spec["suffix"] = body["suffix"]
    if body.get("seed") is not None:
        spec["hyperparameters"]["seed"] = body["seed"]
    return spec


def _openai_view(job: Job) -> dict[str, Any]:
    cfg = job.config
    error = (
        {"code": "training_failed", "message": job.error, "param": None}
        if job.status == "failed"
        else None
    )
    return {
        "object": "fine_tuning.job",
        "id": job.id,
        "model": cfg.get("model"),
        "created_at": int(job.created_at),
        "finished_at": int(job.finished_at) if job.finished_at else None,
        "fine_tuned_model": job.checkpoint_id,
        "organization_id": "alignserve",
        "result_files": [],
        "status": _OPENAI_STATUS[job.status],
        "training_file": cfg.get("dataset"),
        "validation_file": None,
        "hyperparameters": cfg.get("hyperparameters"),
        "trained_tokens": None,
        "error": error,
        "seed": cfg.get("hyperparameters", {}).get("seed"),
        "method": {"type": job.method},
    }


@router.post("/v1/fine_tuning/jobs")
async def create_fine_tuning_job(
    request: Request, _: AdminScope, training: Training
) -> dict[str, Any]:
    spec = _openai_to_spec(await json_body(request))
    return _openai_view(await asyncio.to_thread(training.create_job, spec))


@router.get("/v1/fine_tuning/jobs")
def list_fine_tuning_jobs(_: AdminScope, training: Training, limit: int = 20) -> dict[str, Any]:
    return {
        "object": "list",
        "data": [_openai_view(j) for j in training.jobs(limit)],
        "has_more": False,
    }


@router.get("/v1/fine_tuning/jobs/{job_id}")
def get_fine_tuning_job(job_id: str, _: AdminScope, training: Training) -> dict[str, Any]:
    return _openai_view(training.get_job(job_id))


@router.post("/v1/fine_tuning/jobs/{job_id}/cancel")
def cancel_fine_tuning_job(job_id: str, _: AdminScope, training: Training) -> dict[str, Any]:
    return _openai_view(training.cancel(job_id))
