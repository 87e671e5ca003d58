"""Run one claimed job: load its data and model, train its recipe, write the final checkpoint."""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

import torch

from contracts.checkpoints import (
    base_model_identity,
    sha256_file,
    write_final_checkpoint,
)
from contracts.datasets import METHOD_FORMATS, load_records
from trainers.loop import Control, TrainContext, train
from trainers.modeling import is_adapter, load_policy, load_tokenizer, save_model
from trainers.recipes import RECIPES
from contracts.specs import parse_spec
from contracts.store import CheckpointRecord, Job, JobStore

logger = logging.getLogger(__name__)


class JobError(RuntimeError):
    """The job cannot run as specified (fails without a retry)."""


def checkpoint_id_for(job_id: str) -> str:
    return "ckpt-" + job_id.removeprefix("job-")


def job_dir(home: Path, job_id: str) -> Path:
    return Path(home) / "jobs" / job_id


def _resume_step(path: str | None) -> int:
    match = re.search(r"step-(\d+)$", path or "")
    return int(match.group(1)) if match else 0


def run_job(
    store: JobStore, home: Path, job: Job, control: Control, default_model: str | None
) -> str:
    """Train ``job`` to the end; returns its checkpoint id. Raises ``loop.Stop`` subclasses when
    stopped early and ``JobError`` when the job is invalid."""
    spec = parse_spec(job.config)
    model_path = spec.model or default_model
    if not model_path:
        raise JobError("no base model: the job has no 'model' and the worker has no default")
    dataset = store.get_dataset(spec.dataset)
    if dataset is None:
        raise JobError(f"dataset {spec.dataset!r} does not exist")
    if dataset.format not in METHOD_FORMATS[spec.method]:
        raise JobError(f"{spec.method} cannot train on a {dataset.format} dataset")
    records = load_records(dataset.path)
    store.truncate_metrics(job.id, _resume_step(job.resume_path))
    torch.manual_seed(spec.hyperparameters.seed)
    tokenizer = load_tokenizer(model_path)
    policy = load_policy(model_path, spec.finetuning, spec.lora)
    work = job_dir(home, job.id)
    ctx = TrainContext(job.id, spec, model_path, work, tokenizer, {"policy": policy}, control)
    recipe = RECIPES.get(spec.method)
    last = train(ctx, recipe.stages(ctx, records), job.resume_path)
    checkpoint_id = checkpoint_id_for(job.id)
    target = Path(home) / "checkpoints" / checkpoint_id

    def fill(folder: Path) -> None:
        save_model(ctx.policy, tokenizer, folder)
        recipe.save_extra(ctx, folder)

    def manifest() -> dict[str, Any]:
        return {
            "checkpoint_id": checkpoint_id, "job_id": job.id, "method": spec.method,
            "format": "peft-lora" if is_adapter(policy) else "hf-full",
            "config": {**spec.model_dump(mode="json"), "model": model_path},
            "base_model": base_model_identity(model_path),
            "metrics": {"final": last, "history": store.metrics(job.id)},
            "summary": {k: v for k, v in ctx.summary.items() if not k.startswith("_")},
            "data": _data_hashes(dataset.id, dataset.sha256, dataset.records, work),
            "deploy": spec.deploy.model_dump() if spec.deploy else None,
        }

    written = write_final_checkpoint(target, fill, manifest)
    store.add_checkpoint(CheckpointRecord(
        id=checkpoint_id, job_id=job.id, path=str(target), method=spec.method,
        created_at=written["created_at"], manifest=written,
    ))
    return checkpoint_id


def _data_hashes(dataset_id: str, sha256: str, records: int, work: Path) -> dict[str, Any]:
    generated = {p.name: sha256_file(p) for p in sorted(work.glob("*.pt"))}
    return {"dataset": {"id": dataset_id, "sha256": sha256, "records": records},
            "generated": generated}
