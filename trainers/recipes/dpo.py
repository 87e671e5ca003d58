"""DPO (Rafailov et al. 2023) and its registered pair-loss variants on preference pairs."""

from __future__ import annotations

from contracts.specs import DPOSpec
from trainers.loop import Stage, TrainContext
from trainers.recipes.base import Recipe, Records
from trainers.recipes.stages import PairStage


def dpo_stages(ctx: TrainContext, records: Records) -> list[Stage]:
    spec = ctx.spec
    assert isinstance(spec, DPOSpec)
    hp = spec.hyperparameters
    return [PairStage("dpo", hp.max_steps, hp.learning_rate, spec.loss, dict(spec.loss_options),
                      records=records, nll_weight=spec.rpo_alpha or 0.0)]


DPO = Recipe(dpo_stages)
