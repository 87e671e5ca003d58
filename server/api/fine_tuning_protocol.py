"""Request models of ``POST /v1/fine_tuning/jobs``: OpenAI's fields and names first, then a
marked block of our extensions. Field type errors become 400s naming the field (``param``).

A method's hyperparameter object holds OpenAI's ``batch_size``, ``learning_rate_multiplier``,
``n_epochs`` (and ``beta``), each a number or ``"auto"``, plus, as extensions, any field of our
job spec for that method (``max_steps``, ``learning_rate``, ``max_length``, ``loss``,
``iterations``, ...). Those are checked by the job spec itself (``contracts.specs``), so every
method's own names stay defined in one place.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

Auto = Literal["auto"]
# OpenAI's own methods, then ours. 'supervised' and 'reinforcement' are accepted here so that
# the answer can say why they are not available (fine_tuning_service.OPENAI_METHODS).
METHOD_TYPES = ("supervised", "dpo", "reinforcement", "pointwise_dpo", "ulma", "rdpo", "ld_align",
                "afd")
MethodType = Literal["supervised", "dpo", "reinforcement", "pointwise_dpo", "ulma", "rdpo",
                     "ld_align", "afd"]
SUFFIX_PATTERN = r"^[A-Za-z0-9._-]*$"  # the suffix becomes part of a model name


# field: (integer?, lowest, highest, lowest excluded?)
_RANGES: dict[str, tuple[bool, float, float, bool]] = {
    "batch_size": (True, 1, 1024, False),
    "n_epochs": (True, 1, 50, False),
    "learning_rate_multiplier": (False, 0.0, 100.0, True),
    "beta": (False, 0.0, 100.0, True),
}


def _auto_number(name: str, value: Any) -> Any:
    """``"auto"`` or a number in the field's range; one error message that says both (a plain
    union would report one error per branch)."""
    if isinstance(value, str) and value == "auto":
        return value
    integer, low, high, open_low = _RANGES[name]
    number = value if isinstance(value, int | float) and not isinstance(value, bool) else None
    if integer and isinstance(number, float):
        number = int(number) if number.is_integer() else None
    in_range = number is not None and (number > low if open_low else number >= low)
    if not in_range or number is None or number > high:
        kind = "an integer" if integer else "a number"
        bounds = f"above {low:g} and at most" if open_low else f"from {low:g} to"
        raise ValueError(f"must be {kind} {bounds} {high:g}, or 'auto'")
    return number


class HyperparametersRequest(BaseModel):
    """OpenAI's hyperparameters; other keys are our spec's fields (checked by the spec)."""

    model_config = ConfigDict(extra="allow")

    batch_size: int | Auto = "auto"
    learning_rate_multiplier: float | Auto = "auto"
    n_epochs: int | Auto = "auto"
    beta: float | Auto = "auto"

    @field_validator(*_RANGES, mode="before")
    @classmethod
    def _number_or_auto(cls, value: Any, info: ValidationInfo) -> Any:
        assert info.field_name is not None
        return _auto_number(info.field_name, value)

    @property
    def extensions(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class MethodOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    hyperparameters: HyperparametersRequest = Field(default_factory=HyperparametersRequest)


class MethodRequest(BaseModel):
    """``{"type": "dpo", "dpo": {"hyperparameters": {...}}}``: the object named by ``type``."""

    model_config = ConfigDict(extra="forbid")

    type: MethodType
    supervised: MethodOptions | None = None
    dpo: MethodOptions | None = None
    reinforcement: dict[str, Any] | None = None
    # -- alignserve extensions: our other methods --
    pointwise_dpo: MethodOptions | None = None
    ulma: MethodOptions | None = None
    rdpo: MethodOptions | None = None
    ld_align: MethodOptions | None = None
    afd: MethodOptions | None = None

    @model_validator(mode="after")
    def _only_its_own_options(self) -> MethodRequest:
        for other in METHOD_TYPES:
            if other != self.type and getattr(self, other) is not None:
                raise ValueError(f"method.{other} given, but method.type is {self.type!r}")
        return self

    @property
    def options(self) -> MethodOptions:
        given = getattr(self, self.type)
        return given if isinstance(given, MethodOptions) else MethodOptions()


class FineTuningJobRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str = Field(min_length=1, max_length=256, description="The served base model's name.")
    training_file: str = Field(min_length=1, max_length=256)
    hyperparameters: HyperparametersRequest | None = Field(
        default=None, description="Deprecated by OpenAI in favour of method.<type>."
    )
    suffix: str | None = Field(default=None, min_length=1, max_length=64, pattern=SUFFIX_PATTERN)
    validation_file: str | None = Field(default=None, min_length=1, max_length=256)
    integrations: list[dict[str, Any]] | None = None
    seed: int | None = Field(default=None, ge=0, le=2**31 - 1)
    method: MethodRequest | None = None
    metadata: dict[str, Annotated[str, Field(max_length=512)]] | None = None
    # -- alignserve extensions --
    deploy: bool | None = Field(
        default=None,
        description="Deploy the result as an adapter named like ft:<base>:<suffix>:<job id> "
        "(the default for LoRA jobs); false: only a checkpoint.",
    )
    finetuning: Literal["lora", "full"] = Field(default="lora", description="LoRA or all weights.")
    lora: dict[str, Any] | None = Field(default=None, description="LoRA rank, alpha, modules.")
    resources: dict[str, Any] | None = Field(default=None, description="Devices and strategy.")

    @model_validator(mode="after")
    def _one_place_for_hyperparameters(self) -> FineTuningJobRequest:
        if self.hyperparameters is not None and self.method is not None:
            raise ValueError("give hyperparameters in method.<type>.hyperparameters, not both")
        return self

    @field_validator("metadata")
    @classmethod
    def _metadata(cls, v: dict[str, str] | None) -> dict[str, str] | None:
        if v is not None and (len(v) > 16 or any(len(k) > 64 for k in v)):
            raise ValueError("at most 16 keys of at most 64 characters")
        return v

    @field_validator("integrations")
    @classmethod
    def _integrations(cls, v: list[dict[str, Any]] | None) -> list[dict[str, Any]] | None:
        if v:
            raise ValueError("integrations (Weights & Biases) are not supported by this server")
        return v

    def method_type(self, inferred: str) -> str:
        """The requested method, or ``inferred`` (from the training file) when none was given."""
        return self.method.type if self.method is not None else inferred

    def hyper(self) -> HyperparametersRequest:
        """The method's hyperparameters (the deprecated top-level ones when no method)."""
        if self.method is not None:
            return self.method.options.hyperparameters
        return self.hyperparameters or HyperparametersRequest()
