"""Function calling: which mode a request asks for, how tools and tool turns reach the prompt.

Modes (``tool_choice``):

* ``none``: the tools are not shown to the model; tool turns in the history still are.
* ``required`` / a named function: decoded under a grammar (vLLM's structured outputs), so any
  model calls well-formed functions: for a named function the output is its arguments object;
  for ``required`` it is ``[{"name": ..., "arguments": {...}}, ...]`` (one item when
  ``parallel_tool_calls`` is false). ``server/api/tool_output.py`` turns it into ``tool_calls``.
* ``auto`` (OpenAI's default when tools are sent): free text read by the vLLM tool parser the
  server is configured with (``ALIGNSERVE_TOOL_PARSER``), which must match how the model family
  writes calls; without one, or with ``alignment``, a 400 says why.

Templates that read ``tools`` (Hugging Face tool-use templates) get the tools and the tool turns
natively. Others (the embedded SmolLM2's) get the plain-text form documented in docs/openai.md:
the tools as a block in the system message, earlier calls as ``<tool_call>`` lines in the
assistant turn, results as ``<tool_response>`` user turns.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal

from server.api.messages import ChatMessage
from server.api.protocol import ChatCompletionRequest
from server.engine.types import StructuredOutput
from server.errors import InvalidRequestError

Mode = Literal["none", "auto", "required", "named"]


@dataclass(frozen=True)
class ToolPlan:
    mode: Mode
    tools: tuple[dict[str, Any], ...]  # OpenAI tool objects, as sent
    function: str | None = None  # the named function
    parallel: bool = True

    @property
    def calls(self) -> bool:
        """Whether the model is shown the tools and its output read for calls."""
        return self.mode != "none"

    def structured(self) -> StructuredOutput | None:
        """The grammar of ``required`` / named calls (None for ``auto`` and ``none``)."""
        if self.mode == "named":
            return StructuredOutput("json_schema", json.dumps(self._parameters(self.function)))
        if self.mode != "required":
            return None
        items = [
            {
                "type": "object",
                "properties": {
                    "name": {"type": "string", "enum": [t["function"]["name"]]},
                    "arguments": self._parameters(t["function"]["name"]),
                },
                "required": ["name", "arguments"],
                "additionalProperties": False,
            }
            for t in self.tools
        ]
        schema: dict[str, Any] = {"type": "array", "minItems": 1, "items": {"anyOf": items}}
        if not self.parallel:
            schema["maxItems"] = 1
        return StructuredOutput("json_schema", json.dumps(schema))

    def _parameters(self, name: str | None) -> dict[str, Any]:
        for t in self.tools:
            if t["function"]["name"] == name:
                params = t["function"].get("parameters")
                return params if params is not None else {"type": "object", "properties": {}}
        raise KeyError(name)


def plan_tools(req: ChatCompletionRequest, tool_parser: str | None) -> ToolPlan | None:
    """The request's tool mode, or None without tools. Refusals are 400s naming the field."""
    choice = req.tool_choice
    if not req.tools:
        if choice is not None and choice != "none":
            raise InvalidRequestError("tool_choice needs tools", param="tool_choice")
        return None
    names = [t.function.name for t in req.tools]
    if len(set(names)) != len(names):
        raise InvalidRequestError("function names in tools must be unique", param="tools")
    tools = tuple(t.model_dump(exclude_none=True) for t in req.tools)
    parallel = req.parallel_tool_calls is not False
    if choice is None or choice == "auto":
        plan = ToolPlan("auto", tools, parallel=parallel)
    elif choice in ("none", "required"):
        plan = ToolPlan(choice, tools, parallel=parallel)
    else:
        assert not isinstance(choice, str)
        if choice.function.name not in names:
            raise InvalidRequestError(
                f"tool_choice names function {choice.function.name!r}, which is not in tools "
                f"({', '.join(names)})",
                param="tool_choice",
            )
        plan = ToolPlan("named", tools, choice.function.name, parallel)
    _check_composition(req, plan, tool_parser)
    return plan


def _check_composition(req: ChatCompletionRequest, plan: ToolPlan, tool_parser: str | None) -> None:
    if plan.mode == "auto" and tool_parser is None:
        raise InvalidRequestError(
            "tool_choice 'auto' (the default when tools are sent) reads tool calls out of free "
            "text, which needs a tool parser for the served model family: start the server "
            "with ALIGNSERVE_TOOL_PARSER=<a vLLM tool parser, e.g. hermes>. Without one, send "
            "tool_choice 'required' or {\"type\": \"function\", \"function\": {\"name\": ...}}"
            " (grammar-constrained, any model) or 'none'.",
            param="tool_choice",
        )
    if plan.mode == "auto" and req.alignment is not None:
        raise InvalidRequestError(
            "tool_choice 'auto' does not compose with alignment: the call markup would be "
            "decoded as free text under the aligned distribution, which extrapolates away from "
            "the model's own tokens at every step, markup included, so a call could come out "
            "malformed and be returned as text. Use tool_choice 'required' or a named function "
            "(grammar-constrained on both rows of the group).",
            param="tool_choice",
        )
    constrained = req.response_format is not None and req.response_format.type != "text"
    if plan.calls and constrained:
        raise InvalidRequestError(
            "response_format constrains the output, which tool calls need for themselves: "
            "send tool_choice 'none' with a JSON response_format, or drop response_format",
            param="response_format",
        )
    if plan.calls and req.best_of_n is not None:
        raise InvalidRequestError(
            "best_of_n ranks text answers; it does not apply to tool calls", param="best_of_n"
        )


