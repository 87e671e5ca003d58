"""Plain data passed across the engine interface (no vLLM types leak out of the engine)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

FinishReason = Literal["stop", "length", "abort"]


@dataclass(frozen=True)
class StructuredOutput:
    """A grammar the output must follow (vLLM's structured outputs).

    ``json_schema`` is the schema serialised as JSON text (frozen, hashable); None with
    ``kind == "json_object"`` means any JSON object.
    """

    kind: Literal["json_schema", "json_object"]
    json_schema: str | None = None


@dataclass(frozen=True)
class SamplingOptions:
    """Per-request decoding settings, already validated by the protocol layer."""

    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    n: int = 1
    seed: int | None = None
    stop: tuple[str, ...] = ()
    logprobs: int | None = None  # top-k alternatives per token; 0 = chosen token only
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    structured: StructuredOutput | None = None
    logit_bias: tuple[tuple[int, float], ...] = ()  # (token id, bias) added to the logits
    prompt_logprobs: int | None = None  # top-k per prompt token (completions ``echo``)


@dataclass(frozen=True)
class AlignmentParams:
    """A guidance group for one request: decode with z_lead + alpha * (z_lead - z_ref).

    Linear alignment (``contrast_against`` None): z_lead is the conversation with the principle
    (``principled_prompt_ids``), z_ref the conversation as sent (the request's ``prompt_ids``),
    whose branch the client sees. Adapter contrast: z_lead is the request's own model (a deployed
    adapter) and z_ref the same conversation under ``contrast_against`` (the base model or
    another deployment); ``principled_prompt_ids`` is empty.
    """

    principled_prompt_ids: tuple[int, ...]
    alpha: float
    nucleus_top_p: float
    nucleus_temperature: float
    contrast_against: str | None = None


@dataclass(frozen=True)
class GenerationRequest:
    request_id: str
    model: str  # served name (base model, deployment alias or pinned version)
    prompt_ids: tuple[int, ...]
    sampling: SamplingOptions
    alignment: AlignmentParams | None = None
    allow_staged: bool = False  # internal smoke tests of a version before it goes live


@dataclass(frozen=True)
class TokenLogprob:
    token: str
    logprob: float
    token_bytes: tuple[int, ...]
    top: tuple[tuple[str, float, tuple[int, ...]], ...] = ()


@dataclass(frozen=True)
class GenerationDelta:
    """New output of one choice since the previous delta of the same request."""

    index: int
    text: str
    token_ids: tuple[int, ...]
    logprobs: tuple[TokenLogprob, ...] | None = None
    finish_reason: FinishReason | None = None
    stop_reason: str | int | None = None
    model_version: str = ""  # the version (``name@k``) whose weights produced these tokens
    # Log-probabilities of the prompt's tokens (the first is None: nothing precedes it); only on
    # a request's first delta, when ``SamplingOptions.prompt_logprobs`` is set.
    prompt_logprobs: tuple[TokenLogprob | None, ...] | None = None


@dataclass(frozen=True)
class ModelCard:
    id: str
    root: str
    parent: str | None = None
    version: int | None = None
    created: int = 0
    max_model_len: int = 0


@dataclass
class EngineStats:
    running: int = 0
    waiting: int = 0
    extra: dict[str, float] = field(default_factory=dict)
