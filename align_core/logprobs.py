"""Sequence log-probabilities of completions under a causal LM (docs/algorithms.md §0, §2.2).

Convention (DPO, Rafailov et al. 2023, arXiv 2305.18290; authors' ``_get_batch_logps`` and TRL's
``DPOTrainer.concatenated_forward``): the logits at position ``t-1`` predict token ``t``, so

    logπ(y|x) = Σ_{t ∈ completion} log softmax(logits[t-1])[input_ids[t]]

summed over completion tokens only (prompt and padding masked). ULMA (Cai et al., arXiv 2312.02554,
``average_log_prob=True``) uses the per-token **mean** instead: pass ``average=True``.

Shapes: ``B`` batch, ``T`` sequence length, ``V`` vocabulary.
"""

from __future__ import annotations

import torch
from torch import Tensor

IGNORE_INDEX = -100
"""Label value that marks a position as not part of the completion (HF / DPO convention)."""


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """fp16/bf16 -> fp32 (docs/algorithms.md §0: log-softmax in fp32); fp32/fp64 kept as is."""
    return torch.promote_types(dtype, torch.float32)


def per_token_logps(logits: Tensor, labels: Tensor) -> Tensor:
    """Log-probability of each next token, after the shift by one.

    Args:
        logits: ``(B, T, V)`` raw model outputs for ``labels``.
        labels: ``(B, T)`` token ids; entries may be ``IGNORE_INDEX`` (they give 0 here and
            must be masked by the caller).

    Returns:
        ``(B, T-1)`` tensor, entry ``[b, t-1]`` = ``log softmax(logits[b, t-1])[labels[b, t]]``,
        in fp32 (fp64 if ``logits`` are fp64). Computed as ``gather - logsumexp`` so no
        ``(B, T, V)`` log-softmax tensor is materialised.
    """
    if logits.dim() != 3 or labels.dim() != 2 or logits.shape[:2] != labels.shape:
        raise ValueError(
            f"expected logits (B, T, V) and labels (B, T), got {tuple(logits.shape)} "
            f"and {tuple(labels.shape)}"
        )
    shifted = logits[:, :-1].to(_compute_dtype(logits.dtype))  # (B, T-1, V)
    targets = labels[:, 1:].clamp_min(0).long()  # (B, T-1); ignored labels read token 0
    token_logits = shifted.gather(-1, targets.unsqueeze(-1)).squeeze(-1)  # (B, T-1)
    return token_logits - torch.logsumexp(shifted, dim=-1)  # (B, T-1)


def sequence_logps(
    logits: Tensor,
    labels: Tensor,
    completion_mask: Tensor | None = None,
    *,
    average: bool = False,
) -> Tensor:
    """Completion log-probability of each sequence: summed (DPO) or per-token mean (ULMA).

    Implements docs/algorithms.md §0 "Sequence log-prob" (DPO, Rafailov et al. 2023) and, with
    ``average=True``, ULMA's ``_get_batch_logps(..., average_log_prob=True)`` (§2.2, §2.6).

    Args:
        logits: ``(B, T, V)`` model outputs for the full prompt+completion sequence.
        labels: ``(B, T)`` the input ids of that sequence (``IGNORE_INDEX`` allowed).
        completion_mask: ``(B, T)`` bool/0-1, true on completion tokens, aligned with
            ``labels`` (not shifted). Prompt and padding positions must be false. If ``None``,
            it is ``labels != IGNORE_INDEX``.
        average: divide by the number of completion tokens (ULMA). A row with no completion
            token gives 0 rather than the original code's NaN.

    Returns:
        ``(B,)`` fp32 log-probabilities (fp64 if ``logits`` are fp64).
    """
    if completion_mask is None:
        completion_mask = labels != IGNORE_INDEX
    if completion_mask.shape != labels.shape:
        raise ValueError(
            f"completion_mask {tuple(completion_mask.shape)} must match labels "
            f"{tuple(labels.shape)}"
        )
    mask = completion_mask[:, 1:].bool()  # (B, T-1): token t is scored by logits[t-1]
    token_logps = per_token_logps(logits, labels).masked_fill(~mask, 0.0)  # (B, T-1)
    total = token_logps.sum(-1)  # (B,)
    if not average:
        return total
    return total / mask.sum(-1).clamp_min(1).to(total.dtype)


def packed_sequence_logps(
    logits: Tensor,
    targets: Tensor,
    sequence: Tensor,
    num_sequences: int,
    *,
    average: bool = False,
) -> Tensor:
    """``sequence_logps`` from logits computed only where they score a completion token.

    Same value as :func:`sequence_logps` (docs/algorithms.md §0) when row ``n`` holds the logits at
    the position ``t-1`` of completion token ``t``: a trainer that runs the LM head on those
    positions only (not on the prompt or the padding) gets the same log-probs for less work.

    Args:
        logits: ``(N, V)`` logits at the ``N`` scoring positions of all sequences.
        targets: ``(N,)`` the completion token each row scores.
        sequence: ``(N,)`` the sequence (``0 .. num_sequences-1``) each row belongs to.
        num_sequences: ``B``; a sequence with no row gets 0.
        average: per-token mean instead of the sum (ULMA).

    Returns:
        ``(B,)`` fp32 log-probabilities (fp64 if ``logits`` are fp64).
    """
    if logits.dim() != 2 or targets.shape != logits.shape[:1] or sequence.shape != targets.shape:
        raise ValueError(
            f"expected logits (N, V), targets (N,) and sequence (N,), got "
            f"{tuple(logits.shape)}, {tuple(targets.shape)} and {tuple(sequence.shape)}"
        )
    scores = logits.to(_compute_dtype(logits.dtype))  # (N, V)
    token = scores.gather(-1, targets.long().unsqueeze(-1)).squeeze(-1)  # (N,)
    token_logps = token - torch.logsumexp(scores, dim=-1)  # (N,)
    total = token_logps.new_zeros(num_sequences).index_add(0, sequence.long(), token_logps)
    if not average:
        return total
    counts = torch.bincount(sequence.long(), minlength=num_sequences).clamp_min(1)
    return total / counts.to(total.dtype)
