"""Merge a LoRA checkpoint into full weights, so an adapter can also go live in 'full' mode."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path


def merge_lora(base: Path, adapter: Path, target: Path) -> Path:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    merged = PeftModel.from_pretrained(model, adapter).merge_and_unload()
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.tmp-"))
    try:
        merged.save_pretrained(staging)
        AutoTokenizer.from_pretrained(base).save_pretrained(staging)
        staging.rename(target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target
