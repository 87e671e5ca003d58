"""Pair losses: docs/algorithms.md §0 and §5.3 test vectors, properties and gradients."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from align_core import (
    PAIR_LOSSES,
    chosen_nll_loss,
    dpo_loss,
    implicit_rewards,
    ipo_loss,
    preference_margin,
    rdpo_acceptance_mask,
    rdpo_filter_loss,
    rdpo_loss,
    rdpo_margin_loss,
    rdpo_target_prob,
    rdpo_weighted_loss,
    robust_dpo_loss,
    soft_label_dpo_loss,
)

BETA = 0.1


def t(*values: float) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64)


# §0 vector: logπ_θ(y_w) = −10, logπ_θ(y_l) = −12, logπ_ref(y_w) = logπ_ref(y_l) = −11.
VECTOR = (t(-10.0), t(-12.0), t(-11.0), t(-11.0))


def test_margin_of_the_vector() -> None:
    """h = (−10 − (−12)) − (−11 − (−11)) = 2."""
    assert preference_margin(*VECTOR).item() == 2.0


def test_dpo_sigmoid_vector() -> None:
    """βh = 0.2; −logσ(0.2) = log(1 + e^−0.2) = log(1.818731) = 0.598139."""
    assert dpo_loss(*VECTOR, beta=BETA).item() == pytest.approx(0.598139, abs=1e-6)


def test_cdpo_vector() -> None:
    """ε = 0.1: 0.9·0.598139 + 0.1·log(1 + e^0.2) = 0.538325 + 0.1·0.798139 = 0.618139."""
    loss = dpo_loss(*VECTOR, beta=BETA, label_smoothing=0.1)
    assert loss.item() == pytest.approx(0.618139, abs=1e-6)


def test_robust_dpo_vector() -> None:
    """ε = 0.1: (0.9·0.598139 − 0.1·0.798139) / (1 − 0.2) = 0.458511 / 0.8 = 0.573139."""
    loss = robust_dpo_loss(*VECTOR, beta=BETA, label_smoothing=0.1)
    assert loss.item() == pytest.approx(0.573139, abs=1e-6)


def test_ipo_vector() -> None:
    """(h − 1/(2β))² = (2 − 5)² = 9."""
    assert ipo_loss(*VECTOR, beta=BETA).item() == pytest.approx(9.0, abs=1e-6)


def test_rdpo_vector() -> None:
    """s_r = 4, s_o = 1: p = σ(3) = 0.952574;
    L = p·0.598139 + (1 − p)·0.798139 = 0.598139 + 0.047426·0.2 = 0.607624."""
    p = rdpo_target_prob(t(4.0), t(1.0))
    assert p.item() == pytest.approx(0.952574, abs=1e-6)
    loss = rdpo_loss(*VECTOR, beta=BETA, chosen_scores=t(4.0), rejected_scores=t(1.0))
    assert loss.item() == pytest.approx(0.607624, abs=1e-6)


def test_dpo_gradient_formula() -> None:
    """∂L/∂logπ_θ(y_w) = −β·σ(−βh) = −0.1·σ(−0.2) = −0.1·0.450166 = −0.0450166, and the
    rejected gradient is its negative (docs/algorithms.md §0.1 ∇L)."""
    pc, pr, rc, rr = (x.clone().requires_grad_(True) for x in VECTOR)
    dpo_loss(pc, pr, rc, rr, beta=BETA).sum().backward()
    assert pc.grad is not None and pr.grad is not None
    assert pc.grad.item() == pytest.approx(-0.0450166, abs=1e-7)
    assert pr.grad.item() == pytest.approx(0.0450166, abs=1e-7)


def test_rdpo_with_p_one_is_dpo() -> None:
    """p = σ(∞) = 1 exactly, so the soft-label loss is −logσ(βh)."""
    batch = random_pair_batch(6)
    expected = dpo_loss(*batch, beta=BETA)
    inf, zero = torch.full((6,), math.inf, dtype=torch.float64), torch.zeros(6, dtype=torch.float64)
    got = rdpo_loss(*batch, beta=BETA, chosen_scores=inf, rejected_scores=zero)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-12)
    torch.testing.assert_close(
        soft_label_dpo_loss(*batch, beta=BETA, target_prob=1.0), expected, rtol=0, atol=1e-12
    )


@pytest.mark.parametrize("eps", [0.0, 0.05, 0.1, 0.3])
def test_rdpo_with_constant_p_is_cdpo(eps: float) -> None:
    """Scores with s_w − s_l = log((1−ε)/ε) give p = 1 − ε, i.e. cDPO with label_smoothing ε."""
    batch = random_pair_batch(6)
    expected = dpo_loss(*batch, beta=BETA, label_smoothing=eps)
    gap = math.inf if eps == 0 else math.log((1 - eps) / eps)
    s_w = torch.full((6,), gap, dtype=torch.float64)
    got = rdpo_loss(*batch, beta=BETA, chosen_scores=s_w, rejected_scores=torch.zeros(6))
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-9)


def test_cdpo_vector_through_rdpo() -> None:
    """p = 0.9 (s_w − s_l = log 9) reproduces the cDPO vector 0.618139."""
    loss = rdpo_loss(*VECTOR, beta=BETA, chosen_scores=t(math.log(9.0)), rejected_scores=t(0.0))
    assert loss.item() == pytest.approx(0.618139, abs=1e-6)


finite = st.floats(min_value=-60.0, max_value=0.0, allow_nan=False)
scores = st.floats(min_value=-5.0, max_value=5.0, allow_nan=False)


@settings(max_examples=200, deadline=None, database=None)
@given(
    pc=finite, pr=finite, rc=finite, rr=finite, s_w=scores, s_l=scores,
    beta=st.floats(min_value=0.01, max_value=2.0), tau=st.floats(min_value=0.1, max_value=5.0),
)
def test_rdpo_swap_symmetry(
    pc: float, pr: float, rc: float, rr: float, s_w: float, s_l: float, beta: float, tau: float
) -> None:
    """Swapping y_w <-> y_l flips h -> −h and p -> 1 − p, so
    −[p·logσ(βh) + (1−p)·logσ(−βh)] is unchanged."""
    forward = rdpo_loss(t(pc), t(pr), t(rc), t(rr), beta=beta,
                        chosen_scores=t(s_w), rejected_scores=t(s_l), tau=tau)
    swapped = rdpo_loss(t(pr), t(pc), t(rr), t(rc), beta=beta,
                        chosen_scores=t(s_l), rejected_scores=t(s_w), tau=tau)
    torch.testing.assert_close(forward, swapped, rtol=1e-12, atol=1e-12)


@settings(max_examples=200, deadline=None, database=None)
@given(pc=finite, pr=finite, rc=finite, rr=finite, p=st.floats(min_value=0.0, max_value=1.0))
def test_soft_label_swap_symmetry(pc: float, pr: float, rc: float, rr: float, p: float) -> None:
    """L(pair, p) == L(swapped pair, 1 − p) for any explicit soft label."""
    a = soft_label_dpo_loss(t(pc), t(pr), t(rc), t(rr), beta=BETA, target_prob=p)
    b = soft_label_dpo_loss(t(pr), t(pc), t(rr), t(rc), beta=BETA, target_prob=1 - p)
    torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_p_below_half_reverses_the_pair() -> None:
    """With p < ½ the loss decreases when the policy moves toward y_l (h < 0)."""
    s_w, s_l = t(0.0), t(3.0)  # p = σ(−3) ≈ 0.047
    good = rdpo_loss(t(-10.0), t(-12.0), t(-11.0), t(-11.0), beta=1.0,
                     chosen_scores=s_w, rejected_scores=s_l)  # h = +2
    bad = rdpo_loss(t(-12.0), t(-10.0), t(-11.0), t(-11.0), beta=1.0,
                    chosen_scores=s_w, rejected_scores=s_l)  # h = −2
    assert bad.item() < good.item()


def test_robust_with_zero_eps_is_dpo() -> None:
    batch = random_pair_batch(5)
    torch.testing.assert_close(
        robust_dpo_loss(*batch, beta=BETA), dpo_loss(*batch, beta=BETA), rtol=0, atol=1e-12
    )


def test_rdpo_filter_is_dpo_mean_over_accepted() -> None:
    """Pairs 0 and 2 pass s_w > s_l; mean of the returned losses = mean DPO loss of those two."""
    batch = random_pair_batch(4)
    s_w, s_l = t(3.0, 1.0, 5.0, 2.0), t(1.0, 1.0, 0.0, 4.0)
    assert rdpo_acceptance_mask(s_w, s_l).tolist() == [True, False, True, False]
    losses = rdpo_filter_loss(*batch, beta=BETA, chosen_scores=s_w, rejected_scores=s_l)
    dpo = dpo_loss(*batch, beta=BETA)
    assert losses[1].item() == 0.0 and losses[3].item() == 0.0
    assert losses.mean().item() == pytest.approx(dpo[[0, 2]].mean().item(), abs=1e-12)


def test_rdpo_filter_nothing_accepted_gives_zero() -> None:
    batch = random_pair_batch(3)
    s_w, s_l = t(0, 0, 0), t(1, 1, 1)
    losses = rdpo_filter_loss(*batch, beta=BETA, chosen_scores=s_w, rejected_scores=s_l)
    assert torch.equal(losses, torch.zeros(3, dtype=torch.float64))


def test_rdpo_weighted_and_margin() -> None:
    """(b) w = σ(s_w − s_l) times DPO; (c) with γ = 0 is DPO, with γ = 1 at the vector:
    −logσ(0.2 − 3) = log(1 + 16.444647) = 2.859033."""
    batch = random_pair_batch(3)
    s_w, s_l = t(2.0, 0.0, 1.0), t(0.0, 0.0, 4.0)
    weighted = rdpo_weighted_loss(*batch, beta=BETA, chosen_scores=s_w, rejected_scores=s_l)
    torch.testing.assert_close(weighted, torch.sigmoid(s_w - s_l) * dpo_loss(*batch, beta=BETA))
    margin0 = rdpo_margin_loss(*batch, beta=BETA, chosen_scores=s_w, rejected_scores=s_l, gamma=0.0)
    torch.testing.assert_close(margin0, dpo_loss(*batch, beta=BETA))
    margin = rdpo_margin_loss(*VECTOR, beta=BETA, chosen_scores=t(4.0), rejected_scores=t(1.0))
    assert margin.item() == pytest.approx(2.859033, abs=1e-6)


def test_implicit_rewards_are_detached() -> None:
    """r = β(logπ_θ − logπ_ref) = 0.1·(−10 + 11) = 0.1."""
    policy = t(-10.0).requires_grad_(True)
    reward = implicit_rewards(policy, t(-11.0), BETA)
    assert not reward.requires_grad
    assert reward.item() == pytest.approx(0.1, abs=1e-12)


def test_invalid_hyperparameters_fail_loudly() -> None:
    with pytest.raises(ValueError):
        dpo_loss(*VECTOR, beta=0.0)
    with pytest.raises(ValueError):
        dpo_loss(*VECTOR, beta=BETA, label_smoothing=1.5)
    with pytest.raises(ValueError):
        robust_dpo_loss(*VECTOR, beta=BETA, label_smoothing=0.5)
    with pytest.raises(ValueError):
        rdpo_target_prob(t(1.0), t(0.0), tau=0.0)


def random_pair_batch(batch: int, seed: int = 0) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(seed)
    return tuple(-20 * torch.rand(batch, generator=gen, dtype=torch.float64) for _ in range(4))


def random_scores(batch: int, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return tuple(5 * torch.rand(batch, generator=gen, dtype=torch.float64) for _ in range(2))  # type: ignore[return-value]


@pytest.mark.parametrize("name", PAIR_LOSSES.names())
def test_every_registered_pair_loss_is_per_example_and_finite(name: str) -> None:
    entry = PAIR_LOSSES.get(name)
    s_w, s_l = random_scores(5)
    losses = entry(*random_pair_batch(5), beta=BETA, chosen_scores=s_w, rejected_scores=s_l)
    assert losses.shape == (5,)
    assert torch.isfinite(losses).all()


@pytest.mark.parametrize("name", PAIR_LOSSES.names())
def test_every_registered_pair_loss_matches_finite_differences(name: str) -> None:
    """torch.autograd.gradcheck in float64 against the policy log-probs."""
    entry = PAIR_LOSSES.get(name)
    s_w, s_l = t(3.0, 1.0, 0.0, 2.0), t(1.0, 2.0, 0.0, 0.5)
    pc, pr, rc, rr = random_pair_batch(4, seed=3)

    def fn(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor) -> torch.Tensor:
        return entry(policy_chosen, policy_rejected, rc, rr, beta=0.5,
                     chosen_scores=s_w, rejected_scores=s_l)

    assert torch.autograd.gradcheck(
        fn, (pc.requires_grad_(True), pr.requires_grad_(True)), eps=1e-6, atol=1e-6
    )


def test_entry_checks_options_and_scores() -> None:
    with pytest.raises(ValueError, match="unknown options"):
        PAIR_LOSSES.get("ipo")(*VECTOR, beta=BETA, options={"label_smoothing": 0.1})
    with pytest.raises(ValueError, match="chosen_scores"):
        PAIR_LOSSES.get("rdpo")(*VECTOR, beta=BETA)
    assert PAIR_LOSSES.get("robust_dpo").options == ("label_smoothing",)
    loss = PAIR_LOSSES.get("dpo")(*VECTOR, beta=BETA, options={"label_smoothing": 0.1})
    assert loss.item() == pytest.approx(0.618139, abs=1e-6)


def test_chosen_nll_vector() -> None:
    """docs/algorithms.md §0.2: sums -10 (5 tokens) and -20 (15 tokens), mean length 10."""
    logps, lengths = torch.tensor([-10.0, -20.0]), torch.tensor([5, 15])
    per_example = chosen_nll_loss(logps, lengths)
    assert per_example.tolist() == pytest.approx([1.0, 2.0])
    # the batch mean is TRL's token mean over the batch: 30 nats over 20 tokens
    assert float(per_example.mean()) == pytest.approx(30 / 20)


def test_chosen_nll_micro_batches_sum_to_the_batch_term() -> None:
    logps, lengths = torch.tensor([-3.0, -8.0, -1.5, -12.0]), torch.tensor([2, 6, 1, 7])
    whole = float(chosen_nll_loss(logps, lengths).mean())
    mean_length = float(lengths.float().mean())
    parts = sum(float(chosen_nll_loss(logps[i : i + 2], lengths[i : i + 2],
                                      mean_length=mean_length).sum()) for i in (0, 2)) / 4
    assert parts == pytest.approx(whole) == pytest.approx(24.5 / 16)


def test_chosen_nll_gradient_is_minus_one_over_mean_length() -> None:
    logps = torch.tensor([-4.0, -6.0], requires_grad=True)
    chosen_nll_loss(logps, torch.tensor([3, 5])).sum().backward()
    assert logps.grad is not None and logps.grad.tolist() == pytest.approx([-0.25, -0.25])


def test_chosen_nll_refuses_empty_answers() -> None:
    with pytest.raises(ValueError, match="mean chosen length"):
        chosen_nll_loss(torch.tensor([0.0]), torch.tensor([0]))
