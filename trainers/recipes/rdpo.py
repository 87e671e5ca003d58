"""rDPO: refined DPO with self-critique data and external scores (Gallego, arXiv 2402.08005).

Data synthesis (docs/algorithms.md §5.1): the base policy itself is the local teacher. For each
prompt it answers (``y_o``), critiques its answer with ``critique_prompt`` and revises it with
``revision_prompt`` (``y_r``), in one multi-turn chat. A pairs dataset skips synthesis. Both
answers are scored by an external scorer (``trainers.scorers``) unless every pair carries
``chosen_score``/``rejected_score`` (data from principle distillation), and the pairs
``(chosen = y_r, rejected = y_o)`` train with a scored ``PAIR_LOSSES`` entry (default ``rdpo``,
the soft-label form). The synthesised data are cached in the job's work dir, so a resumed job
trains on the same pairs.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch

from contracts.specs import RDPOSpec
from trainers.distill import base_samples, served_engine
from trainers.loop import Stage, TrainContext
from trainers.modeling import Messages, sample
from trainers.recipes.base import Recipe, Records
from trainers.recipes.stages import PairStage
from trainers.scorers import SCORERS

logger = logging.getLogger(__name__)


def self_critique(ctx: TrainContext, spec: RDPOSpec, prompts: list[Messages]) -> Records:
    """Answer, critique, revise (three sampling rounds over all prompts, base weights): through
    the serving engine when the job has one (it serves this very base model), else here."""
    hp, gen = spec.hyperparameters, spec.generation
    system = [{"role": "system", "content": spec.system_prompt}] if spec.system_prompt else []
    chats = [system + p for p in prompts]
    engine = served_engine(spec.engine)

    def turn(history: list[Messages]) -> list[str]:
        ctx.control.check()
        if engine is not None:
            return base_samples(engine, history, gen, hp.seed)
        return sample(ctx.policy, ctx.tokenizer, history, gen, use_base=True,
                      max_prompt_length=hp.max_prompt_length)

    originals = turn(chats)
    critique = {"role": "user", "content": spec.critique_prompt}
    chats = [[*c, {"role": "assistant", "content": a}, critique]
             for c, a in zip(chats, originals, strict=True)]
    critiques = turn(chats)
    revise = {"role": "user", "content": spec.revision_prompt}
    chats = [[*c, {"role": "assistant", "content": k}, revise]
             for c, k in zip(chats, critiques, strict=True)]
    revisions = turn(chats)
    return [
        {"messages": p, "chosen": r, "rejected": o, "critique": k}
        for p, o, k, r in zip(prompts, originals, critiques, revisions, strict=True)
    ]


@dataclass
class RDPOStage(PairStage):
    source: Records | None = None

    def prepare(self, ctx: TrainContext) -> None:
        spec = ctx.spec
        assert isinstance(spec, RDPOSpec) and self.source is not None

        def synthesise() -> dict[str, Any]:
            rows = self.source[: spec.max_prompts]  # type: ignore[index]
            if all("chosen" in r for r in rows):
                pairs = [dict(r) for r in rows]
            else:
                pairs = self_critique(ctx, spec, [r["messages"] for r in rows])
            if all("chosen_score" in p for p in pairs):  # scored by whoever made the data
                chosen = [float(p["chosen_score"]) for p in pairs]
                rejected = [float(p["rejected_score"]) for p in pairs]
            else:
                prompts = [p["messages"][-1]["content"] for p in pairs]
                scorer = SCORERS.get(spec.scorer)
                chosen = scorer(prompts, [p["chosen"] for p in pairs])
                rejected = scorer(prompts, [p["rejected"] for p in pairs])
            return {"pairs": pairs, "chosen_scores": torch.tensor(chosen),
                    "rejected_scores": torch.tensor(rejected)}

        data = ctx.cached("rdpo-data", synthesise)
        self.records = data["pairs"]
        self.chosen_scores, self.rejected_scores = data["chosen_scores"], data["rejected_scores"]
        ctx.summary["rdpo"] = {
            "pairs": len(self.records),
            "mean_chosen_score": float(self.chosen_scores.mean()),
            "mean_rejected_score": float(self.rejected_scores.mean()),
        }
        ctx.control.event("rDPO data ready", ctx.summary["rdpo"])
        super().prepare(ctx)


def rdpo_stages(ctx: TrainContext, records: Records) -> list[Stage]:
    spec = ctx.spec
    assert isinstance(spec, RDPOSpec)
    hp = spec.hyperparameters
    return [RDPOStage("rdpo", hp.max_steps, hp.learning_rate, spec.loss,
                      dict(spec.loss_options), source=records)]


RDPO = Recipe(rdpo_stages)
