"""Point-wise DPO and ULMA: docs/algorithms.md §2.6 vectors, test plan §6.2, its reduction."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from align_core import (
    POINTWISE_LOSSES,
    group_mean,
    group_weights,
    pointwise_dpo_continuous_losses,
    pointwise_dpo_losses,
    sequence_logps,
    ulma_loss,
    ulma_losses,
    unlikelihood_losses,
)

BETA = 0.1


def t(*values: float) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64)


def reference_ulma_loss(
    pol: torch.Tensor, ref: torch.Tensor, score: torch.Tensor, beta: float, c: float, mode: str,
    pref: str,
) -> torch.Tensor:
    """docs/algorithms.md §2.6 pseudo-code, verbatim (``ULMATrainer.ulma_loss``)."""
    h = pol - ref
    pos, neg = score == 1, score != 1
    if pref == "binary":
        l_neg = -F.logsigmoid(-(beta * h[neg] + c)).mean()
    else:
        l_neg = (score[neg] - beta * h[neg] - c).pow(2).mean()
    l_pos = -pol[pos].mean() if mode == "ulma" else -F.logsigmoid(beta * h[pos] + c).mean()
    return torch.nan_to_num(l_pos) + torch.nan_to_num(l_neg)


def test_negative_term_vector() -> None:
    """β = 0.1, h = −0.3: −logσ(−βh) = −logσ(0.03) = log(1 + e^−0.03) = log(1.970446) = 0.678260."""
    loss = ulma_losses(t(-1.3), t(-1.0), t(0.0), beta=BETA)
    assert loss.item() == pytest.approx(0.678260, abs=1e-6)
    assert pointwise_dpo_losses(t(-1.3), t(-1.0), t(0.0), beta=BETA).item() == pytest.approx(
        0.678260, abs=1e-6
    )


def test_positive_pointwise_dpo_vector() -> None:
    """β = 0.1, h = 0.5: −logσ(0.05) = log(1 + e^−0.05) = log(1.951229) = 0.668460."""
    loss = pointwise_dpo_losses(t(-0.5), t(-1.0), t(1.0), beta=BETA)
    assert loss.item() == pytest.approx(0.668460, abs=1e-6)


def test_pointwise_dpo_is_twice_bce_with_equal_groups() -> None:
    """Test plan §6.2 (i): n_pos = n_neg = B/2, so
    mean_pos + mean_neg = (2/B)·Σ BCE = 2·mean BCE."""
    gen = torch.Generator().manual_seed(0)
    pol = -5 * torch.rand(8, generator=gen, dtype=torch.float64)
    ref = -5 * torch.rand(8, generator=gen, dtype=torch.float64)
    z = t(1, 0, 1, 0, 0, 1, 1, 0)
    c = 0.2
    loss = ulma_loss(pol, ref, z, beta=BETA, log_z=c, name="pointwise_dpo")
    bce = F.binary_cross_entropy_with_logits(BETA * (pol - ref) + c, z)
    assert loss.item() == pytest.approx(2 * bce.item(), abs=1e-12)


def test_negative_term_at_reference_is_log2() -> None:
    """Test plan §6.2 (ii): policy = reference gives h = 0, −logσ(0) = log 2 = 0.693147."""
    logps = t(-3.0, -7.0)
    loss = ulma_loss(logps, logps.clone(), t(0, 0), beta=BETA, name="ulma")
    assert loss.item() == pytest.approx(math.log(2), abs=1e-6)
    assert loss.item() == pytest.approx(0.693147, abs=1e-6)


def test_ulma_uses_mean_token_logps() -> None:
    """Test plan §6.2 (iii): the positive (SFT) term is −(per-token mean log-prob).
    Uniform logits over V = 4 give ℓ = −log 4 = −1.386294 whatever the length."""
    logits = torch.zeros(2, 6, 4, dtype=torch.float64)
    labels = torch.zeros(2, 6, dtype=torch.long)
    mask = torch.tensor([[0, 0, 1, 1, 1, 1], [0, 0, 0, 0, 1, 1]])
    pol = sequence_logps(logits, labels, mask, average=True)
    torch.testing.assert_close(pol, t(-math.log(4), -math.log(4)))
    loss = ulma_loss(pol, pol.clone(), t(1, 1), name="ulma")
    assert loss.item() == pytest.approx(math.log(4), abs=1e-6)


def test_group_wise_average_with_unequal_groups() -> None:
    """One positive (−ℓ = 2) and two negatives at h = 0 (log 2 each):
    L = 2 + (log 2 + log 2)/2 = 2.693147 (not the per-sample mean (2 + 2·log 2)/3)."""
    pol = t(-2.0, -1.0, -4.0)
    loss = ulma_loss(pol, pol.clone(), t(1, 0, 0), beta=BETA, name="ulma")
    assert loss.item() == pytest.approx(2 + math.log(2), abs=1e-9)


def test_empty_group_contributes_zero() -> None:
    pol = t(-2.0, -3.0)
    only_pos = ulma_loss(pol, pol.clone(), t(1, 1), name="ulma")
    assert only_pos.item() == pytest.approx(2.5, abs=1e-12)
    only_neg = ulma_loss(pol, pol.clone(), t(0, 0), name="ulma")
    assert only_neg.item() == pytest.approx(math.log(2), abs=1e-12)


def test_group_mean_does_not_hide_nan() -> None:
    out = group_mean(t(1.0, math.nan), torch.tensor([True, False]))
    assert math.isnan(out.item())


@pytest.mark.parametrize(
    ("name", "mode", "pref"),
    [("ulma", "ulma", "binary"), ("pointwise_dpo", "pointwise_dpo", "binary"),
     ("ulma_continuous", "ulma", "continuous")],
)
@pytest.mark.parametrize("seed", range(5))
def test_matches_reference_pseudocode(name: str, mode: str, pref: str, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    n = 7
    pol = -5 * torch.rand(n, generator=gen, dtype=torch.float64)
    ref = -5 * torch.rand(n, generator=gen, dtype=torch.float64)
    if pref == "binary":
        score = (torch.rand(n, generator=gen) < 0.5).double()
    else:
        score = torch.where(torch.rand(n, generator=gen) < 0.3, 1.0, torch.rand(n, generator=gen))
        score = score.double()
    c = 0.1 * seed
    expected = reference_ulma_loss(pol, ref, score, BETA, c, mode, pref)
    got = ulma_loss(pol, ref, score, beta=BETA, log_z=c, name=name)
    assert got.item() == pytest.approx(expected.item(), abs=1e-12)


def test_log_z_constant_shifts_the_reward() -> None:
    """r = βh + c: a constant c is the same as shifting h by c/β."""
    pol, ref, z = t(-1.0, -2.0), t(-1.5, -1.0), t(1, 0)
    with_c = pointwise_dpo_losses(pol, ref, z, beta=BETA, log_z=0.3)
    shifted = pointwise_dpo_losses(pol + 0.3 / BETA, ref, z, beta=BETA)
    torch.testing.assert_close(with_c, shifted)


def test_continuous_is_mse_on_every_row() -> None:
    """(z − βh − c)²: z = 1, h = 2 -> (1 − 0.2)² = 0.64; z = 0.5, h = −1 -> (0.5 + 0.1)² = 0.36."""
    losses = pointwise_dpo_continuous_losses(t(-1.0, -3.0), t(-3.0, -2.0), t(1.0, 0.5), beta=BETA)
    torch.testing.assert_close(losses, t(0.64, 0.36))
    entry = POINTWISE_LOSSES.get("pointwise_dpo_continuous")
    assert entry.reduce(losses, t(1.0, 0.5)).item() == pytest.approx(0.5, abs=1e-12)


def test_unlikelihood_needs_no_reference() -> None:
    """−ℓ on positives, +ℓ on negatives: per example (2, −3); group-wise 2 + (−3) = −1."""
    pol, z = t(-2.0, -3.0), t(1, 0)
    losses = unlikelihood_losses(pol, None, z)
    torch.testing.assert_close(losses, t(2.0, -3.0))
    assert ulma_loss(pol, None, z, name="unlikelihood").item() == pytest.approx(-1.0)
    with pytest.raises(ValueError):
        POINTWISE_LOSSES.get("ulma")(pol, None, z, beta=BETA)


def test_group_weights_reproduce_group_mean() -> None:
    gen = torch.Generator().manual_seed(3)
    losses = torch.rand(9, generator=gen, dtype=torch.float64)
    positive = torch.rand(9, generator=gen) < 0.3
    weights = group_weights(positive)  # fp32: B / n_group
    assert (weights * losses).mean().item() == pytest.approx(
        group_mean(losses, positive).item(), abs=1e-6
    )


@pytest.mark.parametrize("name", POINTWISE_LOSSES.names())
def test_every_registered_pointwise_loss(name: str) -> None:
    entry = POINTWISE_LOSSES.get(name)
    gen = torch.Generator().manual_seed(5)
    pol = -3 * torch.rand(6, generator=gen, dtype=torch.float64)
    ref = -3 * torch.rand(6, generator=gen, dtype=torch.float64)
    labels = t(1, 0, 1, 0, 0.5, 1) if entry.continuous_labels else t(1, 0, 1, 0, 0, 1)
    losses = entry(pol, ref if entry.needs_reference else None, labels, beta=BETA)
    assert losses.shape == (6,)
    assert torch.isfinite(losses).all()
    assert torch.isfinite(entry.reduce(losses, labels))

    def fn(policy: torch.Tensor) -> torch.Tensor:
        return entry.reduce(entry(policy, ref, labels, beta=0.5, log_z=0.1), labels)

    assert torch.autograd.gradcheck(fn, (pol.clone().requires_grad_(True),))
