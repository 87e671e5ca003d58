"""DPO-family pair losses: DPO, cDPO, IPO and robust DPO (docs/algorithms.md §0.1).

Every loss takes the four summed completion log-probabilities of a preference pair and returns
**per-example** losses of shape ``(B,)``; the caller reduces (``.mean()`` or
``weighting.weighted_mean``). Throughout,

    h = [logπ_θ(y_w|x) − logπ_ref(y_w|x)] − [logπ_θ(y_l|x) − logπ_ref(y_l|x)]      (B,)

computed as ``(policy_chosen − policy_rejected) − (ref_chosen − ref_rejected)``, the order of the
DPO authors' code and TRL. ``beta`` is the KL coefficient β > 0.

``robust_dpo_loss`` is Chowdhury et al. 2024 (TRL ``loss_type="robust"``), which the literature
also calls "rDPO"; Gallego's refined DPO is a different method, in ``align_core.rdpo``.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

Prob = float | Tensor
"""A probability given once for the batch (float) or per example (``(B,)`` tensor)."""


def check_beta(beta: float) -> None:
    """Raise ``ValueError`` unless ``beta > 0``."""
    if not beta > 0:
        raise ValueError(f"beta must be > 0, got {beta}")


def preference_margin(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    ref_chosen_logps: Tensor,
    ref_rejected_logps: Tensor,
) -> Tensor:
    """DPO log-ratio margin ``h`` (Rafailov et al. 2023, Eq. 7 inside σ, without β).

    All inputs ``(B,)`` summed completion log-probs; returns ``(B,)``.
    """
    return (policy_chosen_logps - policy_rejected_logps) - (ref_chosen_logps - ref_rejected_logps)


def implicit_rewards(policy_logps: Tensor, ref_logps: Tensor, beta: float) -> Tensor:
    """DPO implicit reward ``r = β·(logπ_θ − logπ_ref)``, detached (for logging / accuracy).

    Rafailov et al. 2023, Eq. 5 (up to the partition term). ``(B,)`` -> ``(B,)``.
    """
    return (beta * (policy_logps - ref_logps)).detach()


def soft_label_dpo_loss(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    ref_chosen_logps: Tensor,
    ref_rejected_logps: Tensor,
    *,
    beta: float,
    target_prob: Prob,
) -> Tensor:
    """DPO with a soft target ``p`` that y_w is preferred: ``−[p·logσ(βh) + (1−p)·logσ(−βh)]``.

    docs/algorithms.md §0.1 (cDPO, Mitchell 2023, is ``p = 1−ε``) and §5.3 (rDPO). ``p = 1`` is
    plain DPO; ``p < ½`` reverses the pair. ``target_prob``: float or ``(B,)``; returns ``(B,)``.
    """
    check_beta(beta)
    logits = beta * preference_margin(
        policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps
    )  # (B,)
    return -F.logsigmoid(logits) * target_prob - F.logsigmoid(-logits) * (1 - target_prob)


def dpo_loss(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    ref_chosen_logps: Tensor,
    ref_rejected_logps: Tensor,
    *,
    beta: float,
    label_smoothing: float = 0.0,
) -> Tensor:
    """DPO sigmoid loss ``−logσ(βh)`` (Rafailov et al. 2023, Eq. 7), with cDPO label smoothing.

    With ``label_smoothing = ε`` (Mitchell 2023, "cDPO"; TRL ≤ 0.28 ``loss_type="sigmoid"``):
    ``−(1−ε)·logσ(βh) − ε·logσ(−βh)``. All inputs ``(B,)``; returns ``(B,)``.
    """
    if not 0.0 <= label_smoothing <= 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1], got {label_smoothing}")
    return soft_label_dpo_loss(
        policy_chosen_logps,
        policy_rejected_logps,
        ref_chosen_logps,
        ref_rejected_logps,
        beta=beta,
        target_prob=1.0 - label_smoothing,
    )


def ipo_loss(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    ref_chosen_logps: Tensor,
    ref_rejected_logps: Tensor,
    *,
    beta: float,
) -> Tensor:
    """IPO loss ``(h − 1/(2β))²`` (Azar et al. 2023, arXiv 2310.12036, sampled IPO loss;
    docs/algorithms.md §0.1; TRL ``"ipo"``).

    β plays the role of the paper's τ. All inputs ``(B,)``; returns ``(B,)``. TRL feeds IPO
    per-token **mean** log-probs (``sequence_logps(..., average=True)``), not sums.
    """
    check_beta(beta)
    h = preference_margin(
        policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps
    )
    return (h - 1.0 / (2.0 * beta)) ** 2


def robust_dpo_loss(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    ref_chosen_logps: Tensor,
    ref_rejected_logps: Tensor,
    *,
    beta: float,
    label_smoothing: float = 0.0,
) -> Tensor:
    """Provably robust DPO (Chowdhury et al. 2024, arXiv 2403.00409; TRL ``"robust"``).

    ``[−(1−ε)·logσ(βh) + ε·logσ(−βh)] / (1−2ε)`` where ε is the assumed label-flip rate,
    ``0 ≤ ε < ½``. Not Gallego's rDPO (see ``rdpo_loss``). Inputs ``(B,)``; returns ``(B,)``.
    """
    check_beta(beta)
    if not 0.0 <= label_smoothing < 0.5:
        raise ValueError(f"robust DPO needs label_smoothing in [0, 0.5), got {label_smoothing}")
    logits = beta * preference_margin(
        policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps
    )
    eps = label_smoothing
    return (-F.logsigmoid(logits) * (1 - eps) + F.logsigmoid(-logits) * eps) / (1 - 2 * eps)


def chosen_nll_loss(
    policy_chosen_logps: Tensor,
    chosen_lengths: Tensor,
    *,
    mean_length: float | Tensor | None = None,
) -> Tensor:
    """Negative log-likelihood of the chosen answers, the term RPO adds to DPO (Pang et al.
    2024, arXiv 2404.19733, Eq. 3; TRL ``rpo_alpha``, in TRL 1.16 ``loss_type=["sigmoid",
    "sft"]`` with ``loss_weights=[1, rpo_alpha]``). docs/algorithms.md §0.2.

    TRL's term is the NLL per chosen token over the whole batch, ``−Σ_b logπ(y_w,b|x_b) /
    Σ_b |y_w,b|``. To keep the ``(B,)`` contract, example ``b`` gets ``−logπ(y_w,b|x_b) / L̄``
    with ``L̄`` the batch's mean chosen length, so the plain mean over the batch is exactly TRL's
    term. ``mean_length`` overrides ``L̄`` (a micro-batch passes its global batch's value).

    ``policy_chosen_logps``: ``(B,)`` summed completion log-probs; ``chosen_lengths``: ``(B,)``
    completion token counts. Returns ``(B,)``.
    """
    if mean_length is None:
        mean_length = chosen_lengths.float().mean()
    if not float(mean_length) > 0:
        raise ValueError(f"mean chosen length must be > 0, got {float(mean_length)}")
    return -policy_chosen_logps / mean_length
