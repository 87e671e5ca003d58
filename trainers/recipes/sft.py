"""SFT: supervised fine-tuning on demonstrations (OpenAI's ``supervised`` method), one stage of
the per-token mean negative log-likelihood of the answers (``SFTStage``)."""

from __future__ import annotations

from trainers.loop import Stage, TrainContext
from trainers.recipes.base import Recipe, Records
from trainers.recipes.stages import SFTStage


def sft_stages(ctx: TrainContext, records: Records) -> list[Stage]:
    hp = ctx.spec.hyperparameters
    return [SFTStage("sft", hp.max_steps, hp.learning_rate, records)]


SFT = Recipe(sft_stages)
