"""Linear Alignment decoding (Gao et al., ICML 2024, arXiv 2401.11458; docs/algorithms.md §1.2).

At every step the same model scores the next token in two contexts that differ only in the
principle text: ``z_p`` (with the principle) and ``z_0`` (without). Self-contrastive decoding
extrapolates along their difference and restricts the choice to the nucleus of the principled
distribution:

    z_LA = z_p + α (z_p − z_0)
    keep = nucleus(softmax(z_p / T), top_p)
    y_t  = argmax z_LA[keep]            (or sample from softmax(z_LA / T) over keep)

The mask is applied in logit space (``-inf`` outside ``keep``), so a large α can never
underflow a whole row to zero probability as the original probability product can.

Every decoding path (engine logits processors, trainers, tests) must call
``linear_alignment_logits`` so the rule exists once. ``alpha``, ``top_p`` and ``temperature``
may be a float for the batch or a ``(B,)`` tensor (one value per request). Shapes: ``B`` rows,
``V`` vocabulary.
"""

from __future__ import annotations

import torch
from torch import Tensor

PerRow = float | Tensor
"""A hyper-parameter given once (float) or per row (``(B,)`` tensor)."""

_MIN_TEMPERATURE = 1e-5
_NUCLEUS_TOPK = 256


def _per_row(value: PerRow, like: Tensor, name: str) -> PerRow:
    """A float as is; a ``(B,)`` / scalar tensor as ``(B, 1)`` / ``()`` on ``like``'s device."""
    if not isinstance(value, Tensor):
        return float(value)
    value = value.to(device=like.device, dtype=like.dtype)
    if value.dim() == 0:
        return value
    if value.shape != like.shape[:1]:
        raise ValueError(f"{name} must be a float or a ({like.shape[0]},) tensor, "
                         f"got shape {tuple(value.shape)}")
    return value.unsqueeze(-1)  # (B, 1) broadcasts over V


def _check_2d(logits: Tensor, name: str) -> None:
    if logits.dim() != 2:
        raise ValueError(f"{name} must be (B, V), got {tuple(logits.shape)}")


def nucleus_mask(probs: Tensor, top_p: PerRow) -> Tensor:
    """Top-p (nucleus) set of each row, as in the authors' ``utils.top_p_logits``.

    Sort descending; drop a token if the probability mass **before** it is ``>= top_p``; always
    keep the top-1 token. The kept set is the smallest prefix whose mass reaches ``top_p``;
    ``top_p >= 1`` keeps every token.

    Args:
        probs: ``(B, V)`` probabilities (rows sum to 1).
        top_p: float or ``(B,)`` tensor in ``(0, 1]``.

    Returns:
        ``(B, V)`` bool, true for kept tokens; at least one per row.
    """
    _check_2d(probs, "probs")
    if not isinstance(top_p, Tensor) and not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    p = _per_row(top_p, probs, "top_p")
    # Fast path: the nucleus almost always lies within the few most likely tokens, so a top-k
    # pass replaces the full sort of the vocabulary (the serving hot path: once per engine step).
    # The partial sums are the same as the full sort's; rows whose top-k mass stays below top_p
    # (or top_p >= 1) take the full sort.
    k = min(probs.shape[-1], _NUCLEUS_TOPK)
    top_probs, top_order = probs.topk(k, dim=-1)  # (B, k), descending
    keep_top = _keep_prefix(top_probs, p)
    covered = (top_probs.sum(dim=-1, keepdim=True) >= p) & (p < 1.0)  # (B, 1)
    mask = torch.zeros_like(probs, dtype=torch.bool).scatter(-1, top_order, keep_top & covered)
    rest = ~covered.squeeze(-1)
    if bool(rest.any()):
        rows_p = p[rest] if isinstance(p, Tensor) and p.dim() == 2 else p
        sorted_probs, order = probs[rest].sort(dim=-1, descending=True)  # (R, V)
        keep_sorted = _keep_prefix(sorted_probs, rows_p)
        mask[rest] = torch.zeros_like(keep_sorted).scatter(-1, order, keep_sorted)
    return mask


