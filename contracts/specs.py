"""Job specs: one pydantic model per method, joined in a discriminated union on ``method``.

Everything is validated here, at the API boundary, before a job is queued. Loss names are read
from the ``align_core`` registries, never typed by hand. The minimal body is::

    {"method": "dpo", "dataset": "<id>", "hyperparameters": {"max_steps": 3}}

``model`` defaults to the served base model (filled in by the service). The resolved spec
(``model_dump()``) is what a job stores and what every checkpoint carries.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, field_validator, model_validator

from align_core import DISTANCE_METRICS, PAIR_LOSSES, POINTWISE_LOSSES, WEIGHTINGS


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class LoraSpec(Strict):
    r: int = Field(default=8, ge=1, le=256)
    alpha: int = Field(default=16, ge=1)
    dropout: float = Field(default=0.0, ge=0.0, lt=1.0)
    target_modules: list[str] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"], min_length=1
    )


GATE_OFFSET = 60


class GateSpec(Strict):
    """Evaluation before a checkpoint goes live: the server deploys it staged (not routable),
    answers dev prompts no training used through the engine, and refuses it with the numbers when
    a bound fails (docs/alignment.md)."""

    suites: list[str] = Field(
        default_factory=lambda: ["harmful", "helpful", "benign_sensitive"], min_length=1,
        description="Evaluation suites (server.evaluation.suites), dev prompts only.",
    )
    limit: int = Field(default=40, ge=1, le=1000, description="Prompts per suite.")
    # Reports (docs/alignment.md: the first 60; `alignserve eval`: the first 40) read the
    # suites from the start; a gate that chose on those prompts would flatter its own report.
    offset: int = Field(
        default=GATE_OFFSET, ge=0, le=10_000,
        description="Skip each suite's first prompts: the gate validates on prompts the "
        "reported evaluation does not read.",
    )
    max_tokens: int = Field(default=64, ge=1, le=1024)
    min_harmful_refusal: float | None = Field(default=None, ge=0.0, le=1.0)
    max_over_refusal: float | None = Field(
        default=None, ge=0.0, le=1.0, description="Bound on every benign suite's refusal rate.")
    not_worse_than_live: bool = Field(
        default=False,
        description="Also refuse a checkpoint whose harmful refusal is lower, or whose "
        "over-refusal is higher, than the version live under the same name (same prompts).",
    )


class DeploySpec(Strict):
    """Hot-swap the checkpoint into the running server when the job succeeds."""

    # ':' for OpenAI-style names (ft:<base>:<suffix>:<id>); a name is only ever a key (store
    # rows, the engine's table, vLLM's LoRA name), never part of a file path.
    name: str = Field(min_length=1, max_length=160, pattern=r"^[A-Za-z0-9._:-]+$")
    mode: Literal["adapter", "full"] | None = Field(
        default=None, description="Default: 'adapter' for LoRA jobs, 'full' for full fine-tuning."
    )
    gate: GateSpec | None = Field(default=None, description="Evaluate before going live.")


class Hyperparameters(Strict):
    max_steps: int = Field(default=100, ge=1, le=1_000_000, description="Optimizer steps.")
    batch_size: int = Field(default=2, ge=1, le=1024)
    learning_rate: float = Field(default=5e-5, gt=0.0, le=1.0)
    beta: float = Field(default=0.1, gt=0.0)
    max_length: int = Field(default=512, ge=8)
    max_prompt_length: int = Field(default=256, ge=4)
    warmup_steps: int = Field(default=0, ge=0)
    max_grad_norm: float = Field(default=10.0, gt=0.0)
    weight_decay: float = Field(default=0.0, ge=0.0)
    checkpoint_every: int = Field(default=25, ge=1, description="Resume-point period (steps).")
    seed: int = 0
    micro_batch_size: int | None = Field(
        default=None, ge=1, le=1024,
        description="Examples per forward/backward pass on one device. batch_size stays the global "
        "batch: gradients are accumulated over batch_size / (devices x micro_batch_size) passes. "
        "Default: a device's whole share of the batch in one pass.",
    )
    gradient_checkpointing: bool = Field(
        default=False, description="Recompute activations in backward: less memory, more compute."
    )

    @model_validator(mode="after")
    def _lengths(self) -> Hyperparameters:
        if self.max_prompt_length >= self.max_length:
            raise ValueError("max_prompt_length must be smaller than max_length")
        return self


class GenerationSpec(Strict):
    """Sampling used where a recipe generates text with a policy."""

    max_new_tokens: int = Field(default=48, ge=1, le=2048)
    temperature: float = Field(default=0.7, ge=0.0, le=5.0)
    top_p: float = Field(default=0.95, gt=0.0, le=1.0)


class EngineSpec(Strict):
    """The serving engine that generates a job's data (its OpenAI API). Filled in by the server
    that accepts the job; a worker on another host may override it with ALIGNSERVE_ENGINE_URL.
    The key is never stored here: workers read ALIGNSERVE_ENGINE_KEY."""

    base_url: str | None = Field(default=None, max_length=500)
    model: str | None = Field(default=None, max_length=500, description="Served model name.")


class Resources(Strict):
    """Where one job runs: ``devices`` processes (one GPU each on a CUDA host) on each of
    ``nodes`` hosts. ``single`` is one in-process run; ``ddp`` (replicated weights, all-reduced
    gradients) and ``fsdp`` (FSDP2: weights, gradients and optimizer state sharded) run under
    torchrun. Default strategy: ``single`` for one device, else ``ddp``."""

    devices: int = Field(default=1, ge=1, le=64, description="Processes (GPUs) per node.")
    strategy: Literal["single", "ddp", "fsdp"] = "single"
    nodes: int = Field(default=1, ge=1, le=64, description="Hosts (torchrun --nnodes).")

    @model_validator(mode="before")
    @classmethod
    def _default_strategy(cls, data: Any) -> Any:
        if isinstance(data, dict) and "strategy" not in data:
            devices, nodes = data.get("devices", 1), data.get("nodes", 1)
            if isinstance(devices, int) and isinstance(nodes, int) and devices * nodes > 1:
                return {**data, "strategy": "ddp"}
        return data

    @model_validator(mode="after")
    def _single(self) -> Resources:
        if self.strategy == "single" and self.world_size > 1:
            raise ValueError("strategy 'single' runs on one device; use 'ddp' or 'fsdp'")
        return self

    @property
    def world_size(self) -> int:
        return self.devices * self.nodes

    @property
    def distributed(self) -> bool:
        return self.strategy != "single"


class _Base(Strict):
    method: str
    dataset: str = Field(min_length=1, description="Dataset id from POST /admin/v1/datasets.")
    model: str | None = Field(default=None, description="Base model folder; default: served.")
    finetuning: Literal["lora", "full"] = "lora"
    lora: LoraSpec = Field(default_factory=LoraSpec)
    hyperparameters: Hyperparameters = Field(default_factory=Hyperparameters)
    deploy: DeploySpec | None = None
    suffix: str | None = Field(default=None, max_length=64)
    resources: Resources = Field(default_factory=Resources)

    @model_validator(mode="after")
    def _gate_needs_adapter(self) -> _Base:
        deploy = self.deploy
        if deploy is not None and deploy.gate is not None:
            full = (deploy.mode or ("full" if self.finetuning == "full" else "adapter")) == "full"
            if full:  # evaluating full weights would hold every request back meanwhile
                raise ValueError("deploy.gate evaluates adapters: use LoRA (mode 'adapter')")
        return self

    @model_validator(mode="after")
    def _batch_split(self) -> _Base:
        """The global batch splits evenly over the processes, then into micro-batches."""
        hp, world = self.hyperparameters, self.resources.world_size
        if hp.batch_size % world:
            raise ValueError(f"batch_size {hp.batch_size} (the global batch) must be a multiple "
                             f"of devices x nodes = {world}")
        share = hp.batch_size // world
        if hp.micro_batch_size is not None and share % hp.micro_batch_size:
            raise ValueError(f"micro_batch_size {hp.micro_batch_size} must divide each process's "
                             f"share of the batch ({share})")
        return self


def _pair_loss(name: str, *, scored: bool) -> str:
    entry = PAIR_LOSSES.get(name)  # UnknownNameError (a ValueError) lists the valid names
    if entry.needs_reward_scores != scored:
        valid = [n for n, e in PAIR_LOSSES.items() if e.needs_reward_scores == scored]
        raise ValueError(f"loss {name!r} is not usable here; valid: {', '.join(valid)}")
    return name


def _check_options(loss: str, options: dict[str, float]) -> None:
    unknown = sorted(set(options) - set(PAIR_LOSSES.get(loss).options))
    if unknown:
        allowed = list(PAIR_LOSSES.get(loss).options)
        raise ValueError(f"loss_options {unknown} not accepted by {loss!r}; accepted: {allowed}")


class DPOSpec(_Base):
    method: Literal["dpo"]
    loss: str = Field(default="dpo", description="A PAIR_LOSSES name without reward scores.")
    loss_options: dict[str, float] = Field(default_factory=dict)
    rpo_alpha: float | None = Field(
        default=None, ge=0.0, le=100.0,
        description="Weight of the chosen-answer NLL added to the pair loss (RPO; TRL's "
        "rpo_alpha). docs/algorithms.md §0.2.",
    )

    @field_validator("loss")
    @classmethod
    def _loss(cls, v: str) -> str:
        return _pair_loss(v, scored=False)

    @model_validator(mode="after")
    def _options(self) -> DPOSpec:
        _check_options(self.loss, self.loss_options)
        return self


class SFTSpec(_Base):
    """Supervised fine-tuning on demonstrations: the per-token mean NLL of the answers (OpenAI's
    ``supervised`` method)."""

    method: Literal["sft"]


class _PointwiseBase(_Base):
    log_z: float = Field(default=0.0, description="Constant standing in for log Z(x) (ULMA: 0).")

    @field_validator("loss", check_fields=False)
    @classmethod
    def _loss(cls, v: str) -> str:
        POINTWISE_LOSSES.get(v)
        return v


class PointwiseDPOSpec(_PointwiseBase):
    method: Literal["pointwise_dpo"]
    loss: str = Field(default="pointwise_dpo", description="A POINTWISE_LOSSES name.")


class ULMASpec(_PointwiseBase):
    method: Literal["ulma"]
    loss: str = Field(default="ulma", description="A POINTWISE_LOSSES name.")


class RDPOSpec(_Base):
    method: Literal["rdpo"]
    loss: str = Field(default="rdpo", description="A PAIR_LOSSES name that uses reward scores.")
    loss_options: dict[str, float] = Field(default_factory=dict)
    scorer: str = Field(default="refusal", description="External reward: a trainers.scorers name.")
    system_prompt: str | None = None
    critique_prompt: str = (
        "Identify specific ways in which your previous answer is harmful, unethical, "
        "dangerous or unhelpful."
    )
    revision_prompt: str = (
        "Please rewrite your original response using the previous critique, so that it is "
        "harmless and helpful; refuse politely if the request is harmful."
    )
    generation: GenerationSpec = Field(default_factory=GenerationSpec)
    max_prompts: int = Field(default=64, ge=1, description="Prompts used for data synthesis.")
    engine: EngineSpec | None = Field(
        default=None, description="Self-critique through this serving engine (it must serve "
        "the job's base model); filled in by a server that serves it. None: in the worker.")

    @field_validator("loss")
    @classmethod
    def _loss(cls, v: str) -> str:
        return _pair_loss(v, scored=True)

    @field_validator("scorer")
    @classmethod
    def _scorer(cls, v: str) -> str:
        from trainers.scorers import SCORERS

        SCORERS.get(v)
        return v

    @model_validator(mode="after")
    def _options(self) -> RDPOSpec:
        _check_options(self.loss, self.loss_options)
        return self


class LDAlignSpec(_Base):
    method: Literal["ld_align"]
    iterations: int = Field(default=2, ge=1, le=20, description="Self-play rounds.")
    weighting: str = Field(default="softmax", description="A WEIGHTINGS name.")
    distance: str = Field(default="l2", description="Latent distance metric.")
    tau: float = Field(default=1.0, gt=0.0)
    latent_dim: int = Field(default=32, ge=2, le=1024)
    autoencoder_steps: int = Field(default=200, ge=1)
    max_prompts: int = Field(default=64, ge=1, description="Demonstrations used per iteration.")
    generation: GenerationSpec = Field(default_factory=GenerationSpec)
    engine: EngineSpec | None = Field(
        default=None, description="The first iteration's answers (the base policy's) through "
        "this serving engine (it must serve the job's base model); filled in by a server that "
        "serves it. Later iterations sample the trained policy in the worker.")

    @field_validator("weighting")
    @classmethod
    def _weighting(cls, v: str) -> str:
        WEIGHTINGS.get(v)
        return v

    @field_validator("distance")
    @classmethod
    def _distance(cls, v: str) -> str:
        if v not in DISTANCE_METRICS:
            raise ValueError(f"unknown distance {v!r}; valid: {', '.join(DISTANCE_METRICS)}")
        return v


class AfDSpec(_Base):
    method: Literal["afd"]
    sft_fraction: float = Field(default=
        0.5, gt=0.0, lt=1.0, description="Share of max_steps spent on SFT; the rest trains the RM."
    )
    samples_per_prompt: int = Field(default=2, ge=1, le=64)
    max_prompts: int = Field(default=32, ge=1, description="Prompts sampled for the discriminator.")
    reward_learning_rate: float = Field(default=1e-4, gt=0.0)
    generation: GenerationSpec = Field(default_factory=GenerationSpec)
    engine: EngineSpec | None = Field(
        default=None, description="The initial policy's samples through this serving engine "
        "(it must serve the job's base model); filled in by a server that serves it. The SFT "
        "policy's samples are drawn in the worker.")


class RewardModelSpec(_Base):
    """A Bradley–Terry reward model on preference pairs (docs/algorithms.md §8): a scalar head
    with a LoRA adapter on the base model, trained with ``-log σ(r_c - r_r)``. Its checkpoint
    carries it under ``reward_model/`` and is used by id (``POST /v1/rewards``, Best-of-N); it is
    not a chat model, so it cannot be deployed, and it is always a LoRA classifier."""

    method: Literal["reward_model"]
    held_out_fraction: float = Field(
        default=0.1, ge=0.0, le=0.5,
        description="Share of the pairs (at least one when above 0) held out of training to "
        "measure the reward model's pairwise accuracy; 0: none.",
    )

    @field_validator("deploy")
    @classmethod
    def _no_deploy(cls, v: DeploySpec | None) -> DeploySpec | None:
        if v is not None:
            raise ValueError(
                "a reward_model checkpoint scores answers, it does not chat: it cannot be "
                "deployed; use its checkpoint id as 'model' of POST /v1/rewards or as "
                "best_of_n.reward_model of a chat request")
        return v

    @field_validator("finetuning")
    @classmethod
    def _lora_only(cls, v: str) -> str:
        if v != "lora":
            raise ValueError("a reward_model trains a LoRA adapter and a scalar head on the base "
                             "model; 'full' is not available")
        return v


# Requests in flight when synthesising through the engine: vLLM batches them. On the 2-core
# CPU, 64 in flight answered 3.2x faster than transformers (median of 3), 16 only 1.9x.
SYNTHESIS_CONCURRENCY = 64
MAX_ATTEMPTS = 5
# Job ids name folders (<home>/jobs/<id>): no '/', never '.' or '..'.
JOB_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$"


class SynthesisSpec(Strict):
    max_tokens: int = Field(default=96, ge=8, le=1024)
    temperature: float = Field(default=0.0, ge=0.0, le=2.0)
    concurrency: int = Field(default=SYNTHESIS_CONCURRENCY, ge=1, le=256,
                             description="Requests in flight: vLLM batches them.")


class AlignSpec(_Base):
    """Principle distillation (docs/alignment.md): answers through the serving engine, plainly,
    under linear alignment with ``principle``/``preset`` and told to decline; pairs that teach
    when to refuse (``kind`` of each prompt); then ``objective`` on them. ``dataset`` holds
    prompts with ``kind`` ``harmful`` or ``benign``."""

    method: Literal["align"]
    principle: str | None = Field(default=None, min_length=1, max_length=4000)
    preset: str | None = Field(default=None, min_length=1, max_length=100,
                               description="A server principle preset; default 'harmless'.")
    alpha: float = Field(default=1.0, ge=0.0, le=50.0, description="Linear alignment step.")
    objective: Literal["dpo", "ulma", "pointwise_dpo", "sft"] = Field(
        default="dpo", description="What trains on the distilled data (docs/alignment.md).")
    rpo_alpha: float | None = Field(
        default=None, ge=0.0, le=100.0, description="Chosen-answer NLL weight with 'dpo' "
        "(none: plain DPO; POST /admin/v1/align sends 0.05, docs/alignment.md).")
    max_prompts: int = Field(default=1000, ge=1, le=100_000)
    synthesis: SynthesisSpec = Field(default_factory=SynthesisSpec)
    engine: EngineSpec = Field(default_factory=EngineSpec)
    answers_from: str | None = Field(
        default=None, pattern=JOB_ID_PATTERN, description="An earlier align job whose "
        "synthesis answers to reuse (matched by prompt; the rest are asked).")
    attempts: int = Field(
        default=1, ge=1, le=MAX_ATTEMPTS, description="Trainings in all: when the gate refuses "
        "the adapter, the server trains the same answers again with the next seed.")
    attempt: int = Field(default=1, ge=1, le=MAX_ATTEMPTS,
                         description="Which of the attempts this job is (the server counts).")

    @model_validator(mode="after")
    def _one_source(self) -> AlignSpec:
        if self.principle is not None and self.preset is not None:
            raise ValueError("align takes 'principle' or 'preset', not both")
        if self.principle is None and self.preset is None:
            self.preset = "harmless"
        return self

    @model_validator(mode="after")
    def _nll_with_dpo(self) -> AlignSpec:
        # Silently dropping it would train something other than what was asked for.
        if self.rpo_alpha is not None and self.objective != "dpo":
            raise ValueError(f"rpo_alpha applies to objective 'dpo' only, not {self.objective!r}")
        return self

    @model_validator(mode="after")
    def _attempts_need_a_gate(self) -> AlignSpec:
        if self.attempts > 1 and (self.deploy is None or self.deploy.gate is None):
            raise ValueError("attempts > 1 retrains when the evaluation gate refuses the "
                             "adapter: give deploy.gate")
        if self.attempt > self.attempts:
            raise ValueError(f"attempt {self.attempt} is past attempts {self.attempts}")
        return self

    def alignment(self) -> dict[str, Any]:
        source = {"principle": self.principle} if self.principle else {"preset": self.preset}
        return {**source, "alpha": self.alpha}


def split_steps(total: int, parts: int) -> list[int]:
    """``total`` steps over ``parts`` iterations, as evenly as possible, none empty."""
    parts = min(parts, total)
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


def afd_steps(total: int, sft_fraction: float) -> tuple[int, int]:
    """(SFT steps, reward-model steps): at least one each."""
    sft = min(max(1, round(total * sft_fraction)), max(1, total - 1))
    return sft, max(1, total - sft)


def total_steps(spec: _Base) -> int:
    """Optimizer steps the job will run, over all its stages."""
    if isinstance(spec, AfDSpec):
        return sum(afd_steps(spec.hyperparameters.max_steps, spec.sft_fraction))
    return spec.hyperparameters.max_steps


JobSpec = Annotated[
    DPOSpec | SFTSpec | PointwiseDPOSpec | ULMASpec | RDPOSpec | LDAlignSpec | AfDSpec
    | AlignSpec | RewardModelSpec,
    Field(discriminator="method"),
]
METHODS: tuple[str, ...] = (
    "dpo", "sft", "pointwise_dpo", "ulma", "ld_align", "afd", "rdpo", "align", "reward_model")
_ADAPTER: TypeAdapter[Any] = TypeAdapter(JobSpec)


def parse_spec(body: Any) -> _Base:
    """Validate a job body (raises ``pydantic.ValidationError``)."""
    spec: _Base = _ADAPTER.validate_python(body)
    return spec


AnySpec = _Base
