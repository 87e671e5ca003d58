"""OpenAI response bodies and stream chunks, built as plain dicts in OpenAI's field order."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from server.engine.types import GenerationDelta, TokenLogprob


def sse(payload: dict[str, Any] | str) -> str:
    data = payload if isinstance(payload, str) else json.dumps(payload, separators=(",", ":"))
    return f"data: {data}\n\n"


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def chat_logprobs(items: tuple[TokenLogprob, ...]) -> dict[str, Any]:
    return {
        "content": [
            {
                "token": lp.token,
                "logprob": lp.logprob,
                "bytes": list(lp.token_bytes),
                "top_logprobs": [
                    {"token": t, "logprob": v, "bytes": list(b)} for t, v, b in lp.top
                ],
            }
            for lp in items
        ],
        "refusal": None,
    }


# One echoed prompt token: its text, its log-probability and top alternatives (None for the
# first token, which nothing precedes).
PromptEntry = tuple[str, float | None, dict[str, float] | None]


def prompt_entries(
    prompt_ids: Sequence[int],
    logprobs: Sequence[TokenLogprob | None],
    decode: Any,
) -> list[PromptEntry]:
    """The prompt's tokens with their log-probabilities, as OpenAI's ``echo`` reports them."""
    entries: list[PromptEntry] = []
    for token_id, lp in zip(prompt_ids, logprobs, strict=False):
        if lp is None:
            entries.append((decode([token_id]), None, None))
        else:
            entries.append((lp.token, lp.logprob, {t: v for t, v, _ in lp.top}))
    return entries


def completion_logprobs(
    items: tuple[TokenLogprob, ...], offset: int, prompt: Sequence[PromptEntry] = ()
) -> dict[str, Any]:
    """OpenAI's legacy logprobs object: ``prompt`` (echo) entries first, then the output's."""
    rows: list[PromptEntry] = [
        *prompt,
        *((lp.token, lp.logprob, {t: v for t, v, _ in lp.top}) for lp in items),
    ]
    offsets, position = [], offset
    for token, _, _ in rows:
        offsets.append(position)
        position += len(token)
    return {
        "tokens": [token for token, _, _ in rows],
        "token_logprobs": [value for _, value, _ in rows],
        "top_logprobs": [top for _, _, top in rows],
        "text_offset": offsets,
    }


@dataclass
class ChoiceState:
    """Accumulates one choice's deltas (non-streaming responses and usage counting)."""

    text: list[str] = field(default_factory=list)
    tokens: int = 0
    logprobs: list[TokenLogprob] = field(default_factory=list)
    finish_reason: str | None = None
    text_len: int = 0
    rewards: list[float] | None = None  # Best-of-N: every sample's reward, this one is the max
    prompt_logprobs: list[TokenLogprob | None] = field(default_factory=list)  # echo
    # Tool requests: the message's content and calls read from the output (None: plain text).
    tool_calls: list[dict[str, Any]] | None = None
    tool_content: str | None = None

    def add(self, delta: GenerationDelta) -> None:
        self.text.append(delta.text)
        self.text_len += len(delta.text)
        self.tokens += len(delta.token_ids)
        if delta.logprobs:
            self.logprobs.extend(delta.logprobs)
        if delta.prompt_logprobs:
            self.prompt_logprobs.extend(delta.prompt_logprobs)
        if delta.finish_reason is not None:
            self.finish_reason = "stop" if delta.finish_reason == "abort" else delta.finish_reason


def chat_response(
    rid: str,
    created: int,
    model: str,
    fingerprint: str,
    choices: dict[int, ChoiceState],
    want_logprobs: bool,
    prompt_tokens: int,
) -> dict[str, Any]:
    return {
        "id": rid,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [
            {
                "index": i,
                "message": chat_message(c),
                "logprobs": chat_logprobs(tuple(c.logprobs)) if want_logprobs else None,
                "finish_reason": c.finish_reason,
                **({"best_of_n_rewards": c.rewards} if c.rewards is not None else {}),
            }
            for i, c in sorted(choices.items())
        ],
        "usage": usage(prompt_tokens, sum(c.tokens for c in choices.values())),
        "system_fingerprint": fingerprint,
    }


def chat_message(c: ChoiceState) -> dict[str, Any]:
    if c.tool_calls is None:
        return {"role": "assistant", "content": "".join(c.text), "refusal": None}
    message: dict[str, Any] = {"role": "assistant", "content": c.tool_content, "refusal": None}
    if c.tool_calls:
        message["tool_calls"] = c.tool_calls
    return message


@dataclass(frozen=True)
class Echo:
    """What ``echo`` puts before a choice's output: the prompt, and its entries with logprobs."""

    text: str
    entries: tuple[PromptEntry, ...] = ()


def completion_response(
    rid: str,
    created: int,
    model: str,
    fingerprint: str,
    choices: dict[int, ChoiceState],
    want_logprobs: bool,
    prompt_tokens: int,
    echoes: dict[int, Echo] | None = None,
) -> dict[str, Any]:
    def logprobs(i: int, c: ChoiceState) -> dict[str, Any] | None:
        if not want_logprobs:
            return None
        echo = (echoes or {}).get(i)
        prompt = echo.entries if echo is not None else ()
        return completion_logprobs(tuple(c.logprobs), 0, prompt)

    return {
        "id": rid,
        "object": "text_completion",
        "created": created,
        "model": model,
        "choices": [
            {
                "text": ((echoes or {})[i].text if echoes else "") + "".join(c.text),
                "index": i,
                "logprobs": logprobs(i, c),
                "finish_reason": c.finish_reason,
            }
            for i, c in sorted(choices.items())
        ],
        "usage": usage(prompt_tokens, sum(c.tokens for c in choices.values())),
        "system_fingerprint": fingerprint,
    }


def chat_chunk(
    rid: str,
    created: int,
    model: str,
    fingerprint: str,
    index: int,
    delta: dict[str, Any],
    logprobs: dict[str, Any] | None,
    finish_reason: str | None,
    with_usage: bool,
) -> dict[str, Any]:
    chunk: dict[str, Any] = {
        "id": rid,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "system_fingerprint": fingerprint,
        "choices": [
            {"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish_reason}
        ],
    }
    if with_usage:
        chunk["usage"] = None
    return chunk


def completion_chunk(
    rid: str,
    created: int,
    model: str,
    fingerprint: str,
    index: int,
    text: str,
    logprobs: dict[str, Any] | None,
    finish_reason: str | None,
    with_usage: bool,
) -> dict[str, Any]:
    chunk: dict[str, Any] = {
        "id": rid,
        "object": "text_completion",
        "created": created,
        "model": model,
        "system_fingerprint": fingerprint,
        "choices": [
            {"text": text, "index": index, "logprobs": logprobs, "finish_reason": finish_reason}
        ],
    }
    if with_usage:
        chunk["usage"] = None
    return chunk


def usage_chunk(
    rid: str,
    created: int,
    model: str,
    fingerprint: str,
    obj: str,
    prompt_tokens: int,
    completion_tokens: int,
) -> dict[str, Any]:
    return {
        "id": rid,
        "object": obj,
        "created": created,
        "model": model,
        "system_fingerprint": fingerprint,
        "choices": [],
        "usage": usage(prompt_tokens, completion_tokens),
    }
