"""Engine side of function calling: vLLM's own tool parser behind our ``auto`` interface, and the
renderer handing ``tools`` to templates that read them. A tiny character tokenizer built here;
no downloads."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pytest
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from server.engine.renderer import HFChatRenderer
from server.engine.tool_parsing import VLLMToolCallParser, check_tool_parser

TOOLS = [{"type": "function", "function": {
    "name": "get_weather",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]
ANSWER = 'Sure. <tool_call>{"name": "get_weather", "arguments": {"city": "Rome"}}</tool_call>'


@pytest.fixture(scope="module")
def tokenizer() -> PreTrainedTokenizerFast:
    vocab = {"[UNK]": 0, **{chr(c): c - 31 for c in range(32, 127)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Split("", "isolated")  # one token per character
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]")


def test_hermes_parser_whole_output(tokenizer: PreTrainedTokenizerFast) -> None:
    content, calls = VLLMToolCallParser("hermes", tokenizer, TOOLS).extract(ANSWER)
    assert content == "Sure. "
    (call,) = calls
    assert set(call) == {"id", "type", "function"} and call["type"] == "function"
    assert call["function"] == {"name": "get_weather", "arguments": '{"city": "Rome"}'}
    assert VLLMToolCallParser("hermes", tokenizer, TOOLS).extract("Hi.") == ("Hi.", [])


def test_hermes_parser_streams_openai_deltas(tokenizer: PreTrainedTokenizerFast) -> None:
    parser = VLLMToolCallParser("hermes", tokenizer, TOOLS)
    text, ids, deltas = "", [], []
    for start in range(0, len(ANSWER), 3):
        piece = ANSWER[start : start + 3]
        new_ids = tokenizer.encode(piece)
        delta = parser.extract_streaming(text, text + piece, piece, ids, ids + new_ids, new_ids)
        if delta is not None:
            deltas.append(delta)
        text, ids = text + piece, ids + new_ids
    assert "".join(d.get("content", "") for d in deltas) == "Sure. "
    calls = [c for d in deltas for c in d.get("tool_calls", [])]
    assert calls[0]["index"] == 0 and calls[0]["type"] == "function" and calls[0]["id"]
    assert calls[0]["function"]["name"] == "get_weather"
    assert "".join(c["function"].get("arguments", "") for c in calls) == '{"city": "Rome"}'


def test_unknown_parser_fails_at_start() -> None:
    check_tool_parser(None)
    check_tool_parser("hermes")
    with pytest.raises(ValueError, match=r"unknown tool parser 'nope'.*hermes"):
        check_tool_parser("nope")


class _TemplateSpy:
    """A tokenizer whose template reads ``tools`` (as HF tool-use templates do)."""

    chat_template = "{% if tools %}...{% endif %}"
    eos_token_id = 0

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []

    def apply_chat_template(self, messages: Sequence[Mapping[str, Any]], **kw: Any) -> str:
        self.calls.append({"messages": messages, **kw})
        return "".join(str(m["content"]) for m in messages)

    def __len__(self) -> int:
        return 50


def test_renderer_passes_tools_to_templates_that_read_them() -> None:
    spy = _TemplateSpy()
    renderer = HFChatRenderer(spy)
    assert renderer.supports_tools and renderer.vocab_size == 50
    renderer.render_chat([{"role": "user", "content": "hi"}], True, TOOLS)
    assert spy.calls[-1]["tools"] == TOOLS
    renderer.render_chat([{"role": "user", "content": "hi"}], True)
    assert "tools" not in spy.calls[-1]  # plain requests render exactly as before
