"""AfD: alignment from demonstrations with an Init-SFT reward model (Sun & van der Schaar,
arXiv 2405.15624; docs/algorithms.md §4).

1. Samples of the initial policy ``π_init`` are drawn first (before any training, so this works
   for full fine-tuning too) and cached; through the serving engine when the job has one.
2. SFT on the demonstrations (forward KL / behaviour cloning).
3. Samples of ``π_SFT`` on the same prompts; a discriminator ``D = σ(f_φ(x, y))`` with a scalar
   head on the base model (a LoRA sequence classifier) is trained to tell ``π_SFT`` samples
   (label 1) from ``π_init`` samples (label 0) with ``align_core.discriminator_loss``.
4. The checkpoint holds the SFT policy (adapter) and, under ``reward_model/``, the
   discriminator, whose logit is the reward for Best-of-N (``align_core.best_of_n``). Its
   held-out accuracy goes into the manifest.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from align_core import discriminator_accuracy, discriminator_loss, discriminator_losses
from contracts.specs import AfDSpec, afd_steps
from trainers.distill import base_samples, served_engine
from trainers.loop import Stage, TrainContext
from trainers.modeling import (
    Encoded,
    collate,
    enable_gradient_checkpointing,
    encode,
    model_device,
    sample,
    save_pretrained,
    to_device,
)
from trainers.recipes.base import Recipe, Records
from trainers.recipes.stages import SFTStage, batch_share

REWARD_DIR = "reward_model"
HELD_OUT = 0.25


def _prompts(spec: AfDSpec, records: Records) -> list[list[dict[str, str]]]:
    rows = records[: spec.max_prompts]
    return [r["messages"] for r in rows for _ in range(spec.samples_per_prompt)]


def _samples(ctx: TrainContext, spec: AfDSpec, records: Records, base: bool) -> dict[str, Any]:
    prompts = _prompts(spec, records)
    engine = served_engine(spec.engine) if base else None
    if engine is not None:  # the engine serves exactly the initial policy
        answers = base_samples(engine, prompts, spec.generation, spec.hyperparameters.seed)
    else:
        answers = sample(ctx.policy, ctx.tokenizer, prompts, spec.generation, use_base=base,
                         max_prompt_length=spec.hyperparameters.max_prompt_length)
    return {"samples": [{"messages": p, "completion": a}
                        for p, a in zip(prompts, answers, strict=True)]}


@dataclass
class AfDSFTStage(SFTStage):
    def prepare(self, ctx: TrainContext) -> None:
        spec = ctx.spec
        assert isinstance(spec, AfDSpec)
        ctx.cached("afd-init-samples", lambda: _samples(ctx, spec, self.records, base=True))
        super().prepare(ctx)


def build_discriminator(ctx: TrainContext) -> nn.Module:
    """The base model with a scalar head (``num_labels=1``) and a LoRA adapter."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForSequenceClassification

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    placement = ctx.placement
    model = AutoModelForSequenceClassification.from_pretrained(
        ctx.model_path, num_labels=1, dtype=placement.frozen_dtype, local_files_only=True
    )
    model.config.pad_token_id = ctx.pad_id
    model.to(placement.device)
    lora = ctx.spec.lora
    config = LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                        target_modules=list(lora.target_modules), task_type="SEQ_CLS")
    discriminator = get_peft_model(model, config)
    # The scalar head is trained (peft's modules_to_save); keep it fp32 like the adapter.
    for p in discriminator.parameters():
        if p.requires_grad:
            p.data = p.data.float()
    if ctx.spec.hyperparameters.gradient_checkpointing:
        enable_gradient_checkpointing(discriminator)
    return discriminator


def reward_logits(model: nn.Module, items: list[Encoded], pad_id: int) -> Tensor:
    """``(B,)`` discriminator logits ``f_φ(x, y)`` (the reward)."""
    batch = to_device(collate(items, pad_id), model_device(model))
    logits: Tensor = model(input_ids=batch["input_ids"],
                           attention_mask=batch["attention_mask"]).logits
    return logits.squeeze(-1).float()  # the loss in fp32 (a no-op on the CPU)


