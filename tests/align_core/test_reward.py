"""Bradley–Terry reward-model loss and pairwise accuracy, against hand computations."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from align_core import bradley_terry_loss, bradley_terry_losses, pairwise_accuracy


def test_equal_rewards_cost_log_2() -> None:
    """r_c = r_r: −log σ(0) = log 2 = 0.693147 for every pair, whatever the common value."""
    losses = bradley_terry_losses(torch.tensor([0.0, 3.0, -7.5]), torch.tensor([0.0, 3.0, -7.5]))
    torch.testing.assert_close(losses, torch.full((3,), math.log(2)))


def test_losses_by_hand() -> None:
    """Margins r_c − r_r = 2, −1, 0:
    −log σ(2)  = log(1 + e^−2) = log 1.135335 = 0.126928
    −log σ(−1) = log(1 + e^1)  = log 3.718282 = 1.313262
    −log σ(0)  = log 2         = 0.693147
    mean = (0.126928 + 1.313262 + 0.693147) / 3 = 2.133337 / 3 = 0.711112."""
    chosen = torch.tensor([1.5, -0.5, 4.0])
    rejected = torch.tensor([-0.5, 0.5, 4.0])
    losses = bradley_terry_losses(chosen, rejected)
    torch.testing.assert_close(losses, torch.tensor([0.126928, 1.313262, 0.693147]),
                               atol=1e-6, rtol=0)
    assert bradley_terry_loss(chosen, rejected).item() == pytest.approx(0.711112, abs=1e-6)


def test_losses_are_minus_logsigmoid_of_the_margin() -> None:
    gen = torch.Generator().manual_seed(0)
    chosen, rejected = torch.randn(16, generator=gen), torch.randn(16, generator=gen)
    expected = -F.logsigmoid(chosen - rejected)
    torch.testing.assert_close(bradley_terry_losses(chosen, rejected), expected)
    torch.testing.assert_close(bradley_terry_loss(chosen, rejected), expected.mean())


def test_only_reward_differences_matter() -> None:
    """Shifting every reward by a constant leaves the loss unchanged (BT identifies margins)."""
    gen = torch.Generator().manual_seed(1)
    chosen, rejected = torch.randn(8, generator=gen), torch.randn(8, generator=gen)
    torch.testing.assert_close(bradley_terry_losses(chosen + 5.0, rejected + 5.0),
                               bradley_terry_losses(chosen, rejected))


def test_large_margins_stay_finite() -> None:
    """Margin +200: loss ≈ e^−200 ≈ 0; margin −200: loss ≈ 200 (no overflow to inf)."""
    losses = bradley_terry_losses(torch.tensor([100.0, -100.0]), torch.tensor([-100.0, 100.0]))
    assert losses[0].item() == pytest.approx(0.0, abs=1e-6)
    assert losses[1].item() == pytest.approx(200.0, rel=1e-6)


def test_gradient_pushes_chosen_up_and_rejected_down() -> None:
    """d/dr_c −log σ(r_c − r_r) = −σ(r_r − r_c) = −0.5 at equal rewards; d/dr_r = +0.5.
    With the mean over B = 2 pairs each gradient is halved: ∓0.25."""
    chosen = torch.zeros(2, requires_grad=True)
    rejected = torch.zeros(2, requires_grad=True)
    bradley_terry_loss(chosen, rejected).backward()
    assert chosen.grad is not None and rejected.grad is not None
    torch.testing.assert_close(chosen.grad, torch.full((2,), -0.25))
    torch.testing.assert_close(rejected.grad, torch.full((2,), 0.25))


def test_gradient_matches_finite_differences() -> None:
    gen = torch.Generator().manual_seed(2)
    chosen = torch.randn(5, generator=gen, dtype=torch.float64, requires_grad=True)
    rejected = torch.randn(5, generator=gen, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(bradley_terry_loss, (chosen, rejected))


def test_pairwise_accuracy_by_hand() -> None:
    """Pairs (1 > 0) right, (−2 > −1) wrong, (0.5 > 0.4) right, (3 = 3) a tie, wrong: 2/4."""
    chosen = torch.tensor([1.0, -2.0, 0.5, 3.0])
    rejected = torch.tensor([0.0, -1.0, 0.4, 3.0])
    assert pairwise_accuracy(chosen, rejected).item() == pytest.approx(0.5)
    assert pairwise_accuracy(rejected, chosen).item() == pytest.approx(0.25)  # swapped: 1/4


def test_mismatched_shapes_are_refused() -> None:
    with pytest.raises(ValueError, match="same shape"):
        bradley_terry_losses(torch.zeros(3), torch.zeros(2))
    with pytest.raises(ValueError, match="same shape"):
        pairwise_accuracy(torch.zeros(3), torch.zeros(3, 1))
