"""rDPO: refined DPO with external reward scores (Gallego 2024, arXiv 2402.08005; §5.3).

[INFERRED] reconstruction: the training code was never released. The default is the soft-label
form ``−[p·logσ(βh) + (1−p)·logσ(−βh)]`` with ``p = σ((s_w − s_l)/τ)`` from an external judge's
scores ``s_w`` (revision, chosen) and ``s_l`` (original, rejected); the spec's alternatives
(a) acceptance filter, (b) per-pair weight and (c) score margin are kept beside it.
Not Chowdhury et al.'s robust DPO (``dpo.robust_dpo_loss``), which is also called "rDPO".

All log-prob and score inputs are ``(B,)``; losses are per example ``(B,)``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from align_core.dpo import check_beta, dpo_loss, preference_margin, soft_label_dpo_loss


def _score_gap(chosen_scores: Tensor, rejected_scores: Tensor) -> Tensor:
    """``s_w − s_l`` in floating point (integer judge scores become fp32; fp64 stays fp64)."""
    diff = chosen_scores - rejected_scores
    return diff.to(torch.promote_types(diff.dtype, torch.float32)).detach()


def rdpo_target_prob(chosen_scores: Tensor, rejected_scores: Tensor, tau: float = 1.0) -> Tensor:
    """Bradley–Terry probability of the external RM scores, ``p = σ((s_w − s_l)/τ)``.

    docs/algorithms.md §5.3 [INFERRED] (Gallego 2024, arXiv 2402.08005). ``(B,)`` -> ``(B,)``,
    detached.
    """
    if not tau > 0:
        raise ValueError(f"tau must be > 0, got {tau}")
    return torch.sigmoid(_score_gap(chosen_scores, rejected_scores) / tau).detach()


def rdpo_loss(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    ref_chosen_logps: Tensor,
    ref_rejected_logps: Tensor,
    *,
    beta: float,
    chosen_scores: Tensor,
    rejected_scores: Tensor,
    tau: float = 1.0,
) -> Tensor:
    """Refined DPO (Gallego 2024, arXiv 2402.08005), reconstructed soft-label form [INFERRED].

    docs/algorithms.md §5.3: ``−[p·logσ(βh) + (1−p)·logσ(−βh)]`` with ``p = σ((s_w − s_l)/τ)`` from
    external reward-model scores ``s`` (``(B,)`` each). Swapping the pair (and so p -> 1−p)
    leaves the loss unchanged. Returns ``(B,)``.
    """
    p = rdpo_target_prob(chosen_scores, rejected_scores, tau).to(policy_chosen_logps.dtype)
    return soft_label_dpo_loss(
        policy_chosen_logps,
        policy_rejected_logps,
        ref_chosen_logps,
        ref_rejected_logps,
        beta=beta,
        target_prob=p,
    )


def rdpo_acceptance_mask(chosen_scores: Tensor, rejected_scores: Tensor) -> Tensor:
    """dSC-style acceptance filter (Gallego 2023, arXiv 2312.01957): keep a pair iff ``s_w > s_l``.

    docs/algorithms.md §5.3 alternative (a). ``(B,)`` scores -> ``(B,)`` bool.
    """
    return chosen_scores > rejected_scores


def rdpo_filter_loss(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    ref_chosen_logps: Tensor,
    ref_rejected_logps: Tensor,
    *,
    beta: float,
    chosen_scores: Tensor,
    rejected_scores: Tensor,
) -> Tensor:
    """rDPO alternative (a): DPO on accepted pairs only (docs/algorithms.md §5.3 (a)) [INFERRED].

    Returns ``(B,)`` losses ``w_i·L_DPO,i`` with ``w = mask / mean(mask)``: rejected pairs give 0
    and ``losses.mean()`` equals the DPO mean over the accepted pairs (0 if none is accepted).
    """
    mask = rdpo_acceptance_mask(chosen_scores, rejected_scores).to(policy_chosen_logps.dtype)
    weights = mask / mask.mean().clamp_min(1.0 / max(mask.numel(), 1))  # (B,), mean 1 or all 0
    losses = dpo_loss(
        policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, beta=beta
    )
    return losses * weights


def rdpo_weighted_loss(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    ref_chosen_logps: Tensor,
    ref_rejected_logps: Tensor,
    *,
    beta: float,
    chosen_scores: Tensor,
    rejected_scores: Tensor,
    tau: float = 1.0,
) -> Tensor:
    """rDPO alternative (b): DPO weighted per pair by ``g(s_w − s_l) = σ((s_w − s_l)/τ)``.

    docs/algorithms.md §5.3 (b) [INFERRED]; the choice g = σ(·/τ) is ours. Inputs ``(B,)``; returns
    ``(B,)``. The weights carry no gradient.
    """
    weights = rdpo_target_prob(chosen_scores, rejected_scores, tau).to(policy_chosen_logps.dtype)
    losses = dpo_loss(
        policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, beta=beta
    )
    return losses * weights


def rdpo_margin_loss(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    ref_chosen_logps: Tensor,
    ref_rejected_logps: Tensor,
    *,
    beta: float,
    chosen_scores: Tensor,
    rejected_scores: Tensor,
    gamma: float = 1.0,
) -> Tensor:
    """rDPO alternative (c): DPO with a score margin, ``−logσ(βh − γ(s_w − s_l))``.

    docs/algorithms.md §5.3 (c) [INFERRED]. Inputs ``(B,)``; returns ``(B,)``.
    """
    check_beta(beta)
    h = preference_margin(
        policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps
    )
    diff = _score_gap(chosen_scores, rejected_scores).to(h.dtype)
    return -F.logsigmoid(beta * h - gamma * diff)
