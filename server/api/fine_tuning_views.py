"""OpenAI-shaped views of our jobs, events, metrics and checkpoints (pure functions of records).

**Status.** A job whose spec deploys its result (the default for OpenAI-created LoRA jobs)
reports ``running`` to OpenAI clients after training finished, until the auto-deployer records
the outcome as a job event (``server/auto_deploy.py``): ``succeeded`` once the model is live
(``fine_tuned_model`` then answers chat requests), ``failed`` if the deployment was refused. So
``succeeded`` never names a model that does not answer yet. The store's own status (admin API)
stays ``succeeded`` as soon as the checkpoint exists.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from contracts.specs import Hyperparameters
from contracts.store import CheckpointRecord, Event, Job

DEFAULT_LEARNING_RATE = Hyperparameters().learning_rate
ORGANIZATION = "alignserve"
CREATED_KEY = "openai"  # data key of the event that records the OpenAI request
DEPLOYMENT_KEY = "deployment"  # data key of the auto-deployer's outcome events
_LEVELS = {"info": "info", "warning": "warn", "warn": "warn", "error": "error"}


@dataclass(frozen=True)
class JobFacts:
    """What a view needs besides the job row: the recorded request, the deploy outcome."""

    request: dict[str, Any] | None  # as recorded at creation (None: created by the admin API)
    outcome: dict[str, Any] | None  # the latest deployment outcome event's data
    outcome_ts: float | None
    base_name: str  # the served base model's name


def facts(events: list[Event], base_name: str) -> JobFacts:
    request, outcome, ts = None, None, None
    for e in events:
        if e.data and request is None and isinstance(e.data.get(CREATED_KEY), dict):
            request = e.data[CREATED_KEY]
        if e.data and e.data.get(DEPLOYMENT_KEY):
            outcome, ts = e.data, e.ts
    return JobFacts(request, outcome, ts, base_name)


def openai_status(job: Job, f: JobFacts) -> tuple[str, dict[str, Any] | None, str | None]:
    """``(status, error, fine_tuned_model)`` as an OpenAI client sees them."""
    if job.status == "failed":
        return "failed", {"code": "training_failed", "message": job.error, "param": None}, None
    if job.status != "succeeded":
        return job.status, None, None  # queued, running, paused, cancelled
    deploy = job.config.get("deploy")
    if not deploy:
        return "succeeded", None, None  # a checkpoint only (checkpoint_id in the extensions)
    if f.outcome is None:
        return "running", None, None  # trained; the deployment is not live yet
    if f.outcome.get("status") == "live":
        return "succeeded", None, deploy["name"]
    reason = f.outcome.get("reason") or "refused"
    message = (f"training finished, but deploying {deploy['name']} failed: {reason}; an admin "
               f"can deploy checkpoint {job.checkpoint_id} by hand")
    return "failed", {"code": "deployment_failed", "message": message, "param": None}, None


def hyperparameters(job: Job, f: JobFacts) -> dict[str, Any]:
    """The resolved values (``auto`` is resolved at creation)."""
    if f.request is not None:
        return dict(f.request["hyperparameters"])
    hp = job.config.get("hyperparameters", {})
    lr = hp.get("learning_rate", DEFAULT_LEARNING_RATE)
    return {"batch_size": hp.get("batch_size"), "beta": hp.get("beta"),
            "learning_rate_multiplier": lr / DEFAULT_LEARNING_RATE, "n_epochs": None}


def base_model_name(job: Job, f: JobFacts, base_path: str | None) -> str:
    if f.request is not None:
        return str(f.request["model"])
    model = str(job.config.get("model") or "")
    return f.base_name if model == base_path or not model else Path(model).name


def job_view(job: Job, f: JobFacts, base_path: str | None) -> dict[str, Any]:
    status, error, fine_tuned = openai_status(job, f)
    hyper = hyperparameters(job, f)
    request = f.request or {}
    kind = request.get("method_type", job.method)
    finished = f.outcome_ts if job.config.get("deploy") and f.outcome else job.finished_at
    deploy = job.config.get("deploy")
    return {
        "object": "fine_tuning.job",
        "id": job.id,
        "model": base_model_name(job, f, base_path),
        "created_at": int(job.created_at),
        "finished_at": int(finished) if finished and status in _FINAL else None,
        "fine_tuned_model": fine_tuned,
        "organization_id": ORGANIZATION,
        "result_files": [],
        "status": status,
        "training_file": job.config.get("dataset"),
        "validation_file": request.get("validation_file"),
        "hyperparameters": {k: hyper.get(k) for k in
                            ("batch_size", "learning_rate_multiplier", "n_epochs")},
        "trained_tokens": None,
        "error": error,
        "seed": job.config.get("hyperparameters", {}).get("seed", 0),
        "estimated_finish": None,
        "integrations": [],
        "metadata": request.get("metadata"),
        "method": {"type": kind, kind: {"hyperparameters": hyper}},
        "user_provided_suffix": job.config.get("suffix"),
        # -- alignserve extensions --
        "step": job.step,
        "total_steps": job.total_steps,
        "checkpoint_id": job.checkpoint_id,
        "deployment": deploy["name"] if deploy else None,
    }


_FINAL = ("succeeded", "failed", "cancelled")


def finite(value: Any) -> Any:
    """JSON has no NaN: non-finite numbers (a diverged metric) become null, recursively."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [finite(v) for v in value]
    return value


