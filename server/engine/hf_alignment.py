"""Linear alignment in plain transformers: the oracle for the engine path, and a fallback.

Batched two-branch decoding as the paper's ``contra_generate``, with one KV cache per branch,
left padding, and explicit position ids (the authors ran batch size 1 and had none). Each step
feeds the chosen token to both branches, so they share the generated prefix.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from align_core.linear_alignment import greedy, linear_alignment_logits, sample


@dataclass(frozen=True)
class AlignedPrompt:
    principled_ids: Sequence[int]  # z_p context
    plain_ids: Sequence[int]  # z_0 context
    alpha: float = 3.0
    nucleus_top_p: float = 0.8
    nucleus_temperature: float = 0.5


def _left_pad(rows: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, width - len(row) :] = torch.tensor(list(row), dtype=torch.long)
        mask[i, width - len(row) :] = 1
    return ids, mask  # (B, T), (B, T)


class _Branch:
    """One context per row, decoded incrementally with its own KV cache."""

    def __init__(self, model: Any, rows: Sequence[Sequence[int]], pad_id: int):
        self.model = model
        ids, self.mask = _left_pad(rows, pad_id)
        self.positions = (self.mask.cumsum(-1) - 1).clamp_min(0)  # (B, T)
        out = model(
            input_ids=ids, attention_mask=self.mask, position_ids=self.positions, use_cache=True
        )
        self.cache = out.past_key_values
        self.logits = out.logits[:, -1].float()  # (B, V)
        self.next_position = self.positions[:, -1:] + 1  # (B, 1)

    def advance(self, tokens: torch.Tensor) -> None:
        self.mask = torch.cat([self.mask, torch.ones_like(self.mask[:, :1])], dim=1)
        out = self.model(
            input_ids=tokens[:, None],
            attention_mask=self.mask,
            position_ids=self.next_position,
            past_key_values=self.cache,
            use_cache=True,
        )
        self.cache = out.past_key_values
        self.logits = out.logits[:, -1].float()
        self.next_position = self.next_position + 1


@torch.no_grad()
def linear_alignment_generate(
    model: Any,
    prompts: Sequence[AlignedPrompt],
    max_new_tokens: int,
    eos_token_id: int,
    temperature: float = 0.0,
    generator: torch.Generator | None = None,
) -> list[list[int]]:
    """Aligned continuations (token ids, each ending at its first EOS if any).

    ``temperature`` 0 is greedy; otherwise tokens are drawn from ``softmax(z_LA / temperature)``
    over the nucleus, as the engine's sampler does.
    """
    principled = _Branch(model, [p.principled_ids for p in prompts], eos_token_id)
    plain = _Branch(model, [p.plain_ids for p in prompts], eos_token_id)
    return _guided(principled, plain, prompts, max_new_tokens, eos_token_id, temperature,
                   generator)


@torch.no_grad()
def contrast_generate(
    lead_model: Any,
    ref_model: Any,
    prompts: Sequence[AlignedPrompt],
    max_new_tokens: int,
    eos_token_id: int,
) -> list[list[int]]:
    """Greedy adapter-contrast decoding: ``z_lead + alpha (z_lead - z_ref)`` on one context,
    ``z_lead`` from ``lead_model`` (an adapter) and ``z_ref`` from ``ref_model`` (the base).
    Each prompt's ``principled_ids`` is the conversation (``plain_ids`` is not used)."""
    lead = _Branch(lead_model, [p.principled_ids for p in prompts], eos_token_id)
    ref = _Branch(ref_model, [p.principled_ids for p in prompts], eos_token_id)
    return _guided(lead, ref, prompts, max_new_tokens, eos_token_id, 0.0, None)


def _guided(
    lead: _Branch,
    ref: _Branch,
    prompts: Sequence[AlignedPrompt],
    max_new_tokens: int,
    eos_token_id: int,
    temperature: float,
    generator: torch.Generator | None,
) -> list[list[int]]:
    alpha = torch.tensor([p.alpha for p in prompts])
    top_p = torch.tensor([p.nucleus_top_p for p in prompts])
    nucleus_t = torch.tensor([p.nucleus_temperature for p in prompts])
    outputs: list[list[int]] = [[] for _ in prompts]
    done = torch.zeros(len(prompts), dtype=torch.bool)
    for step in range(max_new_tokens):
        logits = linear_alignment_logits(lead.logits, ref.logits, alpha, top_p, nucleus_t)
        tokens = greedy(logits) if temperature <= 0 else sample(logits, temperature, generator)
        tokens = torch.where(done, torch.full_like(tokens, eos_token_id), tokens)
        for i, token in enumerate(tokens.tolist()):
            if not done[i]:
                outputs[i].append(token)
        done |= tokens == eos_token_id
        if bool(done.all()) or step == max_new_tokens - 1:
            break
        lead.advance(tokens)
        ref.advance(tokens)
    return outputs


@torch.no_grad()
def greedy_generate(
    model: Any, prompts: Sequence[Sequence[int]], max_new_tokens: int, eos_token_id: int
) -> list[list[int]]:
    """Plain greedy decoding with the same batching (alpha 0 with equal contexts)."""
    same = [AlignedPrompt(p, p, alpha=0.0, nucleus_top_p=1.0) for p in prompts]
    return linear_alignment_generate(model, same, max_new_tokens, eos_token_id)
