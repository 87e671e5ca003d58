"""``tool_choice: auto`` output -> OpenAI tool calls, with one of vLLM's tool parsers.

A parser is named by the ``ALIGNSERVE_TOOL_PARSER`` setting (``hermes``, ``llama3_json``,
``mistral``, ...: vLLM's registry) and must match how the served model family writes tool calls.
It is used only for ``auto``; ``required`` and a named function are decoded under a grammar and
parsed by the protocol layer (server/api/tools.py), whatever the model.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

logger = logging.getLogger(__name__)


def known_tool_parsers() -> list[str]:
    from vllm.tool_parsers import ToolParserManager

    return ToolParserManager.list_registered()


def check_tool_parser(name: str | None) -> None:
    """Fail at start, not on the first request, on a parser name vLLM does not know."""
    if name is not None and name not in known_tool_parsers():
        raise ValueError(
            f"unknown tool parser {name!r}; vLLM's are: {', '.join(known_tool_parsers())}"
        )


class VLLMToolCallParser:
    """One choice's parser (streaming keeps state between deltas)."""

    def __init__(self, name: str, tokenizer: Any, tools: Sequence[Mapping[str, Any]]):
        from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest
        from vllm.tool_parsers import ToolParserManager

        # vLLM's parsers read the tools (and the choice) from vLLM's own request model.
        self._request = ChatCompletionRequest.model_validate(
            {"model": "-", "messages": [], "tools": list(tools), "tool_choice": "auto"}
        )
        parser_cls = ToolParserManager.get_tool_parser(name)
        self._parser = parser_cls(tokenizer, list(self._request.tools or ()))

    def extract(self, text: str) -> tuple[str | None, list[dict[str, Any]]]:
        """(content, tool calls as OpenAI dicts) of a whole output."""
        info = self._parser.extract_tool_calls(text, self._request)
        if not info.tools_called:
            return text, []
        calls = [c.model_dump(include={"id", "type", "function"}) for c in info.tool_calls]
        return info.content, calls

    def extract_streaming(
        self,
        previous_text: str,
        current_text: str,
        delta_text: str,
        previous_ids: Sequence[int],
        current_ids: Sequence[int],
        delta_ids: Sequence[int],
    ) -> dict[str, Any] | None:
        """The OpenAI ``delta`` for this step (``content`` and/or ``tool_calls``), or None."""
        delta = self._parser.extract_tool_calls_streaming(
            previous_text,
            current_text,
            delta_text,
            previous_ids,
            current_ids,
            delta_ids,
            self._request,
        )
        if delta is None:
            return None
        out: dict[str, Any] = {}
        if delta.content:
            out["content"] = delta.content
        if delta.tool_calls:
            out["tool_calls"] = [c.model_dump(exclude_none=True) for c in delta.tool_calls]
        return out or None