@dataclass(frozen=True)
class Item:
    """One entry of the merged event list; ``key`` orders entries recorded at the same time."""

    ts: float
    key: tuple[int, int]
    view: dict[str, Any]


def event_item(job: Job, e: Event) -> Item:
    data = dict(e.data) if e.data else None
    message = e.message
    if data is not None:
        data.pop("traceback", None)  # logged for admins; never sent in a body
        data.pop(CREATED_KEY, None)
        deploy = job.config.get("deploy")
        if deploy and data.get("status") == "succeeded" and DEPLOYMENT_KEY not in data:
            message = (f"training finished: checkpoint {data.get('checkpoint_id')}; deploying "
                       f"it as {deploy['name']}")
    view = {
        "object": "fine_tuning.job.event",
        "id": f"ftevent-{_short(job.id)}-{e.id}",
        "created_at": int(e.ts),
        "level": _LEVELS.get(e.level, "info"),
        "message": message,
        "data": finite(data) or None,
        "type": "message",
    }
    return Item(e.ts, (0, e.id), view)


def metrics_item(job: Job, step: int, ts: float, metrics: dict[str, Any]) -> Item:
    loss = metrics.get("loss")
    data = {"step": step, "total_steps": job.total_steps, "train_loss": loss,
            **{k: v for k, v in metrics.items() if k != "loss"}}
    shown = f"{loss:.4f}" if isinstance(loss, float) and math.isfinite(loss) else str(loss)
    view = {
        "object": "fine_tuning.job.event",
        "id": f"ftevent-{_short(job.id)}-step-{step}",
        "created_at": int(ts),
        "level": "info",
        "message": f"Step {step}/{job.total_steps}: training loss={shown}",
        "data": finite(data),
        "type": "metrics",
    }
    return Item(ts, (1, step), view)


def checkpoint_view(job: Job, record: CheckpointRecord, model: str) -> dict[str, Any]:
    final = record.manifest.get("metrics", {}).get("final") or {}
    step = job.step or job.total_steps
    metrics = {"step": float(step), "train_loss": final.get("loss"),
               **{k: v for k, v in final.items() if k != "loss"}}
    return {
        "object": "fine_tuning.job.checkpoint",
        "id": record.id,
        "created_at": int(record.created_at),
        "fine_tuned_model_checkpoint": model,
        "fine_tuning_job_id": job.id,
        "metrics": finite(metrics),
        "step_number": step,
    }


def _short(job_id: str) -> str:
    return job_id.removeprefix("job-")
