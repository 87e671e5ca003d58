"""AfD: alignment from demonstrations with an Init-SFT discriminator reward model.

Sun & van der Schaar, "Inverse-RLignment" (arXiv 2405.15624); docs/algorithms.md §4. A discriminator
``D_φ = σ(f_φ(x, y))`` separates samples of π_SFT (positives, label 1) from samples of π_init
(negatives, label 0); the reward is its logit, ``r = log D − log(1 − D) = f_φ(x, y)`` (§4.1), and
it is used for Best-of-N over samples of π_SFT (§4.2). The Bayes-optimal logit of that
discriminator, ``log π_SFT(y|x) − log π_init(y|x)``, is a training-free baseline (§4.3).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def discriminator_losses(logits: Tensor, is_sft: Tensor) -> Tensor:
    """Per-example binary cross-entropy of the Init-SFT discriminator.

    Paper §"Algorithms for AfD" (discriminator objective ``max_φ E_SFT[log D] + E_init[log(1−D)]``),
    docs/algorithms.md §4.3 step 3. ``logits``: ``(B,)`` ``f_φ(x, y)``; ``is_sft``: ``(B,)`` bool,
    true for samples of π_SFT. Returns ``(B,)`` ``BCEWithLogits(logit, label)``.
    """
    return F.binary_cross_entropy_with_logits(
        logits, is_sft.to(logits.dtype), reduction="none"
    )


def discriminator_loss(sft_logits: Tensor, init_logits: Tensor) -> Tensor:
    """Discriminator loss as in §4.3: ``BCE(f(pos), 1).mean() + BCE(f(neg), 0).mean()``.

    ``sft_logits``: ``(P,)`` logits of π_SFT samples; ``init_logits``: ``(N,)`` logits of π_init
    samples. Each group is averaged on its own, so unequal P and N weigh the classes equally; an
    empty group contributes 0. Returns a scalar.
    """
    zero = sft_logits.new_zeros(())
    pos = F.softplus(-sft_logits).mean() if sft_logits.numel() else zero  # BCE(l, 1) = softplus(-l)
    neg = F.softplus(init_logits).mean() if init_logits.numel() else zero  # BCE(l, 0) = softplus(l)
    return pos + neg


def discriminator_accuracy(logits: Tensor, is_sft: Tensor) -> Tensor:
    """Fraction of samples on the right side of 0: ``(logit > 0) == is_sft``. ``(B,)`` -> scalar."""
    return ((logits > 0) == is_sft.bool()).float().mean()


def implicit_reward_baseline(sft_logps: Tensor, init_logps: Tensor) -> Tensor:
    """Bayes-optimal Init-SFT logit ``log π_SFT(y|x) − log π_init(y|x)`` (§4.3 ablation).

    Inputs: ``(...)`` summed completion log-probs of the same samples; returns ``(...)``, detached.
    """
    return (sft_logps - init_logps).detach()


def best_of_n(rewards: Tensor) -> Tensor:
    """Index of the highest-reward candidate per prompt (Best-of-N, §4.2).

    ``rewards``: ``(B, N)``. Returns ``(B,)`` int64; ties go to the lowest index, and NaN rewards
    never win unless a whole row is NaN (then index 0).
    """
    if rewards.dim() != 2 or rewards.shape[1] == 0:
        raise ValueError(f"rewards must be (B, N) with N >= 1, got {tuple(rewards.shape)}")
    clean = rewards.detach().float().nan_to_num(nan=float("-inf"))
    return clean.argmax(dim=-1)


def gather_best(candidates: Tensor, indices: Tensor) -> Tensor:
    """Pick one candidate per row: ``out[b] = candidates[b, indices[b]]``.

    ``candidates``: ``(B, N, ...)`` (e.g. token ids ``(B, N, L)``); ``indices``: ``(B,)``.
    Returns ``(B, ...)``.
    """
    if candidates.dim() < 2 or indices.shape != candidates.shape[:1]:
        raise ValueError(
            f"expected candidates (B, N, ...) and indices (B,), got {tuple(candidates.shape)} "
            f"and {tuple(indices.shape)}"
        )
    rows = torch.arange(candidates.shape[0], device=candidates.device)
    return candidates[rows, indices.to(candidates.device).long()]


def select_best_of_n(candidates: Tensor, rewards: Tensor) -> Tensor:
    """Best-of-N selection: ``gather_best(candidates, best_of_n(rewards))``.

    ``candidates``: ``(B, N, ...)``; ``rewards``: ``(B, N)``. Returns ``(B, ...)``.
    """
    return gather_best(candidates, best_of_n(rewards))
