"""``POST /admin/v1/align``: the whole loop in one request (docs/alignment.md).

A principle (or preset) and prompts in; one ``align`` job out: synthesis through this server's
engine, training, then, when the job succeeds, the evaluation gate and the deployment (the
auto-deployer). The job is an ordinary job: ``GET /admin/v1/jobs/{id}`` and its events follow it,
cancel stops it, a restart resumes it.
"""

from __future__ import annotations

import asyncio
from typing import Any, Literal

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from contracts.specs import MAX_ATTEMPTS, GateSpec
from server.api.admin_jobs import Training, json_body
from server.api.deps import AdminScope
from server.errors import InvalidRequestError

router = APIRouter()
BUILTIN = "builtin"


def default_gate() -> GateSpec:
    """Refuse an adapter that over-refuses benign requests, or that is worse than what is live."""
    return GateSpec(max_over_refusal=0.10, not_worse_than_live=True)


class AlignRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    principle: str | None = Field(default=None, min_length=1, max_length=4000)
    preset: str | None = Field(default=None, min_length=1, max_length=100)
    alpha: float = Field(default=1.0, ge=0.0, le=50.0)
    prompts: str = Field(
        default=BUILTIN, min_length=1, max_length=200,
        description="A 'prompts' dataset id whose records carry a kind, or 'builtin'.")
    count: int = Field(default=200, ge=2, le=2000, description="Built-in prompts to use.")
    name: str = Field(default="aligned", min_length=1, max_length=64,
                      pattern=r"^[A-Za-z0-9._-]+$", description="Deployment name.")
    deploy: bool = True
    gate: GateSpec | None = Field(default_factory=default_gate)
    objective: Literal["dpo", "ulma", "pointwise_dpo", "sft"] = "dpo"
    rpo_alpha: float | None = Field(
        default=None, ge=0.0, le=100.0,
        description="Chosen-answer NLL weight, 'dpo' only; unset: 0.05 with 'dpo', null: plain "
        "DPO (docs/alignment.md).")
    hyperparameters: dict[str, Any] = Field(default_factory=dict)
    lora: dict[str, Any] | None = None
    seed: int = Field(default=0, ge=0, le=2**31)
    max_tokens: int = Field(default=96, ge=8, le=1024, description="Answer length in synthesis.")
    attempts: int = Field(
        default=1, ge=1, le=MAX_ATTEMPTS, description="Trainings in all: when the gate refuses "
        "the adapter, train the same answers again with the next seed (needs the gate).")
    answers_from: str | None = Field(
        default=None, min_length=1, max_length=128,
        description="Reuse the synthesis answers of this earlier align job.")


# The ablation's choice (docs/alignment.md): DPO + a little chosen NLL (0.05), 240 steps of 4
# pairs at 5e-4, LoRA on attention and MLP. Plain DPO's harmful refusal hung on the seed (20% to
# 75% over five runs); the NLL at 0.05 held it at 77% and 80% over two seeds with 2% and 10%
# ordinary over-refusal, where 0.1 and more brought the over-refusal back (7 to 20%, and 42% at
# 1). At 1e-3 or rank 32 it stopped refusing harmful requests; on attention only it moved half
# as far; 240 steps beat 60 and 120.
DEFAULT_RPO_ALPHA = 0.05
DEFAULT_LORA: dict[str, Any] = {
    "r": 8, "alpha": 16,
    "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                       "down_proj"],
}
DEFAULT_HYPERPARAMETERS: dict[str, Any] = {
    "max_steps": 240, "batch_size": 4, "learning_rate": 5e-4, "max_length": 384,
    "max_prompt_length": 192, "checkpoint_every": 20,
}


def chosen_nll(req: AlignRequest) -> float | None:
    """As given (null: plain DPO); unset, the default with 'dpo' and none with the others."""
    if "rpo_alpha" in req.model_fields_set:
        return req.rpo_alpha
    return DEFAULT_RPO_ALPHA if req.objective == "dpo" else None


def job_spec(req: AlignRequest, dataset: str) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "method": "align", "dataset": dataset, "alpha": req.alpha, "objective": req.objective,
        "rpo_alpha": chosen_nll(req), "lora": req.lora or DEFAULT_LORA,
        "synthesis": {"max_tokens": req.max_tokens}, "attempts": req.attempts,
        "answers_from": req.answers_from,
        "hyperparameters": {**DEFAULT_HYPERPARAMETERS, "seed": req.seed,
                            **req.hyperparameters},
    }
    if req.principle is not None:
        spec["principle"] = req.principle
    if req.preset is not None:
        spec["preset"] = req.preset
    if req.deploy:
        gate = req.gate.model_dump() if req.gate is not None else None
        spec["deploy"] = {"name": req.name, "mode": "adapter", "gate": gate}
    return spec


@router.post("/admin/v1/align")
async def align(request: Request, _: AdminScope, training: Training) -> dict[str, Any]:
    try:
        req = AlignRequest.model_validate(await json_body(request))
    except ValidationError as e:
        first = e.errors()[0]
        param = ".".join(str(p) for p in first.get("loc", ())) or None
        raise InvalidRequestError(f"{param}: {first['msg']}", param=param) from None
    if req.principle is not None and req.preset is not None:
        raise InvalidRequestError("give 'principle' or 'preset', not both", param="principle")
    if req.attempts > 1 and (req.gate is None or not req.deploy):
        raise InvalidRequestError("attempts > 1 retrains when the evaluation gate refuses the "
                                  "adapter: keep the gate and deploy", param="attempts")
    if req.rpo_alpha is not None and req.objective != "dpo":
        raise InvalidRequestError(f"rpo_alpha applies to objective 'dpo' only, not "
                                  f"{req.objective!r}", param="rpo_alpha")
    presets = request.app.state.presets
    if req.preset is not None and req.preset not in presets.names():
        raise InvalidRequestError(f"unknown preset {req.preset!r}; valid: "
                                  f"{', '.join(presets.names())}", param="preset")
    dataset = req.prompts
    if dataset == BUILTIN:
        from server.align_prompts import to_jsonl, training_prompts

        rows = await asyncio.to_thread(training_prompts, training.home, req.count, req.seed)
        record = await asyncio.to_thread(training.upload, to_jsonl(rows), "prompts",
                                         f"align-builtin-{req.count}.jsonl")
        dataset = record.id
    job = await asyncio.to_thread(training.create_job, job_spec(req, dataset))
    return training.job_view(job)
