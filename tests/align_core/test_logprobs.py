"""Sequence log-probabilities: shift-by-one, completion masking, sum vs mean, dtypes."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from align_core import IGNORE_INDEX, packed_sequence_logps, per_token_logps, sequence_logps


def test_uniform_logits_hand_value() -> None:
    """V = 3 and all-zero logits: every token has logp = −log 3 = −1.098612.
    Two completion tokens: sum = −2.197225, mean = −1.098612."""
    logits = torch.zeros(1, 4, 3)
    labels = torch.tensor([[0, 1, 2, 1]])
    mask = torch.tensor([[0, 0, 1, 1]])
    assert sequence_logps(logits, labels, mask).item() == pytest.approx(-2 * math.log(3), abs=1e-6)
    mean = sequence_logps(logits, labels, mask, average=True)
    assert mean.item() == pytest.approx(-math.log(3), abs=1e-6)


def test_shift_by_one_convention() -> None:
    """Logits at position t−1 score token t. Position 1 puts logit 2 on token 2 (others 0):
    logp(2) = 2 − log(e² + 2) = 2 − 2.253856 = −0.253856; position 2 is uniform: −log 3."""
    logits = torch.zeros(1, 4, 3)
    logits[0, 1, 2] = 2.0  # predicts labels[0, 2]
    labels = torch.tensor([[0, 1, 2, 0]])
    mask = torch.tensor([[0, 0, 1, 1]])
    expected = (2 - math.log(math.e**2 + 2)) - math.log(3)
    assert sequence_logps(logits, labels, mask).item() == pytest.approx(expected, abs=1e-6)
    # The last position's logits predict nothing and must not matter.
    logits[0, 3] = torch.tensor([9.0, -9.0, 3.0])
    assert sequence_logps(logits, labels, mask).item() == pytest.approx(expected, abs=1e-6)


def test_prompt_and_padding_are_masked() -> None:
    """Changing the logits that score prompt or padding tokens leaves the result unchanged."""
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 6, 11, generator=gen)
    labels = torch.randint(0, 11, (2, 6), generator=gen)
    mask = torch.tensor([[0, 0, 1, 1, 1, 0], [0, 0, 0, 1, 1, 1]])  # row 0 ends with padding
    base = sequence_logps(logits, labels, mask)
    perturbed = logits.clone()
    perturbed[0, [0, 4, 5]] += 5 * torch.randn(3, 11, generator=gen)  # score prompt tok 1 / pad
    perturbed[1, [0, 1]] += 5 * torch.randn(2, 11, generator=gen)
    torch.testing.assert_close(sequence_logps(perturbed, labels, mask), base)


def test_matches_cross_entropy_reference() -> None:
    """Independent reference: −Σ F.cross_entropy(shifted logits, shifted labels, ignore −100)."""
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(3, 7, 13, generator=gen)
    labels = torch.randint(0, 13, (3, 7), generator=gen)
    labels[0, :3] = IGNORE_INDEX
    labels[1, :2] = IGNORE_INDEX
    labels[1, 6] = IGNORE_INDEX
    labels[2, :5] = IGNORE_INDEX
    ce = F.cross_entropy(
        logits[:, :-1].reshape(-1, 13), labels[:, 1:].reshape(-1), reduction="none",
        ignore_index=IGNORE_INDEX,
    ).view(3, 6)
    expected_sum = -ce.sum(-1)
    counts = (labels[:, 1:] != IGNORE_INDEX).sum(-1)
    torch.testing.assert_close(sequence_logps(logits, labels), expected_sum)
    torch.testing.assert_close(sequence_logps(logits, labels, average=True), expected_sum / counts)


def test_per_token_logps_shape_and_values() -> None:
    gen = torch.Generator().manual_seed(2)
    logits = torch.randn(2, 5, 7, generator=gen)
    labels = torch.randint(0, 7, (2, 5), generator=gen)
    out = per_token_logps(logits, labels)
    assert out.shape == (2, 4)
    naive = logits[:, :-1].log_softmax(-1).gather(-1, labels[:, 1:, None]).squeeze(-1)
    torch.testing.assert_close(out, naive)


def test_empty_completion_mean_is_zero() -> None:
    logits = torch.randn(2, 4, 5)
    labels = torch.zeros(2, 4, dtype=torch.long)
    mask = torch.tensor([[0, 0, 0, 0], [0, 0, 1, 1]])
    out = sequence_logps(logits, labels, mask, average=True)
    assert out[0].item() == 0.0 and torch.isfinite(out).all()


def test_half_precision_logits_are_upcast() -> None:
    """bf16 logits give fp32 log-probs equal to the fp32 computation on the same values."""
    gen = torch.Generator().manual_seed(3)
    logits = torch.randn(2, 6, 50, generator=gen).to(torch.bfloat16)
    labels = torch.randint(0, 50, (2, 6), generator=gen)
    mask = torch.ones(2, 6, dtype=torch.long)
    out = sequence_logps(logits, labels, mask)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, sequence_logps(logits.float(), labels, mask))


def test_gradcheck_float64() -> None:
    gen = torch.Generator().manual_seed(4)
    logits = torch.randn(2, 5, 6, generator=gen, dtype=torch.float64, requires_grad=True)
    labels = torch.randint(0, 6, (2, 5), generator=gen)
    mask = torch.tensor([[0, 1, 1, 1, 0], [0, 0, 1, 1, 1]])
    for average in (False, True):
        assert torch.autograd.gradcheck(
            lambda x, a=average: sequence_logps(x, labels, mask, average=a), (logits,)
        )


def test_shape_errors() -> None:
    with pytest.raises(ValueError):
        sequence_logps(torch.zeros(2, 4), torch.zeros(2, 4, dtype=torch.long))
    with pytest.raises(ValueError):
        sequence_logps(torch.zeros(2, 4, 3), torch.zeros(2, 4, dtype=torch.long), torch.ones(2, 3))


@pytest.mark.parametrize("average", [False, True])
def test_packed_equals_full_sequence_logps(average: bool) -> None:
    """Logits at the scoring positions only give the same log-probs, values and gradients."""
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(3, 7, 11, generator=g, dtype=torch.float64, requires_grad=True)
    labels = torch.randint(0, 11, (3, 7), generator=g)
    mask = torch.zeros(3, 7, dtype=torch.bool)
    mask[0, 2:7] = True
    mask[1, 4:6] = True  # row 2: no completion token
    full = sequence_logps(logits, labels, mask, average=average)
    scoring = mask[:, 1:]  # position t-1 scores token t
    rows, cols = scoring.nonzero(as_tuple=True)
    packed = packed_sequence_logps(
        logits[:, :-1][scoring], labels[:, 1:][scoring], rows, 3, average=average
    )
    torch.testing.assert_close(packed, full)
    assert cols.numel() == int(mask.sum())
    (grad_full,) = torch.autograd.grad(full.sum(), logits)
    (grad_packed,) = torch.autograd.grad(packed.sum(), logits)
    torch.testing.assert_close(grad_packed, grad_full)


def test_packed_shape_errors() -> None:
    with pytest.raises(ValueError, match="expected logits"):
        packed_sequence_logps(torch.zeros(4, 5), torch.zeros(3), torch.zeros(4), 2)
