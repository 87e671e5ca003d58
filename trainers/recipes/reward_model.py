"""Reward model: a Bradley–Terry reward model on preference pairs (docs/algorithms.md §8).

One stage trains AfD's reward-model architecture (``afd.build_discriminator``: the base model
with a scalar head and a LoRA adapter; the reward is its logit, ``afd.reward_logits``) on
``pairs`` records with ``align_core.bradley_terry_loss``, ``-log σ(r(x, y_c) - r(x, y_r))``.

A seeded share of the pairs (``held_out_fraction``, whole conversations: ``split_pairs``) never
trains; the pairwise accuracy and the loss on them go into the manifest's summary and into
``reward_model.json``. ``save_extra``
writes ``reward_model/`` exactly as AfD does (``afd.write_reward_model``), so
``trainers.reward.RewardModel``, ``POST /v1/rewards`` and Best-of-N use it unchanged.

The checkpoint also carries the policy adapter every job writes; this recipe never trains it
(its LoRA ``B`` matrices stay at zero, so it equals the base model), and the spec refuses
``deploy``: the checkpoint is used by id, as a reward model.

Resume: the split is a function of the seed and the records, and the reward model's weights
and optimizer come back from the resume point like any module's (``trainers.loop``). The reward
model is built with the stages, before the loop restores weights, so that a job resumed from a
resume point at its last step (no stage runs again) still saves the trained reward model.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from align_core import bradley_terry_loss, bradley_terry_losses, pairwise_accuracy
from contracts.specs import RewardModelSpec
from trainers.loop import Stage, TrainContext
from trainers.modeling import Encoded
from trainers.recipes.afd import REWARD_DIR, build_discriminator, reward_logits, write_reward_model
from trainers.recipes.base import Recipe, Records
from trainers.recipes.stages import batch_share, encode_all

logger = logging.getLogger(__name__)
KIND = "bradley_terry"
MODULE = "reward_model"


def split_pairs(records: Records, fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """(training, held-out) record indices, both sorted. Pairs of the same conversation stay on
    one side (a held-out prompt is one the reward model never saw; when every pair shares one
    conversation, pairs are split one by one). Prompts are taken in a seeded order until
    ``round(len(records) x fraction)`` pairs are held out: at least one prompt when
    ``fraction > 0``, never every prompt (a single pair always trains)."""
    groups: dict[str, list[int]] = {}
    for i, record in enumerate(records):
        groups.setdefault(json.dumps(record["messages"], sort_keys=True), []).append(i)
    units = list(groups.values()) if len(groups) > 1 else [[i] for i in range(len(records))]
    order = torch.randperm(len(units), generator=torch.Generator().manual_seed(seed)).tolist()
    target = round(len(records) * fraction)
    held: list[int] = []
    if fraction > 0:
        for unit in reversed(order[1:]):  # order[0] always trains
            held += units[unit]
            if len(held) >= target:
                break
    train = sorted(set(range(len(records))) - set(held))
    return train, sorted(held)


@dataclass
class BradleyTerryStage:
    """The reward model on (chosen, rejected) pairs; ``loss`` indices are training positions."""

    name: str
    steps: int
    learning_rate: float
    records: Records
    held_out_fraction: float
    module: str = MODULE
    _chosen: list[Encoded] = field(default_factory=list, init=False, repr=False)
    _rejected: list[Encoded] = field(default_factory=list, init=False, repr=False)
    _train: list[int] = field(default_factory=list, init=False, repr=False)
    _held: list[int] = field(default_factory=list, init=False, repr=False)

    def prepare(self, ctx: TrainContext) -> None:
        """The split and the encoded pairs (the module itself is built with the stages)."""
        seed = ctx.spec.hyperparameters.seed
        self._train, self._held = split_pairs(self.records, self.held_out_fraction, seed)
        self._chosen = encode_all(ctx, self.records, "chosen")
        self._rejected = encode_all(ctx, self.records, "rejected")

    def size(self) -> int:
        return len(self._train)

    def rewards(self, ctx: TrainContext, pairs: list[int]) -> tuple[Tensor, Tensor]:
        """``(B,)`` rewards of the chosen and of the rejected answers of records ``pairs``."""
        items = [self._chosen[i] for i in pairs] + [self._rejected[i] for i in pairs]
        rewards = reward_logits(ctx.modules[self.module], items, ctx.pad_id)  # (2B,)
        chosen, rejected = rewards.split(len(pairs))
        return chosen, rejected

    def loss(
        self, ctx: TrainContext, indices: list[int], batch: list[int]
    ) -> tuple[Tensor, dict[str, float]]:
        chosen, rejected = self.rewards(ctx, [self._train[i] for i in indices])  # (B,), (B,)
        margin = (chosen - rejected).detach()
        metrics = {
            "rm/accuracy": float(pairwise_accuracy(chosen, rejected)),
            "rm/margin": float(margin.mean()),
            "rm/chosen": float(chosen.detach().mean()),
            "rm/rejected": float(rejected.detach().mean()),
        }
        if len(indices) == len(batch):
            return bradley_terry_loss(chosen, rejected), metrics
        return batch_share(bradley_terry_losses(chosen, rejected), len(batch)), metrics

    @torch.no_grad()
    def held_out(self, ctx: TrainContext) -> dict[str, Any]:
        """Pairwise accuracy and mean loss on the held-out pairs (None without any)."""
        if not self._chosen:  # resumed after the last step: the stage never prepared
            self.prepare(ctx)
        out: dict[str, Any] = {"heldout_pairs": len(self._held), "train_pairs": len(self._train),
                               "heldout_accuracy": None, "heldout_loss": None}
        if not self._held:
            return out
        model = ctx.modules[self.module]
        model.eval()
        hp = ctx.spec.hyperparameters
        size = hp.micro_batch_size or hp.batch_size
        chosen, rejected = [], []
        with ctx.placement.autocast():
            for start in range(0, len(self._held), size):
                c, r = self.rewards(ctx, self._held[start : start + size])
                chosen.append(c.cpu())
                rejected.append(r.cpu())
        r_c, r_r = torch.cat(chosen), torch.cat(rejected)
        out["heldout_accuracy"] = float(pairwise_accuracy(r_c, r_r))
        out["heldout_loss"] = float(bradley_terry_loss(r_c, r_r))
        return out


def reward_model_stages(ctx: TrainContext, records: Records) -> list[Stage]:
    spec = ctx.spec
    assert isinstance(spec, RewardModelSpec)
    hp = spec.hyperparameters
    if MODULE not in ctx.modules:  # before train(): its resume weights are restored at the start
        ctx.modules[MODULE] = build_discriminator(ctx)
    stage = BradleyTerryStage("reward-model", hp.max_steps, hp.learning_rate, records,
                              spec.held_out_fraction)
    ctx.summary["_reward_model_stage"] = stage
    return [stage]


def save_reward_model(ctx: TrainContext, folder: Path) -> None:
    stage: BradleyTerryStage = ctx.summary.pop("_reward_model_stage")
    result = stage.held_out(ctx)
    logger.info("job %s reward model: held-out pairwise accuracy %s on %d pairs (loss %s)",
                ctx.job_id, result["heldout_accuracy"], result["heldout_pairs"],
                result["heldout_loss"])
    ctx.summary["reward_model"] = {**result, "reward_model_dir": REWARD_DIR}
    write_reward_model(ctx, folder, KIND, {
        "reward": "scalar head r(x, y); P(chosen over rejected) = sigmoid(r_c - r_r)",
        **result,
    })


REWARD_MODEL = Recipe(reward_model_stages, save_reward_model)
