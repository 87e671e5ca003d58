"""``batch_logps``: the LM head on scoring positions only gives the full forward's log-probs."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from align_core import sequence_logps
from contracts.specs import LoraSpec
from trainers.modeling import (
    Encoded,
    batch_logps,
    collate,
    decoder_and_head,
    load_policy,
    load_tokenizer,
)


def _full_forward_logps(
    model: torch.nn.Module, items: list[Encoded], pad: int, average: bool
) -> torch.Tensor:
    batch = collate(items, pad)
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    return sequence_logps(logits, batch["input_ids"], batch["completion_mask"], average=average)


@pytest.mark.parametrize("finetuning", ["lora", "full"])
@pytest.mark.parametrize("average", [False, True])
def test_head_on_scoring_positions_equals_full_forward(
    tiny_model: Path, finetuning: str, average: bool
) -> None:
    tokenizer = load_tokenizer(str(tiny_model))
    model = load_policy(str(tiny_model), finetuning, LoraSpec())
    assert decoder_and_head(model) is not None  # the fast path is the one under test
    torch.manual_seed(0)
    for p in model.parameters():  # a LoRA B of zeros would hide the adapter's gradient
        if p.requires_grad:
            torch.nn.init.normal_(p, std=0.02)
    items = [
        Encoded((5, 6, 7), (8, 9, tokenizer.eos_token_id)),
        Encoded((5, 6, 7, 10, 11, 12, 13), (14, tokenizer.eos_token_id)),
        Encoded((5,), (16, 17, 18, 19, 20, tokenizer.eos_token_id)),
    ]
    pad = tokenizer.pad_token_id
    trained = [p for p in model.parameters() if p.requires_grad]
    fast = batch_logps(model, items, pad, average=average)
    fast_grads = torch.autograd.grad(fast.sum(), trained)
    full = _full_forward_logps(model, items, pad, average)
    full_grads = torch.autograd.grad(full.sum(), trained)
    torch.testing.assert_close(fast, full, rtol=1e-5, atol=1e-5)
    for a, b in zip(fast_grads, full_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_models_with_scaled_logits_use_the_full_forward(tiny_model: Path) -> None:
    model = load_policy(str(tiny_model), "full", LoraSpec())
    model.config.final_logit_softcapping = 30.0
    assert decoder_and_head(model) is None
