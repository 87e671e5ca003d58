"""LD-Align latent-distance weights: distances, normalisers, detachment, weighted mean."""

from __future__ import annotations

import math

import pytest
import torch

from align_core import (
    WEIGHTINGS,
    dpo_loss,
    latent_distance,
    latent_distance_weights,
    mean_weights,
    sigmoid_weights,
    softmax_weights,
    weighted_mean,
)


def t(*values: float) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64)


def test_distances_by_hand() -> None:
    """Pair 0: (3, 4) vs (0, 0): l2 = 5. Pair 1: (1, 0) vs (0, 1): l2 = √2, 1 − cos = 1.
    Pair 2: (1, 1) vs (2, 2): 1 − cos = 0."""
    a = torch.tensor([[3.0, 4.0], [1.0, 0.0], [1.0, 1.0]])
    b = torch.tensor([[0.0, 0.0], [0.0, 1.0], [2.0, 2.0]])
    l2 = latent_distance(a, b, "l2")
    torch.testing.assert_close(l2, torch.tensor([5.0, math.sqrt(2), math.sqrt(2)]))
    cos = latent_distance(a[1:], b[1:], "cosine")
    torch.testing.assert_close(cos, torch.tensor([1.0, 0.0]), atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="l2, cosine"):
        latent_distance(a, b, "manhattan")


def test_normalisers_by_hand() -> None:
    """d = (1, 2, 3):
    softmax, τ = 1: 3·e^d/Σe^d = 3·(0.090031, 0.244728, 0.665241) = (0.270092, 0.734185, 1.995723);
    mean: d/2 = (0.5, 1, 1.5);  sigmoid: μ = 2, s = √(2/3) = 0.816497 ->
    σ((−1, 0, 1)/0.816497) = (0.227103, 0.5, 0.772897)."""
    d = t(1.0, 2.0, 3.0)
    torch.testing.assert_close(softmax_weights(d), t(0.270092, 0.734185, 1.995723), atol=1e-6,
                               rtol=0)
    torch.testing.assert_close(mean_weights(d), t(0.5, 1.0, 1.5))
    torch.testing.assert_close(sigmoid_weights(d), t(0.227103, 0.5, 0.772897), atol=1e-6, rtol=0)


def test_larger_distance_gets_larger_weight() -> None:
    d = t(0.1, 0.5, 2.0, 7.0)
    for name in ("softmax", "mean", "sigmoid"):
        w = WEIGHTINGS.get(name)(d)
        assert torch.all(w[1:] > w[:-1]), name


@pytest.mark.parametrize("name", WEIGHTINGS.names())
def test_every_weighting_is_detached_and_well_formed(name: str) -> None:
    entry = WEIGHTINGS.get(name)
    gen = torch.Generator().manual_seed(0)
    chosen = torch.randn(5, 8, generator=gen, requires_grad=True)
    rejected = torch.randn(5, 8, generator=gen, requires_grad=True)
    w = latent_distance_weights(chosen, rejected, normaliser=name, tau=0.7)
    assert w.shape == (5,) and torch.isfinite(w).all() and (w >= 0).all()
    assert not w.requires_grad
    if entry.mean_one:
        assert w.mean().item() == pytest.approx(1.0, abs=1e-6)
    # Direct call on distances that carry gradient also returns detached weights.
    d = (chosen - rejected).norm(dim=-1)
    assert not entry(d).requires_grad


def test_no_gradient_reaches_the_encoder() -> None:
    """The weighted loss back-propagates into the policy log-probs but not into the latents."""
    gen = torch.Generator().manual_seed(1)
    latents_w = torch.randn(4, 3, generator=gen, requires_grad=True)
    latents_l = torch.randn(4, 3, generator=gen, requires_grad=True)
    policy_chosen = torch.randn(4, generator=gen, requires_grad=True)
    losses = dpo_loss(policy_chosen, torch.zeros(4), torch.zeros(4), torch.zeros(4), beta=0.1)
    w = latent_distance_weights(latents_w, latents_l)
    weighted_mean(losses, w).backward()
    assert latents_w.grad is None and latents_l.grad is None
    assert policy_chosen.grad is not None


def test_all_ones_weights_reproduce_unweighted_dpo() -> None:
    gen = torch.Generator().manual_seed(2)
    batch = [-20 * torch.rand(6, generator=gen, dtype=torch.float64) for _ in range(4)]
    losses = dpo_loss(*batch, beta=0.1)
    ones = WEIGHTINGS.get("uniform")(torch.rand(6, dtype=torch.float64))
    assert weighted_mean(losses, ones).item() == losses.mean().item()
    assert weighted_mean(losses).item() == losses.mean().item()
    # Equal distances: softmax and mean normalisers are all ones as well.
    same = torch.full((6,), 0.3, dtype=torch.float64)
    for name in ("softmax", "mean"):
        w = WEIGHTINGS.get(name)(same)
        assert weighted_mean(losses, w).item() == pytest.approx(losses.mean().item(), abs=1e-12)


def test_weighted_mean_by_hand_and_shape_check() -> None:
    """mean(w·l) = (1·2 + 0·5 + 2·1)/3 = 4/3."""
    assert weighted_mean(t(2.0, 5.0, 1.0), t(1.0, 0.0, 2.0)).item() == pytest.approx(4 / 3)
    with pytest.raises(ValueError):
        weighted_mean(t(1.0, 2.0), t(1.0))


def test_degenerate_batches() -> None:
    assert torch.equal(mean_weights(t(0.0, 0.0)), t(0.0, 0.0))
    assert sigmoid_weights(t(3.0)).item() == 0.5
    with pytest.raises(ValueError):
        softmax_weights(t(1.0), tau=0.0)
