"""Point-wise DPO and ULMA (Cai et al., "ULMA", arXiv 2312.02554; docs/algorithms.md §2).

Data are single responses with a label ``z``: binary (``z == 1`` positive/demonstration, anything
else negative) or continuous. The inputs are **per-token mean** completion log-probs (ULMA's
``average_log_prob=True``; ``logprobs.sequence_logps(..., average=True)``):

    h = ℓ_θ(y|x) − ℓ_ref(y|x),    implicit reward r = β·h + c,    c = log Z(x) (default 0)

Each loss returns per-example losses ``(B,)``. ULMA's code reduces them **group-wise**: the mean
over positives plus the mean over negatives, an empty group giving 0 (``group_mean``). Registry
entries carry that choice as ``group_wise`` and apply it in ``PointwiseLoss.reduce``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from align_core.registry import Registry


def _reward(policy_logps: Tensor, ref_logps: Tensor, beta: float, log_z: float) -> Tensor:
    if not beta > 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    return beta * (policy_logps - ref_logps) + log_z  # (B,)


def positive_mask(labels: Tensor) -> Tensor:
    """ULMA's split: ``labels == 1`` are positives/demonstrations. ``(B,)`` -> ``(B,)`` bool."""
    return labels == 1


def pointwise_dpo_losses(
    policy_logps: Tensor, ref_logps: Tensor, labels: Tensor, *, beta: float, log_z: float = 0.0
) -> Tensor:
    """Point-wise DPO for binary labels: logistic regression of ``z`` on ``r = βh + c``.

    ULMA §3 / docs/algorithms.md §2.2 (code ``sft_loss_type="pointwise_dpo"``): positives give
    ``−logσ(r)``, negatives ``−logσ(−r)``. Inputs ``(B,)``; returns ``(B,)``.
    """
    r = _reward(policy_logps, ref_logps, beta, log_z)
    return torch.where(positive_mask(labels), -F.logsigmoid(r), -F.logsigmoid(-r))


def pointwise_dpo_continuous_losses(
    policy_logps: Tensor, ref_logps: Tensor, labels: Tensor, *, beta: float, log_z: float = 0.0
) -> Tensor:
    """Point-wise DPO for continuous labels: ``(z − βh − c)²`` on **every** row.

    docs/algorithms.md §2.2 "pure continuous" form (the code sends ``z == 1`` rows to the
    demonstration term instead; that variant is ``ulma_continuous_losses``). ``(B,)`` -> ``(B,)``.
    """
    r = _reward(policy_logps, ref_logps, beta, log_z)
    return (labels.to(r.dtype) - r) ** 2


def ulma_losses(
    policy_logps: Tensor, ref_logps: Tensor, labels: Tensor, *, beta: float, log_z: float = 0.0
) -> Tensor:
    """Unified ULMA loss: SFT on positives, KL-regularised push-down on negatives.

    ULMA Eq. (unified loss) / docs/algorithms.md §2.2 (code ``sft_loss_type="logloss"``): positives
    give ``−ℓ_θ(y|x)``, negatives ``−logσ(−βh − c)``. Inputs ``(B,)``; returns ``(B,)``.
    """
    r = _reward(policy_logps, ref_logps, beta, log_z)
    return torch.where(positive_mask(labels), -policy_logps, -F.logsigmoid(-r))


def ulma_beta_logloss_losses(
    policy_logps: Tensor, ref_logps: Tensor, labels: Tensor, *, beta: float, log_z: float = 0.0
) -> Tensor:
    """ULMA with ``sft_loss_type="beta_logloss"``: positives give ``−β·ℓ_θ``.

    Negatives as in ``ulma_losses``. ``(B,)`` -> ``(B,)``.
    """
    r = _reward(policy_logps, ref_logps, beta, log_z)
    return torch.where(positive_mask(labels), -beta * policy_logps, -F.logsigmoid(-r))


def ulma_continuous_losses(
    policy_logps: Tensor, ref_logps: Tensor, labels: Tensor, *, beta: float, log_z: float = 0.0
) -> Tensor:
    """ULMA's code with ``preference_loss_type="continuous"``: ``−ℓ_θ`` on ``z == 1`` rows,
    ``(z − βh − c)²`` on the others (docs/algorithms.md §2.2 caveat). ``(B,)`` -> ``(B,)``."""
    r = _reward(policy_logps, ref_logps, beta, log_z)
    return torch.where(positive_mask(labels), -policy_logps, (labels.to(r.dtype) - r) ** 2)


def unlikelihood_losses(
    policy_logps: Tensor,
    ref_logps: Tensor | None,
    labels: Tensor,
    *,
    beta: float = 0.0,
    log_z: float = 0.0,
) -> Tensor:
    """Unlikelihood baseline of the ULMA repo: ``−ℓ_θ`` on positives, ``+ℓ_θ`` on negatives.

    docs/algorithms.md §2.2 (``tuner/unlikelihood/trainer.py``). No reference model; ``beta`` and
    ``log_z`` are accepted for a uniform signature and ignored. ``(B,)`` -> ``(B,)``.
    """
    return torch.where(positive_mask(labels), -policy_logps, policy_logps)