def _keep_prefix(sorted_probs: Tensor, p: PerRow) -> Tensor:
    """Kept positions of descending ``(B, n)`` probabilities: mass before ``< p``; top-1 always."""
    cumulative = sorted_probs.cumsum(dim=-1)
    mass_before = torch.cat([torch.zeros_like(cumulative[:, :1]), cumulative[:, :-1]], dim=-1)
    keep = (mass_before < p) | (p >= 1.0)
    keep[:, 0] = True  # min_topk = 1
    return keep


def combine_logits(z_p: Tensor, z_0: Tensor, alpha: PerRow) -> Tensor:
    """Self-contrastive extrapolation ``z_p + α (z_p − z_0) = (1+α) z_p − α z_0`` (§1.2).

    ``z_p``, ``z_0``: ``(B, V)``; ``alpha``: float or ``(B,)``. Returns ``(B, V)``.
    """
    return z_p + _per_row(alpha, z_p, "alpha") * (z_p - z_0)


def linear_alignment_logits(
    z_p: Tensor,
    z_0: Tensor,
    alpha: PerRow,
    nucleus_top_p: PerRow = 0.8,
    nucleus_temperature: PerRow = 0.5,
) -> Tensor:
    """Linear-alignment next-token logits with the plausibility (nucleus) restriction (§1.2).

    ``contra_generate``'s rule with the mask moved to logit space:
    ``z_LA = z_p + α(z_p − z_0)``, then ``-inf`` outside ``nucleus(softmax(z_p / T), top_p)``.
    The result is not divided by ``T``; the sampler applies the temperature.

    Args:
        z_p: ``(B, V)`` last-position logits with the principle in the context.
        z_0: ``(B, V)`` last-position logits without it.
        alpha: step size α ("ratio"); float or ``(B,)``. ``α = 0`` is principled decoding.
        nucleus_top_p: top-p of the nucleus; float or ``(B,)`` (authors' default 0.8).
        nucleus_temperature: ``T > 0`` of the distribution the nucleus is taken from; float or
            ``(B,)`` (authors' default 0.5). Tensor values are clamped to ``>= 1e-5``.

    Returns:
        ``(B, V)`` fp32 logits (fp64 for fp64 input): finite on the nucleus (at least one token
        per row, bounded so ``softmax(logits / T)`` is finite for ``T >= 1e-5``), ``-inf`` off it.
    """
    _check_2d(z_p, "z_p")
    if z_0.shape != z_p.shape:
        raise ValueError(f"z_0 {tuple(z_0.shape)} must match z_p {tuple(z_p.shape)}")
    if not isinstance(nucleus_temperature, Tensor) and not nucleus_temperature > 0:
        raise ValueError(f"nucleus_temperature must be > 0, got {nucleus_temperature}")
    if not isinstance(nucleus_top_p, Tensor) and not 0.0 < nucleus_top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1], got {nucleus_top_p}")
    dtype = torch.promote_types(z_p.dtype, torch.float32)
    z_p, z_0 = z_p.to(dtype), z_0.to(dtype)
    temperature = _per_row(nucleus_temperature, z_p, "nucleus_temperature")
    if isinstance(temperature, Tensor):
        temperature = temperature.clamp_min(_MIN_TEMPERATURE)
    probs = torch.softmax(z_p / temperature, dim=-1)  # (B, V)
    top_p = _per_row(nucleus_top_p, z_p, "nucleus_top_p")
    # Fast path (the serving hot path, once per engine step): the nucleus lies within the top-k
    # tokens of almost every row, so the rule is evaluated on those k columns only and the rest
    # of the row is -inf. Same numbers as the full computation on every kept token.
    k = min(z_p.shape[-1], _NUCLEUS_TOPK)
    top_probs, top_order = probs.topk(k, dim=-1)  # (B, k), descending
    keep = _keep_prefix(top_probs, top_p)
    z_top = _bounded(
        combine_logits(z_p.gather(-1, top_order), z_0.gather(-1, top_order), alpha), dtype
    )
    out = torch.full_like(z_p, float("-inf")).scatter(
        -1, top_order, z_top.masked_fill(~keep, float("-inf"))
    )
    covered = (top_probs.sum(dim=-1) >= _rows(top_p, z_p)) & (_rows(top_p, z_p) < 1.0)  # (B,)
    rest = ~covered
    if bool(rest.any()):  # flat rows or top_p = 1: the full vocabulary
        keep_full = nucleus_mask(probs[rest], _subset(nucleus_top_p, rest))
        z_la = _bounded(combine_logits(z_p[rest], z_0[rest], _subset(alpha, rest)), dtype)
        banned = ~keep_full | (z_p[rest] == float("-inf"))  # banned with the principle too
        out[rest] = z_la.masked_fill(banned, float("-inf"))
    return out  # (B, V); the nucleus is never empty


