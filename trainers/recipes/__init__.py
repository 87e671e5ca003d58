"""Training recipes: a method is its data preparation plus its ``align_core`` loss.

``RECIPES`` maps each method name to a ``Recipe``: ``stages(ctx, records)`` builds the stages the
shared loop runs, and ``save_extra(ctx, folder)`` writes anything besides the policy into the
final checkpoint (the reward models of AfD and ``reward_model``).
"""

from __future__ import annotations

from trainers.recipes.afd import AFD
from trainers.recipes.align import ALIGN
from trainers.recipes.base import RECIPES, Recipe
from trainers.recipes.dpo import DPO
from trainers.recipes.ld_align import LD_ALIGN
from trainers.recipes.pointwise import POINTWISE_DPO, ULMA
from trainers.recipes.rdpo import RDPO
from trainers.recipes.reward_model import REWARD_MODEL
from trainers.recipes.sft import SFT

for _name, _recipe in (
    ("dpo", DPO), ("pointwise_dpo", POINTWISE_DPO), ("ulma", ULMA), ("rdpo", RDPO),
    ("ld_align", LD_ALIGN), ("afd", AFD), ("align", ALIGN), ("sft", SFT),
    ("reward_model", REWARD_MODEL),
):
    RECIPES.register(_name, _recipe)

__all__ = ["RECIPES", "Recipe"]
