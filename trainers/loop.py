"""The one training loop every recipe shares.

A recipe is a list of stages (data preparation + an ``align_core`` loss over a batch of example
indices). The loop owns the optimizer, warm-up schedule, gradient clipping, batching, progress
reports, cancellation checks and resumable checkpoints; it never branches on a method's name.

Batches are a pure function of ``(seed, stage, step)`` (an epoch-wise permutation), so a job
resumed from step ``k`` trains exactly the batches ``k+1, k+2, ...`` it would have trained.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import Tensor, nn

from trainers.resume import load_resume_state, rng_state, save_resume_state, set_rng_state
from trainers.modeling import load_trainable_state, trainable_state
from contracts.specs import AnySpec

logger = logging.getLogger(__name__)


class Stop(Exception):
    """Training stops between two steps."""


class JobCancelled(Stop):
    pass


class LeaseLost(Stop):
    """Another worker owns the job now; stop without writing anything."""


class Interrupted(Stop):
    """The worker is shutting down; save a resume point and give the job back."""


class Control(Protocol):
    """How the loop talks to its worker (and through it, the job store)."""

    def check(self) -> None:
        """Raise a ``Stop`` subclass when the job must stop now."""

    def report(self, step: int, metrics: dict[str, float]) -> None: ...

    def event(self, message: str, data: dict[str, Any] | None = None) -> None: ...

    def resume_point(self, step: int, path: str) -> None: ...


@dataclass
class TrainContext:
    """Everything a recipe needs: the spec, the tokenizer, the modules being trained, a work dir."""

    job_id: str
    spec: AnySpec
    model_path: str
    work_dir: Path
    tokenizer: Any
    modules: dict[str, nn.Module]
    control: Control
    summary: dict[str, Any] = field(default_factory=dict)

    @property
    def policy(self) -> nn.Module:
        return self.modules["policy"]

    @property
    def pad_id(self) -> int:
        pad: int = self.tokenizer.pad_token_id
        return pad

    def cached(self, name: str, compute: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        """``compute()`` once per job; later calls (also after a resume) load the saved result."""
        path = self.work_dir / f"{name}.pt"
        if path.is_file():
            loaded: dict[str, Any] = torch.load(path, weights_only=False)
            return loaded
        value = compute()
        self.work_dir.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.work_dir, suffix=".tmp")
        os.close(fd)
        torch.save(value, tmp)
        os.replace(tmp, path)
        return value


class Stage(Protocol):
    """A phase of a recipe: optimises ``ctx.modules[module]`` for ``steps`` steps."""

    name: str
    module: str
    steps: int
    learning_rate: float

    def prepare(self, ctx: TrainContext) -> None: ...

    def size(self) -> int: ...

    def loss(self, ctx: TrainContext, indices: list[int]) -> tuple[Tensor, dict[str, float]]: ...


def batch_indices(step: int, n: int, batch_size: int, seed: int) -> list[int]:
    """Examples of the ``step``-th batch (0-based): consecutive slices of per-epoch permutations."""
    out, perms = [], {}
    for k in range(step * batch_size, (step + 1) * batch_size):
        epoch, pos = divmod(k, n)
        if epoch not in perms:
            gen = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
            perms[epoch] = torch.randperm(n, generator=gen).tolist()
        out.append(perms[epoch][pos])
    return out


@dataclass
class _Resume:
    step: int = 0
    stage: int = -1
    modules: dict[str, dict[str, Tensor]] = field(default_factory=dict)
    optimizer: dict[str, Any] | None = None
    scheduler: dict[str, Any] | None = None
    rng: dict[str, Any] | None = None


def _load_pending(ctx: TrainContext, resume: _Resume) -> None:
    """Restore saved weights of every module that exists by now (some are built by a stage)."""
    for name in [n for n in resume.modules if n in ctx.modules]:
        load_trainable_state(ctx.modules[name], resume.modules.pop(name))


def train(ctx: TrainContext, stages: list[Stage], resume_path: str | None) -> dict[str, float]:
    """Run every stage from the resume point on; returns the last step's metrics."""
    resume = _Resume()
    if resume_path:
        raw = load_resume_state(resume_path)
        resume = _Resume(raw["step"], raw["stage"], raw["modules"], raw["optimizer"],
                         raw["scheduler"], raw["rng"])
        ctx.control.event(f"resuming after step {resume.step}", {"step": resume.step})
        if resume.rng is not None:
            set_rng_state(resume.rng)
    _load_pending(ctx, resume)
    last: dict[str, float] = {}
    offset = 0
    for index, stage in enumerate(stages):
        end = offset + stage.steps
        if resume.step < end:
            final = index == len(stages) - 1
            last = _run_stage(ctx, stage, index, offset, resume, final) or last
        offset = end
    return last


def _run_stage(
    ctx: TrainContext, stage: Stage, index: int, offset: int, resume: _Resume, final: bool
) -> dict[str, float]:
    hp = ctx.spec.hyperparameters
    ctx.control.event(f"stage {stage.name}: preparing")
    stage.prepare(ctx)
    _load_pending(ctx, resume)
    module = ctx.modules[stage.module]
    module.train()
    params = [p for p in module.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=stage.learning_rate, weight_decay=hp.weight_decay)
    warmup = hp.warmup_steps
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / warmup) if warmup else 1.0
    )
    if resume.stage == index and resume.optimizer is not None:
        optimizer.load_state_dict(resume.optimizer)
        if resume.scheduler is not None:
            scheduler.load_state_dict(resume.scheduler)
    ctx.control.event(f"stage {stage.name}: training {stage.steps} steps")
    start, end = max(resume.step, offset), offset + stage.steps
    metrics: dict[str, float] = {}

    def save(step: int) -> None:
        folder = ctx.work_dir / "resume"
        state = {
            "stage": index, "rng": rng_state(), "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "modules": {n: trainable_state(m) for n, m in ctx.modules.items()},
        }
        path = save_resume_state(folder, step, state)
        ctx.control.resume_point(step, str(path))

    for step in range(start + 1, end + 1):
        try:
            ctx.control.check()
        except Interrupted:
            if step - 1 > start:
                save(step - 1)
            raise
        indices = batch_indices(step - offset - 1, stage.size(), hp.batch_size, hp.seed + index)
        loss, extra = stage.loss(ctx, indices)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(params, hp.max_grad_norm)
        optimizer.step()
        scheduler.step()
        metrics = {
            "loss": float(loss.detach()), "grad_norm": float(grad_norm),
            "lr": float(scheduler.get_last_lr()[0]), "stage": float(index), **extra,
        }
        ctx.control.report(step, metrics)
        if step % hp.checkpoint_every == 0 or (step == end and not final):
            save(step)
    resume.step = end
    logger.info("job %s stage %s done: %s", ctx.job_id, stage.name, json.dumps(metrics))
    return metrics