def _bounded(z_la: Tensor, dtype: torch.dtype) -> Tensor:
    """Clamp so that z / T stays finite for any T >= 1e-5: a huge alpha (or -inf - -inf = NaN,
    or a finite z_p over z_0 = -inf) can then neither overflow softmax nor empty the nucleus."""
    bound = torch.finfo(dtype).max * _MIN_TEMPERATURE / 2  # / 2: headroom for rounding
    return z_la.nan_to_num(nan=float("-inf")).clamp(-bound, bound)


def _rows(value: PerRow, like: Tensor) -> Tensor:
    """A per-row value as a ``(B,)`` tensor."""
    if isinstance(value, Tensor):
        return value.reshape(-1).expand(like.shape[0]) if value.numel() == 1 else value.reshape(-1)
    return torch.full((like.shape[0],), float(value), dtype=like.dtype, device=like.device)


def _subset(value: PerRow, rows: Tensor) -> PerRow:
    """The values of ``rows`` of a ``(B,)`` hyper-parameter (floats and scalars pass through)."""
    if isinstance(value, Tensor) and value.dim() == 1:
        return value[rows]
    return value


def greedy(logits: Tensor) -> Tensor:
    """Greedy choice ``argmax`` per row (ties: lowest index). ``(B, V)`` -> ``(B,)`` int64."""
    _check_2d(logits, "logits")
    return logits.argmax(dim=-1)


def sample(
    logits: Tensor, temperature: PerRow = 1.0, generator: torch.Generator | None = None
) -> Tensor:
    """Sample one token per row from ``softmax(logits / T)``; rows with ``T <= 0`` are greedy.

    ``logits``: ``(B, V)`` (``-inf`` entries are never drawn); ``temperature``: float or ``(B,)``;
    ``generator``: optional RNG for reproducibility. Returns ``(B,)`` int64.
    """
    _check_2d(logits, "logits")
    if not isinstance(temperature, Tensor) and temperature <= 0:
        return greedy(logits)
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
    t = _per_row(temperature, logits, "temperature")
    safe_t = t.clamp_min(_MIN_TEMPERATURE) if isinstance(t, Tensor) else max(t, _MIN_TEMPERATURE)
    probs = torch.softmax(logits / safe_t, dim=-1)
    drawn = torch.multinomial(probs, 1, generator=generator).squeeze(-1)  # (B,)
    if isinstance(t, Tensor):
        drawn = torch.where((t <= 0).reshape(-1), greedy(logits), drawn)
    return drawn


def next_token(
    z_p: Tensor,
    z_0: Tensor,
    alpha: PerRow,
    *,
    top_p: PerRow = 0.8,
    temperature: PerRow = 0.5,
    do_sample: bool = False,
    generator: torch.Generator | None = None,
) -> Tensor:
    """One linear-alignment decoding step, as ``contra_generate`` (§1.2): ``(B, V)`` -> ``(B,)``.

    Greedy by default; with ``do_sample`` draws from ``softmax(z_LA / T)`` over the nucleus.
    """
    logits = linear_alignment_logits(z_p, z_0, alpha, top_p, temperature)
    return sample(logits, temperature, generator) if do_sample else greedy(logits)
