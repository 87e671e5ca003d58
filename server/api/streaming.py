"""Server-sent events in OpenAI's chunk order.

Chat: a role delta per choice, content deltas, a finish_reason chunk per choice, an optional
usage chunk, then ``data: [DONE]``. Completions: text chunks, finish chunks, usage, [DONE].
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from server.api import responses as R
from server.engine.types import GenerationDelta

if TYPE_CHECKING:
    from server.api.generation import Prepared


async def _chain(
    first: tuple[int, GenerationDelta] | None, rest: AsyncIterator[tuple[int, GenerationDelta]]
) -> AsyncIterator[tuple[int, GenerationDelta]]:
    if first is not None:
        yield first
        async for item in rest:
            yield item


async def stream_events(
    prepared: Prepared,
    first: tuple[int, GenerationDelta] | None,
    rest: AsyncIterator[tuple[int, GenerationDelta]],
    fp: str,
    counter: dict[str, int],
) -> AsyncIterator[str]:
    created = int(time.time())
    rid, model = prepared.response_id, prepared.model
    usage_on = prepared.include_usage
    chat = prepared.kind == "chat"
    offsets: dict[int, int] = {}
    total = prepared.n * len(prepared.requests)
    if chat:
        for index in range(total):
            yield R.sse(
                R.chat_chunk(
                    rid,
                    created,
                    model,
                    fp,
                    index,
                    {"role": "assistant", "content": ""},
                    None,
                    None,
                    usage_on,
                )
            )
    async for index, delta in _chain(first, rest):
        counter["tokens"] += len(delta.token_ids)
        if delta.text or delta.logprobs:
            if chat:
                lp = (
                    R.chat_logprobs(delta.logprobs)
                    if prepared.want_logprobs and delta.logprobs
                    else None
                )
                yield R.sse(
                    R.chat_chunk(
                        rid, created, model, fp, index, {"content": delta.text}, lp, None, usage_on
                    )
                )
            else:
                offset = offsets.get(index, 0)
                lp = (
                    R.completion_logprobs(delta.logprobs, offset)
                    if prepared.want_logprobs and delta.logprobs
                    else None
                )
                offsets[index] = offset + len(delta.text)
                yield R.sse(
                    R.completion_chunk(
                        rid, created, model, fp, index, delta.text, lp, None, usage_on
                    )
                )
        if delta.finish_reason is not None:
            reason = "stop" if delta.finish_reason == "abort" else delta.finish_reason
            if chat:
                yield R.sse(
                    R.chat_chunk(rid, created, model, fp, index, {}, None, reason, usage_on)
                )
            else:
                yield R.sse(
                    R.completion_chunk(rid, created, model, fp, index, "", None, reason, usage_on)
                )
    if usage_on:
        obj = "chat.completion.chunk" if chat else "text_completion"
        yield R.sse(
            R.usage_chunk(rid, created, model, fp, obj, prepared.prompt_tokens, counter["tokens"])
        )
    yield R.sse("[DONE]")
