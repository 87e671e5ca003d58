"""Chat-template rendering and token counting on a Hugging Face tokenizer."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from server.engine.tool_parsing import VLLMToolCallParser

_SYSTEM_MARK = "\x00alignserve-system\x00"
_USER_MARK = "\x00alignserve-user\x00"


class HFChatRenderer:
    """Renders conversations exactly as the model's chat template does."""

    def __init__(self, tokenizer: Any):
        self._tokenizer = tokenizer
        self._default_system_prompt = _infer_default_system_prompt(self)
        self._supports_tools = _template_knows_tools(tokenizer)

    def render_chat(
        self,
        messages: Sequence[Mapping[str, Any]],
        add_generation_prompt: bool,
        tools: Sequence[Mapping[str, Any]] | None = None,
        continue_final_message: bool = False,
    ) -> str:
        # ``tools`` only reaches templates that read it (``supports_tools``); others are given
        # the tools as text by the protocol layer (server/api/tools.py).
        extra = {"tools": list(tools)} if tools else {}
        text = self._tokenizer.apply_chat_template(
            [dict(m) for m in messages],
            tokenize=False,
            add_generation_prompt=add_generation_prompt,
            continue_final_message=continue_final_message,
            **extra,
        )
        return str(text)

    def encode(self, text: str) -> list[int]:
        return list(self._tokenizer.encode(text, add_special_tokens=False))

    def decode(self, ids: Sequence[int]) -> str:
        return str(self._tokenizer.decode(list(ids)))

    @property
    def default_system_prompt(self) -> str:
        return self._default_system_prompt

    @property
    def supports_tools(self) -> bool:
        return self._supports_tools

    @property
    def vocab_size(self) -> int:
        return len(self._tokenizer)

    @property
    def eos_token_id(self) -> int | None:
        eos = self._tokenizer.eos_token_id
        return int(eos) if eos is not None else None

    def tool_parser(self, name: str, tools: Sequence[Mapping[str, Any]]) -> VLLMToolCallParser:
        """A fresh (per choice: streaming parsers keep state) parser of ``tool_choice: auto``
        output with vLLM's tool parser ``name``."""
        from server.engine.tool_parsing import VLLMToolCallParser

        return VLLMToolCallParser(name, self._tokenizer, tools)


def _template_knows_tools(tokenizer: Any) -> bool:
    """Whether the chat template reads ``tools`` (as Hugging Face's tool-use templates do)."""
    template = getattr(tokenizer, "chat_template", None)
    if isinstance(template, dict):  # named templates: the tool-use one counts
        return "tool_use" in template or any("tools" in str(t) for t in template.values())
    return isinstance(template, str) and "tools" in template


def _infer_default_system_prompt(renderer: HFChatRenderer) -> str:
    """The system message the template adds on its own, or '' if it adds none.

    Renders the same user turn with a marked system message and without one: if the template
    inserts a default, the unmarked rendering is the marked one with the marker replaced by it.
    """
    try:
        bare = renderer.render_chat([{"role": "user", "content": _USER_MARK}], False)
        marked = renderer.render_chat(
            [{"role": "system", "content": _SYSTEM_MARK}, {"role": "user", "content": _USER_MARK}],
            False,
        )
    except Exception:  # templates without a system role raise; then there is no default
        return ""
    if _SYSTEM_MARK not in marked:
        return ""
    prefix, suffix = marked.split(_SYSTEM_MARK, 1)
    if not bare.startswith(prefix) or not bare.endswith(suffix):
        return ""
    default = bare[len(prefix) : len(bare) - len(suffix)]
    return default if prefix + default + suffix == bare else ""
