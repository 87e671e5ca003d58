"""OpenAI request models. OpenAI's field names and order first, then our extensions.

Strict at the edge: pydantic's strict mode, so ``"stream": "yes"``, ``"max_tokens": "8"`` or
``"n": "2"`` are 400s rather than guesses, and every text field refuses lone UTF-16 surrogates
(``server/api/messages.py``). Fields OpenAI clients send that mean nothing for a self-hosted
model (``service_tier``, ``metadata``, ``store``, ``user``) are accepted and ignored
(docs/openai.md).
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    field_validator,
    model_validator,
)

from server.api.messages import (
    LIST_TAG,
    MAX_TOOLS,
    ChatMessage,
    ResponseFormat,
    Text,
    ToolChoice,
    ToolDefinition,
    text_or_list,
)

MAX_N = 16
MAX_STOP = 4
MAX_LOGIT_BIAS = 300  # OpenAI's limit on entries

_STRICT = ConfigDict(extra="forbid", strict=True)


class StreamOptions(BaseModel):
    model_config = _STRICT
    include_usage: bool = False


class ContrastRequest(BaseModel):
    """Adapter contrast: decode the request's model (a deployed adapter) against another."""

    model_config = _STRICT
    against: Text = Field(
        min_length=1,
        max_length=200,
        description="The base model or a deployment (name or name@k) that gives z_ref.",
    )


class AlignmentRequest(BaseModel):
    """Guided decoding of this request (our extension, sent via the client's ``extra_body``).

    Linear alignment (``principle`` or ``preset``): z = z_p + alpha (z_p - z_0), where z_p is
    the conversation with the principle. Adapter contrast (``contrast``): z = z_model + alpha
    (z_model - z_against) on the conversation as sent.
    """

    model_config = _STRICT
    principle: Text | None = Field(
        default=None, description="Principle appended to the first system message for z_p."
    )
    preset: Text | None = Field(default=None, description="Name of a configured principle preset.")
    alpha: float = Field(
        default=3.0, ge=0.0, le=50.0, description="Step size: z_p + alpha(z_p - z_0)."
    )
    nucleus_top_p: float = Field(
        default=0.8,
        gt=0.0,
        le=1.0,
        description="Nucleus mass on softmax(z_p / nucleus_temperature).",
    )
    nucleus_temperature: float = Field(default=0.5, gt=0.0, le=10.0)
    preference: Text | None = Field(
        default=None, description="Fills {preference} in a personalised preset."
    )
    contrast: ContrastRequest | None = Field(
        default=None, description="Decode against another model instead of a principle."
    )

    @model_validator(mode="after")
    def _one_source(self) -> AlignmentRequest:
        sources = [x is not None for x in (self.principle, self.preset, self.contrast)]
        if sum(sources) != 1:
            raise ValueError(
                "alignment needs exactly one of 'principle', 'preset' or 'contrast'"
            )
        if self.principle is not None and not self.principle.strip():
            raise ValueError("alignment.principle must not be empty")
        if self.preference is not None and self.preset is None:
            raise ValueError("alignment.preference is only used with a personalised 'preset'")
        return self


class BestOfNRequest(BaseModel):
    model_config = _STRICT
    n: int = Field(ge=1, le=64)
    reward_model: Text


Stop = (
    Annotated[
        Annotated[Text, Tag("str")]
        | Annotated[list[Text], Field(max_length=MAX_STOP), Tag(LIST_TAG)],
        Discriminator(text_or_list),
    ]
    | None
)
LogitBias = dict[Text, float]


class _SamplingFields(BaseModel):
    model_config = _STRICT
    model: Text
    frequency_penalty: float = Field(default=0.0, ge=-2.0, le=2.0)
    max_tokens: int | None = Field(default=None, ge=1)
    n: int = Field(default=1, ge=1, le=MAX_N)
    presence_penalty: float = Field(default=0.0, ge=-2.0, le=2.0)
    seed: int | None = Field(default=None, ge=0, le=2**62)
    stop: Stop = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    temperature: float = Field(default=1.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    user: Text | None = None  # accepted, ignored: no per-user policy here
    logit_bias: LogitBias | None = Field(default=None, max_length=MAX_LOGIT_BIAS)

    @field_validator("stop")
    @classmethod
    def _no_empty_stop(cls, v: Stop) -> Stop:
        items = [v] if isinstance(v, str) else (v or [])
        if any(not s for s in items):
            raise ValueError("stop sequences must not be empty strings")
        return v

    @field_validator("logit_bias")
    @classmethod
    def _bias_entries(cls, v: LogitBias | None) -> LogitBias | None:
        for key, bias in (v or {}).items():
            if not key.isdigit():
                raise ValueError(f"keys are token ids (non-negative integers as strings), "
                                 f"got {key!r}")
            if not -100.0 <= bias <= 100.0:
                raise ValueError(f"bias of token {key} is {bias}; biases are in -100..100")
        return v

    def logit_bias_items(self) -> tuple[tuple[int, float], ...]:
        return tuple((int(k), float(b)) for k, b in (self.logit_bias or {}).items())

    @model_validator(mode="after")
    def _stream_options_need_stream(self) -> _SamplingFields:
        if self.stream_options is not None and not self.stream:
            raise ValueError("stream_options is only allowed when stream is true")
        return self

    def stop_list(self) -> tuple[str, ...]:
        if self.stop is None:
            return ()
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)


