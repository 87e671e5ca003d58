"""Stages shared by the recipes: preference pairs, point-wise labels and SFT.

Each stage is data preparation plus one ``align_core`` loss. When the reference is the frozen
base under a LoRA adapter, reference log-probs are computed on first use per example (exact, and
a bounded run touches only the examples it samples). Otherwise (full fine-tuning, or a reference
that is an earlier policy) they are computed once at the start of the stage, with the policy as
it is then, and cached in the job's work dir, so a resumed job uses the same reference even after
full fine-tuning changed the weights.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from align_core import (
    PAIR_LOSSES,
    POINTWISE_LOSSES,
    chosen_nll_loss,
    implicit_rewards,
    positive_mask,
    weighted_mean,
)
from trainers.loop import TrainContext
from trainers.modeling import Encoded, batch_logps, encode, frozen_logps, is_adapter


def batch_share(losses: Tensor, batch_size: int, weights: Tensor | None = None) -> Tensor:
    """A micro-batch's part of the global batch's ``weighted_mean``: ``sum(w * l) / B``.
    Summed over the micro-batches of a batch, it is ``weighted_mean`` of the whole batch."""
    if weights is not None:
        losses = losses * weights.detach().to(losses)
    return losses.sum() / batch_size


class LazyReference:
    """Reference values computed on first use, per example: ``ref[indices]`` -> ``(B, ...)``.

    Only valid when the reference cannot change during training (the base weights under a LoRA
    adapter), which the stages check before using it.
    """

    def __init__(self, compute: Callable[[list[int]], Tensor]):
        self._compute = compute
        self._cache: dict[int, Tensor] = {}

    def __getitem__(self, indices: list[int]) -> Tensor:
        missing = [i for i in dict.fromkeys(indices) if i not in self._cache]
        if missing:
            for i, value in zip(missing, self._compute(missing), strict=True):
                self._cache[i] = value
        return torch.stack([self._cache[i] for i in indices])


def frozen_base(ctx: TrainContext, use_base: bool) -> bool:
    """Whether the reference is the untouched base model for the whole stage."""
    return use_base and is_adapter(ctx.policy)


def encode_all(ctx: TrainContext, records: list[dict[str, Any]], key: str) -> list[Encoded]:
    hp = ctx.spec.hyperparameters
    return [
        encode(ctx.tokenizer, r["messages"], r[key], hp.max_length, hp.max_prompt_length)
        for r in records
    ]


@dataclass
class PairStage:
    """DPO-family loss on (chosen, rejected) pairs, optionally with scores (rDPO) or weights
    (LD-Align). ``records``: ``{"messages", "chosen", "rejected"}`` (may be set by a recipe's
    ``before`` hook, e.g. after generating losers)."""

    name: str
    steps: int
    learning_rate: float
    loss_name: str
    loss_options: dict[str, float] = field(default_factory=dict)
    records: list[dict[str, Any]] = field(default_factory=list)
    chosen_scores: Tensor | None = None
    rejected_scores: Tensor | None = None
    weights: Tensor | None = None
    reference_is_base: bool = True
    module: str = "policy"
    nll_weight: float = 0.0  # RPO: + nll_weight x chosen-answer NLL (docs/algorithms.md §0.2)

    def __post_init__(self) -> None:
        self._chosen: list[Encoded] = []
        self._rejected: list[Encoded] = []
        self._ref: Tensor | LazyReference = torch.zeros(0, 2)

    def prepare(self, ctx: TrainContext) -> None:
        self._chosen = encode_all(ctx, self.records, "chosen")
        self._rejected = encode_all(ctx, self.records, "rejected")

        def logps(indices: list[int]) -> Tensor:  # (len(indices), 2): [chosen, rejected]
            use_base = self.reference_is_base
            chosen = frozen_logps(ctx.policy, [self._chosen[i] for i in indices], ctx.pad_id,
                                  use_base=use_base)
            rejected = frozen_logps(ctx.policy, [self._rejected[i] for i in indices],
                                    ctx.pad_id, use_base=use_base)
            return torch.stack([chosen, rejected], dim=1)

        if frozen_base(ctx, self.reference_is_base):
            self._ref = LazyReference(logps)
        else:
            every = list(range(len(self.records)))
            self._ref = ctx.cached(f"{self.name}-reference", lambda: {"ref": logps(every)})["ref"]

    def size(self) -> int:
        return len(self.records)

    def loss(
        self, ctx: TrainContext, indices: list[int], batch: list[int]
    ) -> tuple[Tensor, dict[str, float]]:
        hp = ctx.spec.hyperparameters
        items = [self._chosen[i] for i in indices] + [self._rejected[i] for i in indices]
        logps = batch_logps(ctx.policy, items, ctx.pad_id)  # (2B,): [chosen; rejected]
        policy_chosen, policy_rejected = logps.split(len(indices))
        ref = self._ref[indices].to(logps.device)  # (B, 2)
        scores: dict[str, Tensor] = {}
        if self.chosen_scores is not None and self.rejected_scores is not None:
            scores = {"chosen_scores": self.chosen_scores[indices].to(logps.device),
                      "rejected_scores": self.rejected_scores[indices].to(logps.device)}
        losses = PAIR_LOSSES.get(self.loss_name)(
            policy_chosen, policy_rejected, ref[:, 0], ref[:, 1], beta=hp.beta,
            options=self.loss_options, **scores,
        )  # (B,)
        nll: Tensor | None = None
        if self.nll_weight:
            lengths = torch.tensor([len(self._chosen[i].completion) for i in indices])
            mean_length = sum(len(self._chosen[i].completion) for i in batch) / len(batch)
            nll = chosen_nll_loss(policy_chosen, lengths, mean_length=mean_length)  # (B,)
            losses = losses + self.nll_weight * nll
        weights = self.weights[indices].to(logps.device) if self.weights is not None else None
        chosen_r = implicit_rewards(policy_chosen, ref[:, 0], hp.beta)
        rejected_r = implicit_rewards(policy_rejected, ref[:, 1], hp.beta)
        metrics = {
            "rewards/chosen": float(chosen_r.mean()),
            "rewards/rejected": float(rejected_r.mean()),
            "rewards/margin": float((chosen_r - rejected_r).mean()),
            "rewards/accuracy": float((chosen_r > rejected_r).float().mean()),
            "logps/chosen": float(policy_chosen.detach().mean()),
            "logps/rejected": float(policy_rejected.detach().mean()),
        }
        if nll is not None:
            metrics["nll/chosen"] = float(nll.detach().mean())
        if len(indices) == len(batch):
            return weighted_mean(losses, weights), metrics
        return batch_share(losses, len(batch), weights), metrics


@dataclass
class PointwiseStage:
    """Point-wise DPO / ULMA on ``{"messages", "completion", "label"}`` records (per-token mean
    log-probs, as ULMA's code; docs/algorithms.md §2.2)."""

    name: str
    steps: int
    learning_rate: float
    loss_name: str
    log_z: float
    records: list[dict[str, Any]]
    module: str = "policy"

    def prepare(self, ctx: TrainContext) -> None:
        self._items = encode_all(ctx, self.records, "completion")
        self._labels = torch.tensor([float(r["label"]) for r in self.records])
        entry = POINTWISE_LOSSES.get(self.loss_name)
        self._ref: Tensor | LazyReference | None = None

        def logps(indices: list[int]) -> Tensor:  # (len(indices),)
            items = [self._items[i] for i in indices]
            return frozen_logps(ctx.policy, items, ctx.pad_id, use_base=True, average=True)

        if entry.needs_reference and frozen_base(ctx, True):
            self._ref = LazyReference(logps)
        elif entry.needs_reference:
            every = list(range(len(self.records)))
            self._ref = ctx.cached(f"{self.name}-reference", lambda: {"ref": logps(every)})["ref"]

    def size(self) -> int:
        return len(self.records)

    def loss(
        self, ctx: TrainContext, indices: list[int], batch: list[int]
    ) -> tuple[Tensor, dict[str, float]]:
        entry = POINTWISE_LOSSES.get(self.loss_name)
        items = [self._items[i] for i in indices]
        policy = batch_logps(ctx.policy, items, ctx.pad_id, average=True)  # (B,)
        labels = self._labels[indices].to(policy.device)
        ref = self._ref[indices].to(policy.device) if self._ref is not None else None
        beta = ctx.spec.hyperparameters.beta
        losses = entry(policy, ref, labels, beta=beta, log_z=self.log_z)
        positive = labels == 1
        metrics = {"logps/positive": _masked_mean(policy, positive),
                   "logps/negative": _masked_mean(policy, ~positive)}
        if ref is not None:
            h = (policy - ref).detach()
            metrics["rewards/positive"] = _masked_mean(beta * h, positive)
            metrics["rewards/negative"] = _masked_mean(beta * h, ~positive)
        if len(indices) == len(batch):
            return entry.reduce(losses, labels), metrics
        if not entry.group_wise:
            return batch_share(losses, len(batch)), metrics
        # group_mean over the whole batch: each example counts 1 / (size of its label group in
        # the batch), so the micro-batches' parts add up to the batch's group-wise mean.
        in_batch = positive_mask(self._labels[batch])
        n_pos = int(in_batch.sum())
        counts = {True: max(n_pos, 1), False: max(len(batch) - n_pos, 1)}
        positive = positive_mask(labels)
        per_example = torch.tensor([1.0 / counts[bool(p)] for p in positive], device=policy.device)
        return (losses * per_example.to(losses)).sum(), metrics


def _masked_mean(values: Tensor, mask: Tensor) -> float:
    return float(values.detach()[mask].mean()) if bool(mask.any()) else 0.0


@dataclass
class SFTStage:
    """Supervised fine-tuning: per-token mean negative log-likelihood of the completions
    (the forward-KL / behaviour-cloning objective of AfD §4.1)."""

    name: str
    steps: int
    learning_rate: float
    records: list[dict[str, Any]]
    module: str = "policy"

    def prepare(self, ctx: TrainContext) -> None:
        self._items = encode_all(ctx, self.records, "completion")

    def size(self) -> int:
        return len(self.records)

    def loss(
        self, ctx: TrainContext, indices: list[int], batch: list[int]
    ) -> tuple[Tensor, dict[str, float]]:
        logps = batch_logps(ctx.policy, [self._items[i] for i in indices], ctx.pad_id,
                            average=True)  # (B,)
        loss = -logps.mean() if len(indices) == len(batch) else -batch_share(logps, len(batch))
        return loss, {"logps/mean_token": float(logps.detach().mean())}
