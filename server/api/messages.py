"""OpenAI chat request parts: messages (tool calls and results included), tool definitions,
``tool_choice`` and ``response_format``. Strict like the requests that hold them: a string is
never coerced into a number or a boolean, and no text may hold a lone UTF-16 surrogate."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    model_validator,
)

MAX_TOOLS = 128

_STRICT = ConfigDict(extra="forbid", strict=True)


def no_lone_surrogates(value: str) -> str:
    """JSON can carry ``"\\ud800"``, which is not Unicode text: tokenizers (and UTF-8) fail on it
    deep inside the engine, so it is refused here with the position."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(
            f"contains a lone UTF-16 surrogate ({value[exc.start]!a}) at character "
            f"{exc.start}: not valid Unicode text"
        ) from None
    return value


def _json_without_surrogates(value: dict[str, Any]) -> dict[str, Any]:
    stack: list[tuple[str, Any]] = [("", value)]
    while stack:
        path, item = stack.pop()
        if isinstance(item, str):
            try:
                no_lone_surrogates(item)
            except ValueError as exc:
                raise ValueError(f"{path.lstrip('.') or 'value'} {exc}") from None
        elif isinstance(item, dict):
            for key, sub in item.items():
                no_lone_surrogates(str(key))
                stack.append((f"{path}.{key}", sub))
        elif isinstance(item, list):
            stack.extend((f"{path}.{i}", sub) for i, sub in enumerate(item))
    return value


Text = Annotated[str, AfterValidator(no_lone_surrogates)]
JsonObject = Annotated[dict[str, Any], AfterValidator(_json_without_surrogates)]
FunctionName = Annotated[str, Field(pattern=r"^[a-zA-Z0-9_-]{1,64}$")]


class TextPart(BaseModel):
    model_config = _STRICT
    type: Literal["text"]
    text: Text


def text_or_list(value: Any) -> str:
    """Picks the one branch of ``Text | list[...]`` that validates the input, so an error names
    the field inside the list rather than the other branch's "not a string" (the tags look like
    pydantic's own branch labels, which error params leave out)."""
    return LIST_TAG if isinstance(value, list) else "str"


LIST_TAG = "list[items]"

Content = Annotated[
    Annotated[Text, Tag("str")] | Annotated[list[TextPart], Tag(LIST_TAG)],
    Discriminator(text_or_list),
]


class FunctionCall(BaseModel):
    model_config = _STRICT
    name: Text
    arguments: Text  # JSON text, as the model produced it


class ToolCall(BaseModel):
    model_config = _STRICT
    id: Text
    type: Literal["function"]
    function: FunctionCall


class ChatMessage(BaseModel):
    """One message. OpenAI's per-role shapes in one model (so errors name ``messages.<i>.<field>``):
    ``tool_calls``/``refusal`` only on assistant messages, whose ``content`` may then be null;
    ``tool_call_id`` on (and only on) tool messages."""

    model_config = _STRICT
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: Content | None = None
    name: Text | None = None
    refusal: Text | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: Text | None = None

    @model_validator(mode="after")
    def _role_fields(self) -> ChatMessage:
        if self.role != "assistant" and (self.tool_calls is not None or self.refusal is not None):
            raise ValueError(f"tool_calls and refusal are only allowed on assistant messages, "
                             f"not on a {self.role!r} message")
        if (self.role == "tool") != (self.tool_call_id is not None):
            raise ValueError("a 'tool' message needs tool_call_id (and only tool messages have it)")
        if self.content is None and not (self.role == "assistant" and self.tool_calls):
            raise ValueError("content may be null only on an assistant message with tool_calls")
        return self

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class FunctionDefinition(BaseModel):
    model_config = _STRICT
    name: FunctionName
    description: Text | None = None
    parameters: JsonObject | None = None
    strict: bool | None = None  # grammar-decoded calls always follow the schema

    def parameters_schema(self) -> dict[str, Any]:
        """OpenAI: omitted ``parameters`` is a function without arguments."""
        if self.parameters is None:
            return {"type": "object", "properties": {}}
        return self.parameters


class ToolDefinition(BaseModel):
    model_config = _STRICT
    type: Literal["function"]
    function: FunctionDefinition


class NamedFunction(BaseModel):
    model_config = _STRICT
    name: FunctionName


class NamedToolChoice(BaseModel):
    model_config = _STRICT
    type: Literal["function"]
    function: NamedFunction


def _choice_kind(value: Any) -> str:
    return "str" if isinstance(value, str) else "function-object"


# One branch per input type (as ``Content``), so an error names ``tool_choice`` itself.
ToolChoice = Annotated[
    Annotated[Literal["none", "auto", "required"], Tag("str")]
    | Annotated[NamedToolChoice, Tag("function-object")],
    Discriminator(_choice_kind),
]


class JsonSchemaFormat(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, populate_by_name=True)
    name: FunctionName
    description: Text | None = None
    json_schema: JsonObject | None = Field(default=None, alias="schema")
    strict: bool | None = None  # the grammar always enforces the schema

    def schema_or_any(self) -> dict[str, Any]:
        return self.json_schema if self.json_schema is not None else {}


class ResponseFormat(BaseModel):
    """``text`` (the default), ``json_object`` (any JSON object) or ``json_schema``."""

    model_config = _STRICT
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None

    @model_validator(mode="after")
    def _schema_iff_json_schema(self) -> ResponseFormat:
        if (self.type == "json_schema") != (self.json_schema is not None):
            raise ValueError("json_schema is required with type 'json_schema' and only there")
        return self
