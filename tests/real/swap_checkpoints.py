"""Deployable test checkpoints with known, distinct greedy outputs (no training needed).

Adapters: LoRA with seeded random B (peft initialises B to zero, which would change nothing).
Full weights: the base model with seeded noise on a few matrices. Both are written in the
trainers' checkpoint format (manifest with base identity and per-file sha256).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from contracts.checkpoints import base_model_identity, write_final_checkpoint

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def _manifest(checkpoint_id: str, fmt: str, base: Path) -> dict[str, Any]:
    return {
        "checkpoint_id": checkpoint_id,
        "format": fmt,
        "method": "test",
        "base_model": base_model_identity(str(base)),
        "config": {"test": True},
    }


def make_adapter(
    base: Path, home: Path, checkpoint_id: str, seed: int, scale: float = 0.02
) -> Path:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    peft_model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=TARGETS))
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.normal_(0.0, scale)
    tokenizer = AutoTokenizer.from_pretrained(base)

    def fill(folder: Path) -> None:
        peft_model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)

    target = home / "checkpoints" / checkpoint_id
    write_final_checkpoint(target, fill, lambda: _manifest(checkpoint_id, "peft-lora", base))
    return target


def make_full(base: Path, home: Path, checkpoint_id: str, seed: int, scale: float = 0.01) -> Path:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith(("mlp.down_proj.weight", "self_attn.o_proj.weight")):
                param.add_(torch.randn_like(param) * scale)
    tokenizer = AutoTokenizer.from_pretrained(base)

    def fill(folder: Path) -> None:
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)

    target = home / "checkpoints" / checkpoint_id
    write_final_checkpoint(target, fill, lambda: _manifest(checkpoint_id, "hf-full", base))
    return target


@torch.no_grad()
def expected_greedy(
    weights: Path, adapter: Path | None, prompt_ids: list[int], max_tokens: int
) -> str:
    """Greedy text of full ``weights`` (plus a LoRA ``adapter``) in transformers."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(weights)
    model = AutoModelForCausalLM.from_pretrained(weights, dtype=torch.float32)
    if adapter is not None:
        model = PeftModel.from_pretrained(model, adapter).merge_and_unload()
    model.eval()
    out = model.generate(
        torch.tensor([prompt_ids]),
        attention_mask=torch.ones(1, len(prompt_ids), dtype=torch.long),
        max_new_tokens=max_tokens,
        do_sample=False,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.eos_token_id,
    )
    return str(tokenizer.decode(out[0, len(prompt_ids) :], skip_special_tokens=True))
