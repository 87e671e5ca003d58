"""Point-wise DPO (binary or continuous labels) and ULMA (Cai et al., arXiv 2312.02554).

Both train on point-wise records with a ``POINTWISE_LOSSES`` entry; they differ in the default
loss (``pointwise_dpo`` vs ``ulma``), which the spec holds.
"""

from __future__ import annotations

from contracts.specs import PointwiseDPOSpec, ULMASpec
from trainers.loop import Stage, TrainContext
from trainers.recipes.base import Recipe, Records
from trainers.recipes.stages import PointwiseStage


def pointwise_stages(ctx: TrainContext, records: Records) -> list[Stage]:
    spec = ctx.spec
    assert isinstance(spec, PointwiseDPOSpec | ULMASpec)
    hp = spec.hyperparameters
    return [PointwiseStage(spec.method, hp.max_steps, hp.learning_rate, spec.loss, spec.log_z,
                           records)]


POINTWISE_DPO = Recipe(pointwise_stages)
ULMA = Recipe(pointwise_stages)
