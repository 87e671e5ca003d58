"""Run one claimed job: load its data and model, train its recipe, write the final checkpoint."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from contracts.checkpoints import (
    base_model_identity,
    sha256_file,
    write_final_checkpoint,
)
from contracts.datasets import METHOD_FORMATS, load_records
from contracts.specs import AnySpec, parse_spec
from contracts.store import CheckpointRecord, Job, JobStore
from trainers.devices import DeviceError, Placement, choose_devices
from trainers.loop import Control, TrainContext, train
from trainers.modeling import load_policy, load_tokenizer, save_model
from trainers.parallel import Parallel
from trainers.recipes import RECIPES, Recipe

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
    store: JobStore, home: Path, job: Job, control: Control, default_model: str | None,
    device: str = "auto", index: int = 0,
) -> str:
    """Train ``job`` to the end; returns its checkpoint id. Raises ``loop.Stop`` subclasses when
    stopped early, ``JobError`` when the job is invalid and ``launch.RankFailure`` when a
    distributed run broke down. ``device``/``index``: the worker's device setting and its index
    among the workers of its host (``trainers.devices``)."""
    spec = parse_spec(job.config)
    model_path = spec.model or default_model
    if not model_path:
        raise JobError("no base model: the job has no 'model' and the worker has no default")
    dataset = store.get_dataset(spec.dataset)
    if dataset is None:
        raise JobError(f"dataset {spec.dataset!r} does not exist")
    if dataset.format not in METHOD_FORMATS[spec.method]:
        raise JobError(f"{spec.method} cannot train on a {dataset.format} dataset")
    store.truncate_metrics(job.id, _resume_step(job.resume_path))
    work = job_dir(home, job.id)
    try:
        devices = choose_devices(device, spec.resources.devices, index)
    except DeviceError as e:
        raise JobError(str(e)) from e
    fill: Callable[[Path], None]
    if spec.resources.distributed:  # torchrun ranks train; this process keeps the lease
        from trainers.launch import Plan, run_distributed

        plan = Plan(job.id, spec.model_dump(mode="json"), model_path, str(dataset.path),
                    job.resume_path, str(work))
        result = run_distributed(plan, spec.resources, devices, control)
        last = result.last
        fill = result.move_model

        def summary() -> dict[str, Any]:
            return result.summary
    else:
        placement = Placement.on(devices[0])
        control.event(f"training on {placement.describe()}")
        ctx, recipe, last = train_job(job.id, spec, model_path, load_records(dataset.path),
                                      work, control, placement, Parallel(), job.resume_path)

        def fill(folder: Path) -> None:
            write_model(ctx, recipe, folder)

        def summary() -> dict[str, Any]:  # after fill: a recipe's extras add to it
            return public_summary(ctx)

    checkpoint_id = checkpoint_id_for(job.id)
    target = Path(home) / "checkpoints" / checkpoint_id

    def manifest() -> dict[str, Any]:
        return {
            "checkpoint_id": checkpoint_id, "job_id": job.id, "method": spec.method,
            "format": "hf-full" if spec.finetuning == "full" else "peft-lora",
            "config": {**spec.model_dump(mode="json"), "model": model_path},
            "base_model": base_model_identity(model_path),
            "metrics": {"final": last, "history": store.metrics(job.id)},
            "summary": summary(),
            "data": _data_hashes(dataset.id, dataset.sha256, dataset.records, work),
            "deploy": spec.deploy.model_dump() if spec.deploy else None,
        }

    written = write_final_checkpoint(target, fill, manifest)
    store.add_checkpoint(CheckpointRecord(
        id=checkpoint_id, job_id=job.id, path=str(target), method=spec.method,
        created_at=written["created_at"], manifest=written,
    ))
    return checkpoint_id


def train_job(
    job_id: str, spec: AnySpec, model_path: str, records: list[dict[str, Any]], work: Path,
    control: Control, placement: Placement, parallel: Parallel, resume_path: str | None,
) -> tuple[TrainContext, Recipe, dict[str, float]]:
    """Load the policy and train the job's recipe: in the worker, or in each torchrun rank."""
    hp = spec.hyperparameters
    torch.manual_seed(hp.seed)  # the LoRA initialisation: the same on every rank
    tokenizer = load_tokenizer(model_path)
    policy = load_policy(model_path, spec.finetuning, spec.lora, placement,
                         gradient_checkpointing=hp.gradient_checkpointing)
    ctx = TrainContext(job_id, spec, model_path, work, tokenizer, {"policy": policy}, control,
                       placement=placement, parallel=parallel)
    recipe = RECIPES.get(spec.method)
    last = train(ctx, recipe.stages(ctx, records), resume_path)
    return ctx, recipe, last


def write_model(ctx: TrainContext, recipe: Recipe, folder: Path) -> None:
    """The final model files: the policy (adapter or full), the tokenizer, a recipe's extras."""
    save_model(ctx.policy, ctx.tokenizer, folder, ctx.full_states.get("policy"))
    recipe.save_extra(ctx, folder)


def public_summary(ctx: TrainContext) -> dict[str, Any]:
    return {k: v for k, v in ctx.summary.items() if not k.startswith("_")}


def _data_hashes(dataset_id: str, sha256: str, records: int, work: Path) -> dict[str, Any]:
    generated = {p.name: sha256_file(p) for p in sorted(work.glob("*.pt"))}
    return {"dataset": {"id": dataset_id, "sha256": sha256, "records": records},
            "generated": generated}
