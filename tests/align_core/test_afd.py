"""AfD: Init-SFT discriminator loss, reward = logit, implicit baseline, Best-of-N."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from align_core import (
    best_of_n,
    discriminator_accuracy,
    discriminator_loss,
    discriminator_losses,
    gather_best,
    implicit_reward_baseline,
    select_best_of_n,
)


def test_discriminator_loss_by_hand() -> None:
    """logit 0 on anything: BCE = log 2 per group, so loss = 2·log 2 = 1.386294.
    SFT logit 2: −logσ(2) = log(1 + e^−2) = 0.126928; init logit −1: log(1 + e^−1) = 0.313262."""
    assert discriminator_loss(torch.zeros(3), torch.zeros(5)).item() == pytest.approx(
        2 * math.log(2), abs=1e-6
    )
    loss = discriminator_loss(torch.tensor([2.0]), torch.tensor([-1.0]))
    assert loss.item() == pytest.approx(0.126928 + 0.313262, abs=1e-6)


def test_per_example_losses_match_bce_with_logits() -> None:
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(8, generator=gen)
    is_sft = torch.rand(8, generator=gen) < 0.5
    expected = F.binary_cross_entropy_with_logits(logits, is_sft.float(), reduction="none")
    torch.testing.assert_close(discriminator_losses(logits, is_sft), expected)
    # Group form = mean over SFT samples + mean over init samples.
    group = discriminator_loss(logits[is_sft], logits[~is_sft])
    manual = expected[is_sft].mean() + expected[~is_sft].mean()
    assert group.item() == pytest.approx(manual.item(), abs=1e-6)


def test_discriminator_gradient_matches_finite_differences() -> None:
    gen = torch.Generator().manual_seed(1)
    pos = torch.randn(4, generator=gen, dtype=torch.float64, requires_grad=True)
    neg = torch.randn(3, generator=gen, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(discriminator_loss, (pos, neg))


def test_accuracy() -> None:
    logits = torch.tensor([1.0, -2.0, 0.5, -0.1])
    is_sft = torch.tensor([True, False, False, False])
    assert discriminator_accuracy(logits, is_sft).item() == pytest.approx(0.75)


def test_implicit_reward_baseline() -> None:
    """log π_SFT − log π_init = −10 − (−12) = 2, detached."""
    sft = torch.tensor([-10.0], requires_grad=True)
    reward = implicit_reward_baseline(sft, torch.tensor([-12.0]))
    assert reward.item() == 2.0 and not reward.requires_grad


def test_best_of_n_and_gather() -> None:
    rewards = torch.tensor([[0.1, 0.9, 0.3], [2.0, 2.0, -1.0], [math.nan, -5.0, -6.0]])
    idx = best_of_n(rewards)
    assert idx.tolist() == [1, 0, 1]  # ties -> lowest index; NaN never wins
    candidates = torch.arange(3 * 3 * 2).view(3, 3, 2)  # (B, N, L)
    torch.testing.assert_close(gather_best(candidates, idx), candidates[[0, 1, 2], [1, 0, 1]])
    torch.testing.assert_close(select_best_of_n(candidates, rewards), gather_best(candidates, idx))


def test_best_of_one_is_plain_sampling() -> None:
    """N = 1: Best-of-N returns the single π_SFT sample whatever its reward."""
    candidates = torch.tensor([[[5, 6, 7]], [[8, 9, 1]]])
    rewards = torch.tensor([[-3.0], [10.0]])
    assert torch.equal(select_best_of_n(candidates, rewards), candidates[:, 0])


def test_shape_errors() -> None:
    with pytest.raises(ValueError):
        best_of_n(torch.zeros(3))
    with pytest.raises(ValueError):
        gather_best(torch.zeros(2, 3), torch.zeros(3, dtype=torch.long))
