"""LD-Align: latent-distance guided alignment (Luo, arXiv 2404.06390; docs/algorithms.md §3).

[INFERRED] SPIN-style reconstruction (§3.2). Each iteration ``t``:

1. the current policy answers the demonstration prompts (the losers ``y'``; winners are the
   demonstrations ``y*``); in the first iteration that is the base model, answered through the
   serving engine when the job has one;
2. both are embedded, and an auto-encoder trained by reconstruction maps the embeddings to a
   ``latent_dim`` latent space; ``d_i`` is the latent distance of each pair and
   ``w_i = WEIGHTINGS[weighting](d_i)`` (detached, larger distance => larger weight);
3. DPO against ``π_t`` (reference log-probs computed once at the start of the iteration), with
   the loss weighted by ``w`` (``align_core.weighted_mean``).

Latent space choice: the auto-encoder's input is the **base policy's last hidden state,
mean-pooled over the sequence** (adapter disabled, so the feature space is fixed across
iterations). This needs no second model; the packaged MiniLM would be the alternative (§3.2
suggests a sentence encoder) but costs another 90 MB model per worker.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from align_core import latent_distance, latent_distance_weights
from contracts.specs import LDAlignSpec, split_steps
from trainers.distill import base_samples, served_engine
from trainers.loop import Stage, TrainContext
from trainers.modeling import Encoded, base_weights, collate, model_device, sample, to_device
from trainers.recipes.base import Recipe, Records
from trainers.recipes.stages import PairStage, encode_all


@torch.no_grad()
def pooled_features(ctx: TrainContext, items: list[Encoded], batch_size: int = 8) -> Tensor:
    """``(N, H)`` mean-pooled last hidden states of the base policy."""
    model, out = ctx.policy, []
    model.eval()
    with base_weights(model):
        for start in range(0, len(items), batch_size):
            batch = to_device(collate(items[start : start + batch_size], ctx.pad_id),
                              model_device(model))
            hidden = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                           output_hidden_states=True).hidden_states[-1]  # (B, T, H)
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
            out.append((hidden * mask).sum(1) / mask.sum(1).clamp_min(1.0))
    model.train()
    return torch.cat(out).float().cpu()  # the auto-encoder is small: it trains on the CPU


def train_autoencoder(features: Tensor, latent_dim: int, steps: int, seed: int) -> nn.Module:
    """An auto-encoder fit by MSE reconstruction of standardised features; returns its encoder."""
    torch.manual_seed(seed)
    mean, std = features.mean(0), features.std(0).clamp_min(1e-6)
    x = (features - mean) / std  # (N, H)
    hidden = x.shape[1]
    encoder = nn.Sequential(nn.Linear(hidden, latent_dim), nn.Tanh())
    decoder = nn.Linear(latent_dim, hidden)
    optimizer = torch.optim.Adam([*encoder.parameters(), *decoder.parameters()], lr=1e-3)
    for _ in range(steps):
        optimizer.zero_grad()
        loss = nn.functional.mse_loss(decoder(encoder(x)), x)
        loss.backward()
        optimizer.step()

    class Standardised(nn.Module):
        def forward(self, f: Tensor) -> Tensor:
            out: Tensor = encoder((f - mean) / std)
            return out

    standardised = Standardised()
    standardised.reconstruction_mse = float(loss.detach())  # type: ignore[assignment]
    return standardised


@dataclass
class LDAlignStage(PairStage):
    iteration: int = 0
    demonstrations: Records | None = None

    def prepare(self, ctx: TrainContext) -> None:
        spec = ctx.spec
        assert isinstance(spec, LDAlignSpec) and self.demonstrations is not None
        data = ctx.cached(f"ld_align-iteration-{self.iteration}", lambda: self._build(ctx, spec))
        self.records, self.weights = data["pairs"], data["weights"]
        ctx.summary.setdefault("ld_align", []).append(data["summary"])
        ctx.control.event(f"LD-Align iteration {self.iteration} data ready", data["summary"])
        super().prepare(ctx)

    def _build(self, ctx: TrainContext, spec: LDAlignSpec) -> dict[str, Any]:
        demos = self.demonstrations[: spec.max_prompts]  # type: ignore[index]
        prompts = [d["messages"] for d in demos]
        engine = served_engine(spec.engine) if self.iteration == 0 else None
        if engine is not None:  # nothing trained yet: the policy is the served base model
            losers = base_samples(engine, prompts, spec.generation, spec.hyperparameters.seed)
        else:
            losers = sample(ctx.policy, ctx.tokenizer, prompts, spec.generation,
                            max_prompt_length=spec.hyperparameters.max_prompt_length)
        pairs = [{"messages": d["messages"], "chosen": d["completion"], "rejected": y}
                 for d, y in zip(demos, losers, strict=True)]
        winners = pooled_features(ctx, encode_all(ctx, pairs, "chosen"))
        rejected = pooled_features(ctx, encode_all(ctx, pairs, "rejected"))
        encoder = train_autoencoder(torch.cat([winners, rejected]), spec.latent_dim,
                                    spec.autoencoder_steps, spec.hyperparameters.seed)
        with torch.no_grad():
            z_w, z_l = encoder(winners), encoder(rejected)  # (N, k) each
        weights = latent_distance_weights(z_w, z_l, normaliser=spec.weighting,
                                          metric=spec.distance, tau=spec.tau)
        distances = latent_distance(z_w, z_l, spec.distance)
        summary = {"iteration": self.iteration, "pairs": len(pairs),
                   "reconstruction_mse": encoder.reconstruction_mse,
                   "mean_distance": float(distances.mean()),
                   "min_weight": float(weights.min()), "max_weight": float(weights.max())}
        return {"pairs": pairs, "weights": weights, "summary": summary}


def ld_align_stages(ctx: TrainContext, records: Records) -> list[Stage]:
    spec = ctx.spec
    assert isinstance(spec, LDAlignSpec)
    hp = spec.hyperparameters
    steps = split_steps(hp.max_steps, spec.iterations)
    return [
        LDAlignStage(f"ld_align-{i}", n, hp.learning_rate, "dpo", iteration=i,
                     demonstrations=records, reference_is_base=(i == 0))
        for i, n in enumerate(steps)
    ]


LD_ALIGN = Recipe(ld_align_stages)
