"""Bradley–Terry reward model on preference pairs (docs/algorithms.md §8).

Bradley & Terry (1952) model a preference as ``P(y_c ≻ y_r | x) = σ(r(x, y_c) − r(x, y_r))``;
a reward model ``r_φ`` (a scalar head on an LM backbone) is fitted by maximising the likelihood
of the observed choices, i.e. minimising ``−log σ(r_c − r_r)`` (Stiennon et al. 2020, eq. 1;
Ouyang et al. 2022 "InstructGPT", eq. 1, with one pair per prompt). Only reward differences are
identified: adding a constant to every reward leaves the loss unchanged.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


def _check(chosen_rewards: Tensor, rejected_rewards: Tensor) -> None:
    if chosen_rewards.shape != rejected_rewards.shape:
        raise ValueError(
            f"chosen and rejected rewards must have the same shape, got "
            f"{tuple(chosen_rewards.shape)} and {tuple(rejected_rewards.shape)}"
        )


def bradley_terry_losses(chosen_rewards: Tensor, rejected_rewards: Tensor) -> Tensor:
    """Per-pair negative log-likelihood ``−log σ(r_c − r_r)``.

    ``chosen_rewards``, ``rejected_rewards``: ``(B,)`` scalar rewards of the two answers of each
    pair. Returns ``(B,)``; written as ``softplus(r_r − r_c)``, which is the same and stays finite
    for large margins of either sign.
    """
    _check(chosen_rewards, rejected_rewards)
    return F.softplus(rejected_rewards - chosen_rewards)


def bradley_terry_loss(chosen_rewards: Tensor, rejected_rewards: Tensor) -> Tensor:
    """Mean over pairs of ``−log σ(r_c − r_r)``: ``(B,)``, ``(B,)`` -> scalar."""
    return bradley_terry_losses(chosen_rewards, rejected_rewards).mean()


def pairwise_accuracy(chosen_rewards: Tensor, rejected_rewards: Tensor) -> Tensor:
    """Share of pairs ranked right, ``mean(r_c > r_r)``: ``(B,)``, ``(B,)`` -> scalar.

    A tie counts as wrong (a reward model that scores everything alike has accuracy 0, not 0.5).
    """
    _check(chosen_rewards, rejected_rewards)
    return (chosen_rewards.detach() > rejected_rewards.detach()).float().mean()
