"""Server-sent events in OpenAI's chunk order.

Chat: a role delta per choice, content deltas (or, for tool requests, ``tool_calls`` deltas:
``index``/``id``/``type``/``function.name`` once per call, then ``function.arguments`` pieces), a
finish_reason chunk per choice, an optional usage chunk, then ``data: [DONE]``. Completions: the
echoed prompt first (``echo``), text chunks, finish chunks, usage, [DONE].
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from server.api import responses as R
from server.api.tool_output import ToolCallStream
from server.engine.types import GenerationDelta, TokenLogprob

if TYPE_CHECKING:
    from server.api.generation import Prepared


async def _chain(
    first: tuple[int, GenerationDelta] | None, rest: AsyncIterator[tuple[int, GenerationDelta]]
) -> AsyncIterator[tuple[int, GenerationDelta]]:
    if first is not None:
        yield first
        async for item in rest:
            yield item


@dataclass
class _Chunks:
    """Builds the chunks of one response (every choice shares id, time, model, fingerprint)."""

    prepared: Prepared
    fp: str
    decode: Callable[[Sequence[int]], str]
    created: int = field(default_factory=lambda: int(time.time()))
    offsets: dict[int, int] = field(default_factory=dict)  # completions: text sent per choice
    tools: dict[int, ToolCallStream] = field(default_factory=dict)
    echoed: set[int] = field(default_factory=set)
    prompt_lps: dict[int, list[TokenLogprob | None]] = field(default_factory=dict)

    def chat(self, index: int, delta: dict[str, Any], lp: Any = None, reason: Any = None) -> str:
        p = self.prepared
        return R.sse(R.chat_chunk(p.response_id, self.created, p.model, self.fp, index, delta, lp,
                                  reason, p.include_usage))

    def text(self, index: int, text: str, lp: Any = None, reason: Any = None) -> str:
        p = self.prepared
        return R.sse(R.completion_chunk(p.response_id, self.created, p.model, self.fp, index,
                                        text, lp, reason, p.include_usage))

    def chat_delta(self, index: int, delta: GenerationDelta) -> list[str]:
        p = self.prepared
        lp = R.chat_logprobs(delta.logprobs) if p.want_logprobs and delta.logprobs else None
        if p.tools is None:
            return [self.chat(index, {"content": delta.text}, lp)] if delta.text or lp else []
        stream = self.tools.get(index)
        if stream is None:
            stream = self.tools[index] = ToolCallStream(p.tools, p.parser())
        out = [self.chat(index, d, lp if k == 0 else None)
               for k, d in enumerate(stream.feed(delta.text, delta.token_ids))]
        if not out and lp is not None:  # keep every token's logprobs, even mid-call
            out.append(self.chat(index, {}, lp))
        return out

    def chat_finish(self, index: int, reason: str) -> str:
        stream = self.tools.get(index)
        if stream is not None and stream.called and reason == "stop":
            reason = "tool_calls"
        return self.chat(index, {}, None, reason)

    def completion_delta(self, index: int, delta: GenerationDelta) -> list[str]:
        p = self.prepared
        out = []
        if p.echo is not None and index not in self.echoed:
            if delta.prompt_logprobs:
                self.prompt_lps.setdefault(index, []).extend(delta.prompt_logprobs)
            if not delta.token_ids and delta.finish_reason is None:
                return []  # prompt log-probabilities may come in pieces before the first token
            out.append(self.echo(index))
        offset = self.offsets.get(index, 0)
        lp = None
        if p.want_logprobs and delta.logprobs:
            lp = R.completion_logprobs(delta.logprobs, offset)
        self.offsets[index] = offset + len(delta.text)
        if delta.text or lp:
            out.append(self.text(index, delta.text, lp))
        return out

    def echo(self, index: int) -> str:
        from server.api.generation import echo_of

        self.echoed.add(index)
        prompt = index // self.prepared.n
        logprobs = self.prompt_lps.get(index) or next(
            (v for k, v in self.prompt_lps.items() if k // self.prepared.n == prompt and v), []
        )
        echo = echo_of(self.prepared, prompt, logprobs, self.decode)
        lp = R.completion_logprobs((), 0, echo.entries) if self.prepared.want_logprobs else None
        self.offsets[index] = len(echo.text)
        return self.text(index, echo.text, lp)


async def stream_events(
    prepared: Prepared,
    first: tuple[int, GenerationDelta] | None,
    rest: AsyncIterator[tuple[int, GenerationDelta]],
    fp: str,
    counter: dict[str, int],
    decode: Callable[[Sequence[int]], str],
) -> AsyncIterator[str]:
    chunks = _Chunks(prepared, fp, decode)
    chat = prepared.kind == "chat"
    total = prepared.n * len(prepared.requests)
    if chat:
        for index in range(total):
            yield chunks.chat(index, {"role": "assistant", "content": ""})
    async for index, delta in _chain(first, rest):
        counter["tokens"] += len(delta.token_ids)
        events = chunks.chat_delta(index, delta) if chat else chunks.completion_delta(index, delta)
        for event in events:
            yield event
        if delta.finish_reason is not None:
            reason = "stop" if delta.finish_reason == "abort" else delta.finish_reason
            if chat:
                yield chunks.chat_finish(index, reason)
            else:
                if prepared.echo is not None and index not in chunks.echoed:
                    yield chunks.echo(index)
                yield chunks.text(index, "", None, reason)
    if prepared.include_usage:
        obj = "chat.completion.chunk" if chat else "text_completion"
        yield R.sse(
            R.usage_chunk(prepared.response_id, chunks.created, prepared.model, fp, obj,
                          prepared.prompt_tokens, counter["tokens"])
        )
    yield R.sse("[DONE]")