@dataclass
class DiscriminatorStage:
    name: str
    steps: int
    learning_rate: float
    records: Records
    module: str = "reward_model"

    def prepare(self, ctx: TrainContext) -> None:
        spec = ctx.spec
        assert isinstance(spec, AfDSpec)
        hp = spec.hyperparameters
        init = ctx.cached("afd-init-samples", lambda: {"samples": []})["samples"]
        sft = ctx.cached("afd-sft-samples",
                         lambda: _samples(ctx, spec, self.records, base=False))["samples"]

        def enc(rows: Records) -> list[Encoded]:
            return [encode(ctx.tokenizer, r["messages"], r["completion"], hp.max_length,
                           hp.max_prompt_length) for r in rows]

        pos, neg = enc(sft), enc(init)
        n_eval = int(len(pos) * HELD_OUT) if len(pos) >= 4 else 0
        n_train = len(pos) - n_eval
        self._train = (pos[:n_train], neg[:n_train])
        self._eval = (pos[n_train:], neg[n_train:])
        if "reward_model" not in ctx.modules:
            ctx.modules["reward_model"] = build_discriminator(ctx)

    def size(self) -> int:
        return len(self._train[0])

    def loss(
        self, ctx: TrainContext, indices: list[int], batch: list[int]
    ) -> tuple[Tensor, dict[str, float]]:
        pos, neg = self._train
        items = [pos[i] for i in indices] + [neg[i] for i in indices]
        logits = reward_logits(ctx.modules[self.module], items, ctx.pad_id)  # (2B,)
        sft_logits, init_logits = logits.split(len(indices))
        labels = torch.cat([torch.ones(len(indices)), torch.zeros(len(indices))]).bool()
        labels = labels.to(logits.device)
        accuracy = float(discriminator_accuracy(logits.detach(), labels))
        if len(indices) == len(batch):
            loss = discriminator_loss(sft_logits, init_logits)
        else:  # both classes have len(batch) examples in the batch: a share of each class mean
            loss = batch_share(discriminator_losses(logits, labels), len(batch))
        return loss, {"rm/accuracy": accuracy}

    @torch.no_grad()
    def held_out_accuracy(self, ctx: TrainContext) -> float | None:
        pos, neg = self._eval
        if not pos:
            return None
        model = ctx.modules[self.module]
        model.eval()
        logits = reward_logits(model, pos + neg, ctx.pad_id)
        labels = torch.cat([torch.ones(len(pos)), torch.zeros(len(neg))]).bool().to(logits.device)
        return float(discriminator_accuracy(logits, labels))


def afd_stages(ctx: TrainContext, records: Records) -> list[Stage]:
    spec = ctx.spec
    assert isinstance(spec, AfDSpec)
    hp = spec.hyperparameters
    sft_steps, rm_steps = afd_steps(hp.max_steps, spec.sft_fraction)
    rm = DiscriminatorStage("afd-reward-model", rm_steps, spec.reward_learning_rate, records)
    ctx.summary["_afd_stage"] = rm
    return [AfDSFTStage("afd-sft", sft_steps, hp.learning_rate, records), rm]


def write_reward_model(ctx: TrainContext, folder: Path, kind: str, details: dict[str, Any]) -> None:
    """``folder/reward_model/``: the scalar-head adapter of ``ctx.modules["reward_model"]``, the
    tokenizer and ``reward_model.json`` (``kind``, the base model, ``details``): what
    ``trainers.reward.RewardModel.load`` reads."""
    target = folder / REWARD_DIR
    save_pretrained(ctx.modules["reward_model"], target, ctx.full_states.get("reward_model"))
    ctx.tokenizer.save_pretrained(target)
    info = {"kind": kind, "base_model": ctx.model_path, **details}
    (target / "reward_model.json").write_text(json.dumps(info, indent=2) + "\n")


def save_reward_model(ctx: TrainContext, folder: Path) -> None:
    stage: DiscriminatorStage = ctx.summary.pop("_afd_stage")
    accuracy = stage.held_out_accuracy(ctx)
    ctx.summary["afd"] = {"reward_model_heldout_accuracy": accuracy,
                          "reward_model_dir": REWARD_DIR}
    write_reward_model(ctx, folder, "afd_init_sft_discriminator",
                       {"reward": "logit of D(sft vs init)", "heldout_accuracy": accuracy})


AFD = Recipe(afd_stages, save_reward_model)