# -- the prompt -------------------------------------------------------------------------------


def conversation(
    messages: list[ChatMessage],
    plan: ToolPlan | None,
    native: bool,
    default_system_prompt: str,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]] | None]:
    """(messages for the chat template, tools for the template or None).

    Without tools or tool turns this is the conversation as sent, so plain requests render
    exactly as before.
    """
    tools = list(plan.tools) if plan is not None and plan.calls else None
    if native:
        return [_native(m, messages) for m in messages], tools
    rendered: list[dict[str, Any]] = []
    after_tool = False  # consecutive tool results share one user turn
    for m in messages:
        if m.role == "tool":
            result = _tool_response(m, messages)
            if after_tool:
                rendered[-1]["content"] += "\n" + result
            else:
                rendered.append({"role": "user", "content": result})
        elif m.role == "assistant" and m.tool_calls:
            calls = "\n".join(_call_line(c.function.name, c.function.arguments)
                              for c in m.tool_calls)
            text = m.text()
            rendered.append({"role": "assistant", "content": f"{text}\n{calls}" if text else calls})
        else:
            rendered.append({"role": m.role, "content": m.text()})
        after_tool = m.role == "tool"
    if plan is not None and plan.calls:
        _add_tool_block(rendered, plan_block(plan), default_system_prompt)
    return rendered, None


def _native(m: ChatMessage, history: list[ChatMessage]) -> dict[str, Any]:
    """Hugging Face's message shape for tool-use templates (arguments as objects)."""
    out: dict[str, Any] = {"role": m.role, "content": m.text()}
    if m.tool_calls:
        out["tool_calls"] = [
            {
                "id": c.id,
                "type": "function",
                "function": {
                    "name": c.function.name,
                    "arguments": _arguments(c.function.arguments),
                },
            }
            for c in m.tool_calls
        ]
    if m.role == "tool":
        out["tool_call_id"] = m.tool_call_id
        name = _called_name(m.tool_call_id, history)
        if name is not None:
            out["name"] = name
    return out


def _arguments(raw: str) -> Any:
    try:
        return json.loads(raw)
    except json.JSONDecodeError:  # as the model wrote it
        return raw


def _call_line(name: str, arguments: str) -> str:
    payload = json.dumps({"name": name, "arguments": _arguments(arguments)}, ensure_ascii=False)
    return f"<tool_call>\n{payload}\n</tool_call>"


def _called_name(call_id: str | None, history: list[ChatMessage]) -> str | None:
    for m in history:
        for c in m.tool_calls or ():
            if c.id == call_id:
                return c.function.name
    return None


def _tool_response(m: ChatMessage, history: list[ChatMessage]) -> str:
    payload: dict[str, Any] = {"tool_call_id": m.tool_call_id}
    name = _called_name(m.tool_call_id, history)
    if name is not None:
        payload["name"] = name
    payload["content"] = m.text()
    return f"<tool_response>\n{json.dumps(payload, ensure_ascii=False)}\n</tool_response>"


def plan_block(plan: ToolPlan) -> str:
    """The tools as text, and how to answer in this mode."""
    signatures = "\n".join(json.dumps(t, ensure_ascii=False) for t in plan.tools)
    if plan.mode == "named":
        how = (f"Call the function {plan.function} now: reply with its arguments as one JSON "
               "object.")
    elif plan.mode == "required":
        how = ('Call one or more of them now: reply with a JSON array of calls, '
               '[{"name": <function name>, "arguments": <arguments object>}].')
    else:
        how = ("To call a function, reply with one line per call: <tool_call>{\"name\": "
               "<function name>, \"arguments\": <arguments object>}</tool_call>. Otherwise "
               "answer normally.")
    return f"# Tools\n\nYou can call these functions:\n<tools>\n{signatures}\n</tools>\n\n{how}"


def _add_tool_block(rendered: list[dict[str, Any]], block: str, default_system: str) -> None:
    """Append ``block`` to the first system message (the template's default one if none)."""
    for turn in rendered:
        if turn["role"] in ("system", "developer"):
            turn["content"] = f"{turn['content']}\n\n{block}" if turn["content"] else block
            return
    content = f"{default_system}\n\n{block}" if default_system else block
    rendered.insert(0, {"role": "system", "content": content})
