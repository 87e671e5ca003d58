"""Gradient accumulation and gradient checkpointing give the step of the whole batch.

Every stage's ``loss(ctx, micro, batch)`` is a share of the whole batch's loss: the shares of
any split of a batch add up to the loss (and gradient) of the batch in one pass, for plain,
weighted (LD-Align), group-wise (ULMA) and two-class (AfD discriminator) reductions. Then whole
jobs: ``micro_batch_size`` and ``gradient_checkpointing`` leave the losses unchanged.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from contracts.specs import LoraSpec, parse_spec
from contracts.store import Job, SqliteJobStore
from tests.trainers.conftest import SMALL, demonstrations, pairs, pointwise
from trainers.loop import Stage, TrainContext
from trainers.modeling import Encoded, batch_logps, load_policy, load_tokenizer
from trainers.recipes.afd import DiscriminatorStage
from trainers.recipes.stages import PairStage, PointwiseStage, SFTStage
from trainers.worker import Worker, WorkerConfig

BATCH = [1, 3, 5, 0, 2, 4, 6, 7]  # the first micro-batch holds positives only (ULMA groups)
SPLIT = [[1, 3, 5], [0, 2, 4], [6, 7]]  # uneven on purpose


class Recorder:
    """A ``Control`` that keeps what the loop tells it (no store)."""

    def __init__(self) -> None:
        self.events: list[str] = []

    def check(self) -> None:
        return None

    def report(self, step: int, metrics: dict[str, float]) -> None:
        return None

    def event(self, message: str, data: dict[str, Any] | None = None) -> None:
        self.events.append(message)

    def resume_point(self, step: int, path: str) -> None:
        return None


def _context(tiny_model: Path, work: Path, method: str, **fields: Any) -> TrainContext:
    spec = parse_spec({"method": method, "dataset": "d", "model": str(tiny_model),
                       "hyperparameters": SMALL, **fields})
    policy = load_policy(str(tiny_model), "lora", LoraSpec())
    torch.manual_seed(0)
    for p in policy.parameters():  # a LoRA B of zeros would give the adapter no gradient
        if p.requires_grad:
            nn.init.normal_(p, std=0.02)
    return TrainContext("job", spec, str(tiny_model), work, load_tokenizer(str(tiny_model)),
                        {"policy": policy}, Recorder())


def _loss_and_grads(ctx: TrainContext, stage: Stage, batch: list[int],
                    split: list[list[int]]) -> tuple[float, list[torch.Tensor]]:
    params = [p for p in ctx.modules[stage.module].parameters() if p.requires_grad]
    total, grads = 0.0, [torch.zeros_like(p) for p in params]
    for micro in split:
        loss, _ = stage.loss(ctx, micro, batch)
        total += float(loss.detach())
        for g, d in zip(grads, torch.autograd.grad(loss, params), strict=True):
            g += d
    return total, grads


def _same_step(ctx: TrainContext, stage: Stage, batch: list[int] = BATCH,
               split: list[list[int]] = SPLIT) -> None:
    assert sorted(i for micro in split for i in micro) == sorted(batch)
    whole, whole_grads = _loss_and_grads(ctx, stage, batch, [batch])
    parts, part_grads = _loss_and_grads(ctx, stage, batch, split)
    assert parts == pytest.approx(whole, rel=1e-5, abs=1e-6)
    assert any(float(g.abs().max()) > 0 for g in whole_grads)
    for a, b in zip(part_grads, whole_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def _rows(raw: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{**r, "messages": [{"role": "user", "content": r["prompt"]}]} for r in raw]


def test_weighted_pair_loss_splits_exactly(tiny_model: Path, tmp_path: Path) -> None:
    ctx = _context(tiny_model, tmp_path, "dpo")
    weights = torch.linspace(0.2, 2.0, 8)  # LD-Align's per-pair weights
    stage = PairStage("dpo", 1, 1e-3, "dpo", records=_rows(pairs()), weights=weights)
    stage.prepare(ctx)
    _same_step(ctx, stage)


@pytest.mark.parametrize("loss", ["ulma", "pointwise_dpo_continuous"])
def test_pointwise_losses_split_exactly(tiny_model: Path, tmp_path: Path, loss: str) -> None:
    ctx = _context(tiny_model, tmp_path, "ulma")
    rows = _rows(pointwise())
    if loss == "pointwise_dpo_continuous":  # a plain mean (not group-wise), real-valued labels
        rows = [{**r, "label": 0.1 + 0.1 * i} for i, r in enumerate(rows)]
    stage = PointwiseStage("ulma", 1, 1e-3, loss, 0.0, rows)
    stage.prepare(ctx)
    _same_step(ctx, stage)


def test_sft_and_discriminator_split_exactly(tiny_model: Path, tmp_path: Path) -> None:
    ctx = _context(tiny_model, tmp_path, "afd", max_prompts=8, samples_per_prompt=1)
    demos = _rows(demonstrations())
    sft = SFTStage("afd-sft", 1, 1e-3, demos)
    sft.prepare(ctx)
    _same_step(ctx, sft)
    # The discriminator's inputs as AfD caches them: π_SFT samples vs π_init samples.
    samples = [{"messages": r["messages"], "completion": f"answer number {i}"}
               for i, r in enumerate(demos)]
    torch.save({"samples": samples}, tmp_path / "afd-sft-samples.pt")
    torch.save({"samples": [{**s, "completion": "no"} for s in samples]},
               tmp_path / "afd-init-samples.pt")
    rm = DiscriminatorStage("afd-reward-model", 1, 1e-3, demos)
    rm.prepare(ctx)
    for p in ctx.modules["reward_model"].parameters():
        if p.requires_grad:
            nn.init.normal_(p, std=0.02)
    assert rm.size() == 6  # a quarter held out
    _same_step(ctx, rm, [4, 0, 5, 1, 3, 2], [[4, 0, 5], [1], [3, 2]])


def _run(store: SqliteJobStore, home: Path, job: Job) -> list[dict[str, Any]]:
    Worker(store, WorkerConfig(home, worker_id="w")).run_forever(max_jobs=1)
    done = store.get_job(job.id)
    assert done is not None and done.status == "succeeded", done and done.error
    return store.metrics(job.id)


def _adapter(home: Path, job: Job) -> dict[str, torch.Tensor]:
    return load_file(home / "checkpoints" / ("ckpt-" + job.id.removeprefix("job-"))
                     / "adapter_model.safetensors")


def test_an_accumulated_checkpointed_job_trains_like_the_plain_one(
    make_job: Callable[..., Job], store: SqliteJobStore, home: Path
) -> None:
    hyper = {"max_steps": 3, "batch_size": 4, "learning_rate": 1e-2}
    plain = make_job("dpo", pairs(), hyperparameters=hyper)
    # four micro-batches of one, each through checkpointed layers
    job = make_job("dpo", pairs(), hyperparameters={
        **hyper, "micro_batch_size": 1, "gradient_checkpointing": True})
    expected = _run(store, home, plain)
    assert expected[-1]["loss"] < expected[0]["loss"] - 0.05  # it trains
    got = _run(store, home, job)
    for name in ("loss", "grad_norm", "rewards/margin", "rewards/accuracy"):
        assert [m[name] for m in got] == pytest.approx([m[name] for m in expected],
                                                       rel=1e-4, abs=1e-5), name
    final, reference = _adapter(home, job), _adapter(home, plain)
    for key, value in reference.items():
        torch.testing.assert_close(final[key], value, rtol=1e-3, atol=1e-5)


@pytest.mark.parametrize("finetuning", ["lora", "full"])
def test_gradient_checkpointing_recomputes_layers_in_backward(
    tiny_model: Path, finetuning: str
) -> None:
    tokenizer = load_tokenizer(str(tiny_model))
    item = [Encoded((5, 6, 7), (8, 9, tokenizer.eos_token_id))]
    grads, calls = [], []
    for checkpointing in (False, True):
        torch.manual_seed(0)
        model = load_policy(str(tiny_model), finetuning, LoraSpec(),
                            gradient_checkpointing=checkpointing)
        model.train()
        if finetuning == "lora":  # a LoRA B of zeros would give A no gradient
            for p in model.parameters():
                if p.requires_grad:
                    nn.init.normal_(p, std=0.02)
        layer = next(m for n, m in model.named_modules() if n.endswith("layers.0"))
        count = [0]

        def counted(*_: Any, count: list[int] = count) -> None:
            count[0] += 1

        # a pre-hook: the recomputation may stop early, before the layer's forward hooks run
        layer.register_forward_pre_hook(counted)
        params = [p for p in model.parameters() if p.requires_grad]
        logps = batch_logps(model, item, tokenizer.pad_token_id)
        grads.append(torch.autograd.grad(logps.sum(), params))
        calls.append(count[0])
    assert calls == [1, 2]  # checkpointed: the layer's forward runs again during backward
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
