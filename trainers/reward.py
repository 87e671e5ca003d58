"""Deployable reward models (AfD's Init-SFT discriminator, or the Bradley-Terry model of
method ``reward_model``): load one and score completions.

Public API for the server's Best-of-N: it encodes (conversation, completion) exactly as the
discriminator was trained (``trainers.modeling.encode``) and returns the logit ``f_φ(x, y)``,
which is the reward (docs/algorithms.md §4.1).

It runs on ``ALIGNSERVE_REWARD_DEVICE`` (a ``trainers.devices`` setting, default ``auto``: the
first GPU when CUDA is present, in bf16 where supported, else the CPU in fp32); rewards come back
as fp32 CPU tensors either way.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from trainers.devices import Placement, choose_devices
from trainers.modeling import Messages, collate, encode, load_tokenizer, to_device

REWARD_DIR = "reward_model"
REWARD_DEVICE_ENV = "ALIGNSERVE_REWARD_DEVICE"
MAX_LENGTH = 1024
MAX_PROMPT_LENGTH = 512


def reward_model_folder(checkpoint: Path) -> Path | None:
    """The reward model inside a checkpoint folder, if it carries one."""
    folder = checkpoint / REWARD_DIR
    return folder if (folder / "reward_model.json").is_file() else None


@dataclass
class RewardModel:
    model: Any
    tokenizer: Any
    info: dict[str, Any]

    placement: Placement = field(default_factory=Placement.cpu)

    @classmethod
    def load(cls, folder: Path, base_model: Path, device: str | None = None) -> RewardModel:
        """A scalar-head LoRA classifier on ``base_model`` (the served base's local folder),
        on ``device`` (a device setting; default: ``ALIGNSERVE_REWARD_DEVICE`` or ``auto``)."""
        from peft import PeftModel
        from transformers import AutoModelForSequenceClassification

        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        setting = device or os.environ.get(REWARD_DEVICE_ENV, "auto")
        placement = Placement.on(choose_devices(setting)[0])
        tokenizer = load_tokenizer(str(folder))
        base = AutoModelForSequenceClassification.from_pretrained(
            base_model, num_labels=1, dtype=placement.frozen_dtype, local_files_only=True
        )
        base.config.pad_token_id = tokenizer.pad_token_id
        base.to(placement.device)
        model = PeftModel.from_pretrained(base, folder).eval()
        info = json.loads((folder / "reward_model.json").read_text())
        return cls(model, tokenizer, info, placement)

    def score(self, messages: Messages, completions: Sequence[str]) -> Tensor:
        """``(N,)`` rewards of ``completions`` to the same conversation."""
        return self.score_pairs([(messages, c) for c in completions])

    @torch.no_grad()
    def score_pairs(self, pairs: Sequence[tuple[Messages, str]], batch_size: int = 8) -> Tensor:
        """``(N,)`` rewards of (conversation, completion) pairs, in order."""
        out = []
        for start in range(0, len(pairs), batch_size):
            items = [
                encode(self.tokenizer, m, c, MAX_LENGTH, MAX_PROMPT_LENGTH)
                for m, c in pairs[start : start + batch_size]
            ]
            batch = to_device(collate(items, int(self.tokenizer.pad_token_id)),
                              self.placement.device)
            with self.placement.autocast():
                logits: Tensor = self.model(
                    input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
                ).logits
            out.append(logits.squeeze(-1).float().cpu())
        return torch.cat(out) if out else torch.zeros(0)
