"""A typed fake engine for the fast tier: deterministic, no model, same interface."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from server.engine.types import (
    EngineStats,
    GenerationDelta,
    GenerationRequest,
    ModelCard,
    TokenLogprob,
)
from server.engine.watchdog import EngineHealth, Watchdog
from server.errors import ModelNotFoundError

VOCAB = ["\n", *(chr(c) for c in range(32, 127))]


class CharRenderer:
    """One token per printable ASCII character; a ChatML-like template with a default system.

    ``supports_tools`` switches it to a tool-aware template that prints ``tools=`` and each
    message's tool fields (to check what reaches a tool-use template)."""

    default_system_prompt = "You are a fake assistant."
    supports_tools = False
    vocab_size = len(VOCAB)

    def render_chat(
        self,
        messages: Sequence[Mapping[str, Any]],
        add_generation_prompt: bool,
        tools: Sequence[Mapping[str, Any]] | None = None,
        continue_final_message: bool = False,
    ) -> str:
        msgs = [dict(m) for m in messages]
        if not msgs or msgs[0]["role"] != "system":
            msgs.insert(0, {"role": "system", "content": self.default_system_prompt})
        text = "".join(f"<{m['role']}>{m['content']}{self._tool_fields(m)}</>" for m in msgs)
        if continue_final_message:
            text = text.removesuffix("</>")
        if tools:
            text = f"<tools>{json.dumps(list(tools))}</tools>{text}"
        return text + ("<assistant>" if add_generation_prompt else "")

    def _tool_fields(self, m: Mapping[str, Any]) -> str:
        extra = {k: m[k] for k in ("tool_calls", "tool_call_id", "name") if k in m}
        return json.dumps(extra) if extra else ""

    def tool_parser(self, name: str, tools: Sequence[Mapping[str, Any]]) -> FakeToolParser:
        return FakeToolParser()

    def encode(self, text: str) -> list[int]:
        return [VOCAB.index(c) if c in VOCAB else 0 for c in text]

    def decode(self, ids: Sequence[int]) -> str:
        return "".join(VOCAB[i] for i in ids)


class FakeToolParser:
    """Reads ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>`` (hermes-like)."""

    _CALL = re.compile(r"<tool_call>(.*?)</tool_call>", re.DOTALL)

    def __init__(self) -> None:
        self._sent_calls = 0

    def extract(self, text: str) -> tuple[str | None, list[dict[str, Any]]]:
        found = [json.loads(m) for m in self._CALL.findall(text)]
        if not found:
            return text, []
        calls = [
            {"id": f"call_{i}", "type": "function",
             "function": {"name": c["name"], "arguments": json.dumps(c["arguments"])}}
            for i, c in enumerate(found)
        ]
        return text[: text.index("<tool_call>")] or None, calls

    def extract_streaming(
        self,
        previous_text: str,
        current_text: str,
        delta_text: str,
        previous_ids: Sequence[int],
        current_ids: Sequence[int],
        delta_ids: Sequence[int],
    ) -> dict[str, Any] | None:
        """Whole calls once their closing tag arrived; text before the first tag as content."""
        _, calls = self.extract(current_text)
        if len(calls) > self._sent_calls:
            new = [{"index": i, **c} for i, c in enumerate(calls) if i >= self._sent_calls]
            self._sent_calls = len(calls)
            return {"tool_calls": new}
        if "<" not in current_text and delta_text:
            return {"content": delta_text}
        return None


class FakeEngine:
    """Answers every request with ``reply`` (cut at max_tokens and stop strings)."""

    def __init__(self, reply: str = "Hello there, friend!", max_model_len: int = 256):
        self.reply = reply
        self._max_model_len = max_model_len
        self._renderer = CharRenderer()
        self.ready_flag = True
        self.requests: list[GenerationRequest] = []
        self.aborted: list[str] = []
        self.delay = 0.0
        self.replies: list[str] = []  # per-choice replies (choice k gets replies[k])
        # Health: requests the fake engine holds (set by tests to simulate a busy engine), the
        # real watchdog over them, and the reason of a dead engine core (None: alive).
        self.pending = 0
        self.watchdog = Watchdog(60.0)
        self.dead_reason: str | None = None

    @property
    def ready(self) -> bool:
        return self.ready_flag

    @property
    def max_model_len(self) -> int:
        return self._max_model_len

    @property
    def model_path(self) -> Path | None:
        return None

    @property
    def max_lora_rank(self) -> int:
        return 0

    @property
    def deployer(self) -> None:
        return None

    @property
    def renderer(self) -> CharRenderer:
        return self._renderer

    async def start(self) -> None:
        return None

    def open(self) -> None:
        return None

    async def shutdown(self) -> None:
        return None

    def model_cards(self) -> list[ModelCard]:
        return [ModelCard(id="fake-model", root="/fake", max_model_len=self._max_model_len)]

    def resolve_model(self, name: str) -> str:
        if name != "fake-model":
            raise ModelNotFoundError(f"The model '{name}' does not exist.", param="model")
        return name

    async def generate(self, request: GenerationRequest) -> AsyncIterator[list[GenerationDelta]]:
        self.requests.append(request)
        opts = request.sampling
        for k in range(opts.n):
            reply = self.replies[k % len(self.replies)] if self.replies else self.reply
            text = reply[: opts.max_tokens]
            finish = "length" if len(reply) > opts.max_tokens else "stop"
            for stop in opts.stop:
                cut = text.find(stop)
                if cut >= 0:
                    text, finish = text[:cut], "stop"
            prompt_lps = self._prompt_logprobs(request)
            for i, ch in enumerate(text):
                if self.delay:
                    await asyncio.sleep(self.delay)
                last = i == len(text) - 1
                yield [
                    GenerationDelta(
                        index=k,
                        text=ch,
                        token_ids=(VOCAB.index(ch),),
                        logprobs=self._logprobs(ch, opts.logprobs),
                        finish_reason=finish if last else None,  # type: ignore[arg-type]
                        prompt_logprobs=prompt_lps if i == 0 else None,
                    )
                ]
            if not text:
                yield [GenerationDelta(index=k, text="", token_ids=(), finish_reason="stop")]

    def _logprobs(self, ch: str, top: int | None) -> tuple[TokenLogprob, ...] | None:
        if top is None:
            return None
        alts = tuple((c, -1.0 - i, tuple(c.encode())) for i, c in enumerate("abcdefghij"[:top]))
        return (TokenLogprob(ch, -0.5, tuple(ch.encode()), alts),)

    def _prompt_logprobs(
        self, request: GenerationRequest
    ) -> tuple[TokenLogprob | None, ...] | None:
        """Prompt token j gets log-probability -j/10 (the first: None, as vLLM)."""
        if request.sampling.prompt_logprobs is None:
            return None
        ids = request.prompt_ids
        return (None, *(TokenLogprob(VOCAB[t], -j / 10, tuple(VOCAB[t].encode()))
                        for j, t in enumerate(ids) if j > 0))

    async def abort(self, request_id: str) -> None:
        self.aborted.append(request_id)

    def stats(self) -> EngineStats:
        return EngineStats(running=0, waiting=0)

    def health(self) -> EngineHealth:
        if not self.ready_flag:
            return EngineHealth("starting", "the model is still loading")
        if self.dead_reason is not None:
            return self.watchdog.dead(self.dead_reason, self.pending)
        return self.watchdog.check(self.pending)