class ChatCompletionRequest(_SamplingFields):
    messages: list[ChatMessage] = Field(min_length=1)
    logprobs: bool = False
    max_completion_tokens: int | None = Field(default=None, ge=1)
    metadata: dict[Text, Text] | None = None  # accepted, ignored (nothing is stored)
    parallel_tool_calls: bool | None = None
    response_format: ResponseFormat | None = None
    service_tier: Text | None = None  # accepted, ignored: one tier here
    store: bool | None = None  # accepted, ignored: completions are never stored
    tool_choice: ToolChoice | None = None
    tools: list[ToolDefinition] | None = Field(default=None, min_length=1, max_length=MAX_TOOLS)
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    # --- vLLM's chat-template fields ----------------------------------------------------------
    add_generation_prompt: bool = Field(
        default=True, description="Open an assistant turn after the conversation (vLLM's field)."
    )
    continue_final_message: bool = Field(
        default=False,
        description="Continue the final (assistant) message instead of starting a new turn: "
        "the answer is written after that message's text (vLLM's field; prefill). Needs "
        "add_generation_prompt false.",
    )
    # --- alignserve extensions -------------------------------------------------------------
    alignment: AlignmentRequest | None = Field(
        default=None, description="Linear alignment at decoding time (no training)."
    )
    best_of_n: BestOfNRequest | None = Field(
        default=None, description="Best-of-N selection with a deployed reward model."
    )

    @model_validator(mode="after")
    def _logprob_fields(self) -> ChatCompletionRequest:
        if self.top_logprobs is not None and not self.logprobs:
            raise ValueError("top_logprobs requires logprobs to be true")
        both = self.max_tokens is not None and self.max_completion_tokens is not None
        if both and self.max_tokens != self.max_completion_tokens:
            raise ValueError("max_tokens and max_completion_tokens disagree; send one of them")
        if self.continue_final_message:
            if self.add_generation_prompt:  # vLLM's rule and words
                raise ValueError("Cannot set both `continue_final_message` and "
                                 "`add_generation_prompt` to True.")
            final = self.messages[-1]
            if final.role != "assistant" or final.content is None or final.tool_calls:
                raise ValueError("continue_final_message needs the final message to be the "
                                 "assistant's, with text and no tool_calls (the text to "
                                 "continue)")
        return self

    def requested_max_tokens(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens


def _prompt_kind(value: Any) -> str:
    if not isinstance(value, list):
        return "str"
    first = value[0] if value else None
    if isinstance(first, str):
        return "list[str]"
    return "list[list[int]]" if isinstance(first, list) else "list[int]"


# One branch per input shape, as for ``Stop``: errors then name the prompt's own item.
Prompt = Annotated[
    Annotated[Text, Tag("str")]
    | Annotated[list[Text], Tag("list[str]")]
    | Annotated[list[int], Tag("list[int]")]
    | Annotated[list[list[int]], Tag("list[list[int]]")],
    Discriminator(_prompt_kind),
]


class CompletionRequest(_SamplingFields):
    prompt: Prompt
    echo: bool = False
    logprobs: int | None = Field(default=None, ge=0, le=20)
    max_tokens: int | None = Field(default=16, ge=1)
    # --- alignserve extensions -------------------------------------------------------------
    alignment: AlignmentRequest | None = Field(
        default=None, description="Not supported here: a text prompt has no system message."
    )

    @field_validator("alignment")
    @classmethod
    def _alignment_needs_chat(cls, v: AlignmentRequest | None) -> None:
        if v is not None:
            raise ValueError(
                "linear alignment needs a conversation (the principle goes into its system "
                "message): use /v1/chat/completions"
            )
        return None

    @field_validator("prompt")
    @classmethod
    def _non_empty(
        cls, v: str | list[str] | list[int] | list[list[int]]
    ) -> str | list[str] | list[int] | list[list[int]]:
        if isinstance(v, list) and not v:
            raise ValueError("prompt must not be an empty list")
        if isinstance(v, list) and any(isinstance(p, list) and not p for p in v):
            raise ValueError("token prompts must not be empty")
        return v