def group_weights(positive: Tensor) -> Tensor:
    """Per-example weights ``B / n_group`` so that ``mean(w·l) == group_mean(l, positive)``.

    ``(B,)`` bool -> ``(B,)`` float, detached.
    """
    positive = positive.bool()
    n = positive.numel()
    n_pos = positive.sum()
    counts = torch.where(positive, n_pos, n - n_pos).clamp_min(1)
    return (n / counts.float()).detach()


def group_mean(losses: Tensor, positive: Tensor) -> Tensor:
    """ULMA reduction: ``mean_{positive}(losses) + mean_{negative}(losses)``.

    ``ULMATrainer.ulma_loss``: each group is averaged on its own, then the two are added; an empty
    group gives 0 (the code's ``nan_to_num``). Unlike ``nan_to_num``, a NaN loss is not hidden.
    ``losses`` ``(B,)``, ``positive`` ``(B,)`` bool; returns a scalar.
    """
    positive = positive.bool()
    zero = torch.zeros((), dtype=losses.dtype, device=losses.device)
    n_pos = positive.sum().clamp_min(1).to(losses.dtype)
    n_neg = (~positive).sum().clamp_min(1).to(losses.dtype)
    pos = torch.where(positive, losses, zero).sum() / n_pos
    neg = torch.where(positive, zero, losses).sum() / n_neg
    return pos + neg


@dataclass(frozen=True)
class PointwiseLoss:
    """A registered point-wise loss and its capability flags.

    Attributes:
        fn: ``fn(policy_logps, ref_logps, labels, *, beta, log_z) -> (B,)``.
        needs_reference: uses reference log-probs (otherwise ``ref_logps`` may be ``None``).
        group_wise: reduce with ``group_mean`` (ULMA) rather than a plain mean.
        continuous_labels: accepts real-valued labels (otherwise ``labels == 1`` vs the rest).
        paper: the paper and equation implemented.
    """

    fn: Callable[..., Tensor]
    needs_reference: bool = True
    group_wise: bool = True
    continuous_labels: bool = False
    paper: str = ""

    def __call__(
        self,
        policy_logps: Tensor,
        ref_logps: Tensor | None,
        labels: Tensor,
        *,
        beta: float,
        log_z: float = 0.0,
    ) -> Tensor:
        """Per-example losses ``(B,)``; raises if a needed reference is missing."""
        if self.needs_reference and ref_logps is None:
            raise ValueError("this loss needs ref_logps")
        return self.fn(policy_logps, ref_logps, labels, beta=beta, log_z=log_z)

    def reduce(self, losses: Tensor, labels: Tensor) -> Tensor:
        """Scalar training loss from ``(B,)`` losses: ``group_mean`` or ``mean``."""
        return group_mean(losses, positive_mask(labels)) if self.group_wise else losses.mean()


POINTWISE_LOSSES: Registry[PointwiseLoss] = Registry("point-wise loss")
"""Point-wise losses by name. Flags: ``needs_reference``, ``group_wise``, ``continuous_labels``."""
for _name, _entry in (
    ("pointwise_dpo", PointwiseLoss(pointwise_dpo_losses, paper="ULMA, point-wise DPO")),
    (
        "pointwise_dpo_continuous",
        PointwiseLoss(
            pointwise_dpo_continuous_losses,
            group_wise=False,
            continuous_labels=True,
            paper="ULMA, point-wise DPO (continuous)",
        ),
    ),
    ("ulma", PointwiseLoss(ulma_losses, paper="ULMA, unified loss")),
    ("ulma_beta_logloss", PointwiseLoss(ulma_beta_logloss_losses, paper="ULMA code option")),
    (
        "ulma_continuous",
        PointwiseLoss(ulma_continuous_losses, continuous_labels=True, paper="ULMA code option"),
    ),
    (
        "unlikelihood",
        PointwiseLoss(unlikelihood_losses, needs_reference=False, paper="ULMA repo baseline"),
    ),
):
    POINTWISE_LOSSES.register(_name, _entry)


def ulma_loss(
    policy_logps: Tensor,
    ref_logps: Tensor | None,
    labels: Tensor,
    *,
    beta: float = 0.1,
    log_z: float = 0.0,
    name: str = "ulma",
) -> Tensor:
    """Scalar loss of a registered point-wise method, reduced as its entry says (§2.6 pseudo-code).

    ``policy_logps``, ``ref_logps``, ``labels``: ``(B,)``. ``name``: a ``POINTWISE_LOSSES`` name.
    """
    entry = POINTWISE_LOSSES.get(name)
    return entry.reduce(entry(policy_logps, ref_logps, labels, beta=beta, log_z=log_z), labels)
