"""A typed fake engine for the fast tier: deterministic, no model, same interface."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

from server.engine.types import (
    EngineStats,
    GenerationDelta,
    GenerationRequest,
    ModelCard,
    TokenLogprob,
)
from server.errors import ModelNotFoundError

VOCAB = ["\n", *(chr(c) for c in range(32, 127))]


class CharRenderer:
    """One token per printable ASCII character; a ChatML-like template with a default system."""

    default_system_prompt = "You are a fake assistant."

    def render_chat(self, messages: Sequence[dict[str, str]], add_generation_prompt: bool) -> str:
        msgs = list(messages)
        if not msgs or msgs[0]["role"] != "system":
            msgs.insert(0, {"role": "system", "content": self.default_system_prompt})
        text = "".join(f"<{m['role']}>{m['content']}</>" for m in msgs)
        return text + ("<assistant>" if add_generation_prompt else "")

    def encode(self, text: str) -> list[int]:
        return [VOCAB.index(c) if c in VOCAB else 0 for c in text]

    def decode(self, ids: Sequence[int]) -> str:
        return "".join(VOCAB[i] for i in ids)


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
                    )
                ]
            if not text:
                yield [GenerationDelta(index=k, text="", token_ids=(), finish_reason="stop")]

    def _logprobs(self, ch: str, top: int | None) -> tuple[TokenLogprob, ...] | None:
        if top is None:
            return None
        alts = tuple((c, -1.0 - i, tuple(c.encode())) for i, c in enumerate("abcdefghij"[:top]))
        return (TokenLogprob(ch, -0.5, tuple(ch.encode()), alts),)

    async def abort(self, request_id: str) -> None:
        self.aborted.append(request_id)

    def stats(self) -> EngineStats:
        return EngineStats(running=0, waiting=0)
