"""The one training loop every recipe shares.

A recipe is a list of stages (data preparation + an ``align_core`` loss over a batch of example
indices). The loop owns the optimizer, warm-up schedule, gradient clipping, batching, progress
reports, cancellation checks and resumable checkpoints; it never branches on a method's name.

Batches are a pure function of ``(seed, stage, step)`` (an epoch-wise permutation), so a job
resumed from step ``k`` trains exactly the batches ``k+1, k+2, ...`` it would have trained.

``batch_size`` is the global batch. Under torchrun each rank takes a contiguous slice of it
(``Parallel.shard``) and runs it in micro-batches of ``micro_batch_size``, accumulating
gradients; a stage's ``loss(ctx, indices, batch)`` returns the micro-batch's share of the
global-batch loss, so the shares sum (over micro-batches and ranks) to the loss of the whole
batch, and the gradients to its gradient: the same step as one process with the whole batch.
"""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import Tensor, nn

from contracts.specs import AnySpec
from trainers.devices import Placement
from trainers.modeling import load_trainable_state
from trainers.parallel import Parallel
from trainers.resume import load_resume_state, rng_state, save_resume_state, set_rng_state

logger = logging.getLogger(__name__)


class Diverged(RuntimeError):
    """The loss or the gradient stopped being finite: the job fails, nothing is saved."""


class Transient(RuntimeError):
    """A passing failure outside the job (the serving engine timed out or went away): the worker
    gives the job back to resume from what it kept, up to its attempt limit."""


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
    placement: Placement = field(default_factory=Placement.cpu)
    parallel: Parallel = field(default_factory=Parallel)
    # Whole trained weights by module name, gathered for writing the final model when the
    # modules hold only shards of them (FSDP); empty otherwise.
    full_states: dict[str, dict[str, Tensor]] = field(default_factory=dict)

    @property
    def policy(self) -> nn.Module:
        return self.modules["policy"]

    @property
    def pad_id(self) -> int:
        pad: int = self.tokenizer.pad_token_id
        return pad

    def cached(self, name: str, compute: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        """``compute()`` once per job; later calls (also after a resume) load the saved result.
        Under torchrun the main rank computes it and the others load it: generated data must be
        the same on every rank, and sampling on several GPUs need not be."""
        path = self.work_dir / f"{name}.pt"
        if not path.is_file() and self.parallel.is_main:
            value = compute()
            self.work_dir.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.work_dir, suffix=".tmp")
            os.close(fd)
            torch.save(value, tmp)
            os.replace(tmp, path)
            if self.parallel.world == 1:
                return value
        self.parallel.barrier()
        loaded: dict[str, Any] = torch.load(path, weights_only=False, map_location="cpu")
        return loaded


class Stage(Protocol):
    """A phase of a recipe: optimises ``ctx.modules[module]`` for ``steps`` steps."""

    name: str
    module: str
    steps: int
    learning_rate: float

    def prepare(self, ctx: TrainContext) -> None: ...

    def size(self) -> int: ...

    def loss(
        self, ctx: TrainContext, indices: list[int], batch: list[int]
    ) -> tuple[Tensor, dict[str, float]]:
        """The share of ``batch``'s loss that its examples ``indices`` make up (the whole loss
        when ``indices == batch``), and metrics averaged over ``indices``."""
        ...


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
    """Restore saved weights of every module that exists by now (some are built by a stage).
    A module is always restored before its first stage wraps it (FSDP then shards it)."""
    for name in [n for n in resume.modules if n in ctx.modules]:
        assert name not in ctx.parallel.steps, f"{name} is wrapped before its weights are restored"
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
    par = ctx.parallel
    ctx.control.event(f"stage {stage.name}: preparing")
    with par.gathered(), ctx.placement.autocast():
        stage.prepare(ctx)
    _load_pending(ctx, resume)  # before wrapping: FSDP shards the weights in place
    module = ctx.modules[stage.module]
    module.train()
    step_module = par.wrap(stage.module, module)
    params = [p for p in module.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=stage.learning_rate, weight_decay=hp.weight_decay)
    warmup = hp.warmup_steps
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / warmup) if warmup else 1.0
    )
    if resume.stage == index and resume.optimizer is not None:
        par.load_optimizer(stage.module, optimizer, resume.optimizer)
        if resume.scheduler is not None:
            scheduler.load_state_dict(resume.scheduler)
    ctx.control.event(f"stage {stage.name}: training {stage.steps} steps")
    start, end = max(resume.step, offset), offset + stage.steps
    metrics: dict[str, float] = {}

    def save(step: int) -> None:
        # Every rank gathers (FSDP needs all of them); the main rank alone writes.
        state = {
            "stage": index, "rng": rng_state(),
            "optimizer": par.optimizer_state(stage.module, optimizer),
            "scheduler": scheduler.state_dict(),
            "modules": {n: par.trainable_state(n, m) for n, m in ctx.modules.items()},
        }
        if par.is_main:
            path = save_resume_state(ctx.work_dir / "resume", step, state)
            ctx.control.resume_point(step, str(path))

    for step in range(start + 1, end + 1):
        try:
            ctx.control.check()
        except Interrupted:
            if step - 1 > start:
                save(step - 1)
            raise
        batch = batch_indices(step - offset - 1, stage.size(), hp.batch_size, hp.seed + index)
        optimizer.zero_grad(set_to_none=True)
        loss, extra = _accumulate(ctx, stage, step_module, batch)
        grad_norm = par.grad_norm(params, hp.max_grad_norm)
        if not (math.isfinite(loss) and math.isfinite(grad_norm)):
            # Before the update: a diverged run must never write (or deploy) non-finite weights.
            raise Diverged(
                f"stage {stage.name} step {step}: loss {loss}, gradient norm {grad_norm}; lower "
                "the learning rate or check the data"
            )
        optimizer.step()
        scheduler.step()
        metrics = {
            "loss": loss, "grad_norm": grad_norm,
            "lr": float(scheduler.get_last_lr()[0]), "stage": float(index), **extra,
        }
        ctx.control.report(step, metrics)
        if step % hp.checkpoint_every == 0 or (step == end and not final):
            save(step)
    resume.step = end
    logger.info("job %s stage %s done: %s", ctx.job_id, stage.name, json.dumps(metrics))
    return metrics


def _accumulate(
    ctx: TrainContext, stage: Stage, step_module: nn.Module, batch: list[int]
) -> tuple[float, dict[str, float]]:
    """Forward and backward of this rank's share of ``batch``, in micro-batches; returns the
    global batch's loss and metrics (summed over micro-batches and ranks)."""
    par = ctx.parallel
    mine = par.shard(batch)
    size = ctx.spec.hyperparameters.micro_batch_size or len(mine)
    chunks = [mine[i : i + size] for i in range(0, len(mine), size)]
    loss, sums = 0.0, dict[str, float]()
    for k, chunk in enumerate(chunks):
        with par.sync(step_module, last=k == len(chunks) - 1):
            with ctx.placement.autocast():  # the forward only, as autocast recommends
                part, extra = step_module(stage.loss, ctx, chunk, batch)
            par.backward(part)
        loss += float(part.detach())
        weight = len(chunk) / len(batch)  # metrics are means over the examples
        for name, value in extra.items():
            sums[name] = sums.get(name, 0.0) + value * weight
    if par.world == 1:
        return loss, sums
    names = sorted(sums)
    total, *values = par.sum([loss, *(sums[n] for n in names)])
    return total, dict(zip(names, values, strict=True))
