"""Linear Alignment decoding: docs/algorithms.md §1.2 worked example, nucleus rule, properties."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from align_core import (
    combine_logits,
    greedy,
    linear_alignment_logits,
    next_token,
    nucleus_mask,
    sample,
)

Z_P = torch.tensor([[2.0, 1.8, 0.5]])
Z_0 = torch.tensor([[2.2, 1.0, 0.5]])


def test_worked_example() -> None:
    """α = 2: z_LA = 3·z_p − 2·z_0 = (6 − 4.4, 5.4 − 2, 1.5 − 1) = (1.6, 3.4, 0.5).
    T = 0.5: p_p = softmax(4, 3.6, 1) = (1, e^−0.4, e^−3)/1.720107 = (0.581359, 0.389697, 0.028944).
    top_p = 0.8: mass before = (0, 0.581359, 0.971056) -> keep (1, 1, 0).
    LA greedy = argmax(1.6, 3.4, −∞) = 1; principled greedy = argmax z_p = 0."""
    torch.testing.assert_close(combine_logits(Z_P, Z_0, 2.0), torch.tensor([[1.6, 3.4, 0.5]]))
    p_p = torch.softmax(Z_P / 0.5, dim=-1)
    torch.testing.assert_close(p_p, torch.tensor([[0.581359, 0.389697, 0.028944]]), atol=1e-6,
                               rtol=0)
    assert nucleus_mask(p_p, 0.8).tolist() == [[True, True, False]]
    logits = linear_alignment_logits(Z_P, Z_0, 2.0, 0.8, 0.5)
    assert logits.dtype == torch.float32
    torch.testing.assert_close(logits, torch.tensor([[1.6, 3.4, -math.inf]]))
    assert greedy(logits).tolist() == [1]
    assert next_token(Z_P, Z_0, 2.0, top_p=0.8, temperature=0.5).tolist() == [1]
    assert greedy(Z_P).tolist() == [0]
    assert next_token(Z_P, Z_0, 0.0).tolist() == [0]


def test_nucleus_drops_a_token_when_mass_before_reaches_top_p() -> None:
    """p = (0.125, 0.5, 0.125, 0.25) sorted: 0.5, 0.25, 0.125, 0.125; mass before 0, 0.5, 0.75,
    0.875. top_p 0.75 keeps {0.5, 0.25} (0.75 >= 0.75 drops the third); 0.76 keeps three;
    0.4 keeps only the top-1; 1.0 keeps all."""
    probs = torch.tensor([[0.125, 0.5, 0.125, 0.25]], dtype=torch.float64)
    assert nucleus_mask(probs, 0.75).tolist() == [[False, True, False, True]]
    assert nucleus_mask(probs, 0.76).sum().item() == 3
    assert nucleus_mask(probs, 0.4).tolist() == [[False, True, False, False]]
    assert nucleus_mask(probs, 1.0).all()
    assert nucleus_mask(probs, 1e-9).sum().item() == 1
    with pytest.raises(ValueError):
        nucleus_mask(probs, 0.0)


def test_per_row_tensors_equal_row_wise_floats() -> None:
    """The server batches requests with different α, top_p and T."""
    gen = torch.Generator().manual_seed(0)
    z_p, z_0 = torch.randn(4, 50, generator=gen), torch.randn(4, 50, generator=gen)
    alpha, top_p, temp = [0.0, 1.0, 3.0, 5.0], [0.5, 0.8, 0.95, 1.0], [0.3, 0.5, 1.0, 2.0]
    batched = linear_alignment_logits(z_p, z_0, torch.tensor(alpha), torch.tensor(top_p),
                                      torch.tensor(temp))
    for i in range(4):
        row = linear_alignment_logits(z_p[i:i + 1], z_0[i:i + 1], alpha[i], top_p[i], temp[i])
        torch.testing.assert_close(batched[i:i + 1], row)
    with pytest.raises(ValueError):
        combine_logits(z_p, z_0, torch.ones(3))


@settings(max_examples=100, deadline=None, database=None)
@given(seed=st.integers(0, 10_000), top_p=st.floats(0.05, 1.0), temp=st.floats(0.05, 3.0))
def test_alpha_zero_is_principled_decoding(seed: int, top_p: float, temp: float) -> None:
    """α = 0: z_LA = z_p, and argmax z_p is always inside its own nucleus."""
    gen = torch.Generator().manual_seed(seed)
    z_p, z_0 = 3 * torch.randn(3, 40, generator=gen), 3 * torch.randn(3, 40, generator=gen)
    logits = linear_alignment_logits(z_p, z_0, 0.0, top_p, temp)
    assert torch.equal(greedy(logits), greedy(z_p))
    kept = torch.isfinite(logits)
    torch.testing.assert_close(logits[kept], z_p[kept])


@settings(max_examples=100, deadline=None, database=None)
@given(seed=st.integers(0, 10_000), alpha=st.floats(0.0, 50.0), top_p=st.floats(0.05, 1.0))
def test_equal_contexts_give_plain_decoding(seed: int, alpha: float, top_p: float) -> None:
    """An empty principle gives z_p = z_0, so z_LA = z_p for every α (test plan §6.3 (iv))."""
    z = 3 * torch.randn(2, 30, generator=torch.Generator().manual_seed(seed))
    logits = linear_alignment_logits(z, z.clone(), alpha, top_p, 0.7)
    assert torch.equal(greedy(logits), greedy(z))
    keep = nucleus_mask(torch.softmax(z / 0.7, dim=-1), top_p)
    torch.testing.assert_close(logits, z.masked_fill(~keep, -math.inf))


def test_large_alpha_does_not_fall_back_to_token_zero() -> None:
    """α = 1000: the nucleus tokens {1, 2} get z_LA ≈ −198 while token 3 gets 0.5, so
    softmax(z_LA/T) underflows to exactly 0 on the whole nucleus. The original probability
    product then argmaxes an all-zero row and emits token 0, which is outside the nucleus.
    Masking in logit space picks token 1."""
    z_p = torch.tensor([[-5.0, 2.0, 1.8, 0.5]])
    z_0 = torch.tensor([[-5.0, 2.2, 2.0, 0.5]])
    alpha, temp, top_p = 1000.0, 0.5, 0.8
    keep = nucleus_mask(torch.softmax(z_p / temp, dim=-1), top_p)
    original_q = torch.softmax(combine_logits(z_p, z_0, alpha) / temp, dim=-1) * keep
    assert original_q.sum().item() == 0.0 and original_q.argmax().item() == 0  # the bug
    logits = linear_alignment_logits(z_p, z_0, alpha, top_p, temp)
    assert greedy(logits).tolist() == [1]
    assert sample(logits, temp, torch.Generator().manual_seed(0)).item() in (1, 2)


@settings(max_examples=100, deadline=None, database=None)
@given(seed=st.integers(0, 10_000), alpha=st.floats(0.0, 3e38), top_p=st.floats(0.01, 1.0),
       temp=st.floats(0.01, 5.0))
def test_never_an_all_masked_row(seed: int, alpha: float, top_p: float, temp: float) -> None:
    """Up to α ≈ float32 max (z_LA overflows to ±inf before clamping) every row keeps a finite
    nucleus entry, the greedy choice is plausible and softmax(logits / T) has no NaN."""
    gen = torch.Generator().manual_seed(seed)
    z_p, z_0 = 10 * torch.randn(4, 64, generator=gen), 10 * torch.randn(4, 64, generator=gen)
    logits = linear_alignment_logits(z_p, z_0, alpha, top_p, temp)
    assert not torch.isnan(logits).any()
    assert torch.isfinite(logits).any(dim=-1).all()
    keep = nucleus_mask(torch.softmax(z_p / temp, dim=-1), top_p)
    choice = greedy(logits)
    assert keep.gather(1, choice[:, None]).all()  # the choice is always a plausible token
    assert torch.isfinite(torch.softmax(logits / temp, dim=-1)).all()


def test_shared_minus_inf_entries_stay_masked() -> None:
    """Tokens banned in both branches (−∞ − (−∞) = NaN inside z_LA) stay −∞, never NaN."""
    z_p = torch.tensor([[1.0, -math.inf, 0.5, 0.2]])
    z_0 = torch.tensor([[0.5, -math.inf, 0.7, 0.1]])
    logits = linear_alignment_logits(z_p, z_0, 2.0, 1.0, 1.0)
    assert not torch.isnan(logits).any() and logits[0, 1].item() == -math.inf


def test_token_banned_only_without_the_principle_stays_finite() -> None:
    """z_0 = −∞ but z_p finite gives z_LA = +∞; it is clamped, so sampling has no NaN."""
    z_p = torch.tensor([[1.0, 0.9, -2.0]])
    z_0 = torch.tensor([[-math.inf, 0.5, -2.0]])
    logits = linear_alignment_logits(z_p, z_0, 2.0, 0.9, 0.5)
    assert torch.isfinite(logits[0, :2]).all() and greedy(logits).tolist() == [0]
    assert torch.isfinite(torch.softmax(logits / 1e-5, dim=-1)).all()


def test_sampling_stays_in_the_nucleus_and_follows_the_distribution() -> None:
    """Masked logits (0, log 3, −∞): draws at T = 1 are 25 % / 75 % and never token 2."""
    logits = torch.tensor([[0.0, math.log(3.0), -math.inf]]).expand(4000, 3)
    draws = sample(logits, 1.0, torch.Generator().manual_seed(0))
    counts = torch.bincount(draws, minlength=3)
    assert counts[2].item() == 0
    assert counts[1].item() / 4000 == pytest.approx(0.75, abs=0.03)


def test_sampling_is_reproducible_and_per_row_temperature() -> None:
    gen_logits = torch.Generator().manual_seed(1)
    logits = torch.randn(6, 20, generator=gen_logits)
    a = sample(logits, 0.8, torch.Generator().manual_seed(5))
    b = sample(logits, 0.8, torch.Generator().manual_seed(5))
    assert torch.equal(a, b)
    temps = torch.tensor([0.0, 1.0, 0.0, 1.0, 0.0, 1.0])
    drawn = sample(logits, temps, torch.Generator().manual_seed(5))
    assert torch.equal(drawn[temps == 0], greedy(logits)[temps == 0])
    assert torch.equal(sample(logits, 0.0), greedy(logits))


def test_next_token_sampling_path() -> None:
    gen = torch.Generator().manual_seed(2)
    z_p, z_0 = torch.randn(3, 30, generator=gen), torch.randn(3, 30, generator=gen)
    keep = nucleus_mask(torch.softmax(z_p / 0.5, dim=-1), 0.8)
    for seed in range(20):
        y = next_token(z_p, z_0, 3.0, do_sample=True, generator=torch.Generator().manual_seed(seed))
        assert keep.gather(1, y[:, None]).all()


def test_half_precision_inputs_and_validation() -> None:
    logits = linear_alignment_logits(Z_P.half(), Z_0.half(), 2.0, 0.8, 0.5)
    assert logits.dtype == torch.float32 and greedy(logits).tolist() == [1]
    with pytest.raises(ValueError):
        linear_alignment_logits(Z_P, Z_0, 2.0, 0.8, 0.0)
    with pytest.raises(ValueError):
        linear_alignment_logits(Z_P, Z_0[:, :2], 2.0)


def _nucleus_by_full_sort(probs: torch.Tensor, top_p: torch.Tensor) -> torch.Tensor:
    """The authors' rule with a full sort, as the reference for the top-k fast path."""
    sorted_probs, order = probs.sort(dim=-1, descending=True)
    cumulative = sorted_probs.cumsum(dim=-1)
    before = torch.cat([torch.zeros_like(cumulative[:, :1]), cumulative[:, :-1]], dim=-1)
    keep = (before < top_p[:, None]) | (top_p[:, None] >= 1.0)
    keep[:, 0] = True
    return torch.zeros_like(keep).scatter(-1, order, keep)


def test_topk_fast_path_equals_full_sort_on_large_vocabularies() -> None:
    """Peaked rows (nucleus inside the top 256), flat rows (nucleus beyond it) and top_p = 1."""
    gen = torch.Generator().manual_seed(0)
    peaked = torch.randn(6, 5000, generator=gen) * 6.0
    flat = torch.randn(4, 5000, generator=gen) * 0.1
    probs = torch.softmax(torch.cat([peaked, flat]), dim=-1)
    top_p = torch.tensor([0.8, 0.5, 0.95, 1.0, 0.01, 0.99, 0.8, 0.9, 1.0, 0.3])
    assert torch.equal(nucleus_mask(probs, top_p), _nucleus_by_full_sort(probs, top_p))
    for p in (0.8, 1.0):
        full = _nucleus_by_full_sort(probs, torch.full((10,), p))
        assert torch.equal(nucleus_mask(probs, p), full)
