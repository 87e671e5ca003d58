"""Conversions between our engine types and vLLM's (kept apart so vllm_engine stays small)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from vllm import SamplingParams
from vllm.sampling_params import RequestOutputKind

from server.engine.types import FinishReason, SamplingOptions, TokenLogprob

# JSON has no -inf; OpenAI clients expect a large negative number for impossible tokens.
MIN_LOGPROB = -9999.0


def sampling_params(
    options: SamplingOptions,
    *,
    n: int | None = None,
    seed: int | None = None,
    with_stop: bool = True,
    logprobs: bool = True,
    detokenize: bool = True,
    extra_args: dict[str, Any] | None = None,
) -> SamplingParams:
    return SamplingParams(
        n=options.n if n is None else n,
        temperature=options.temperature,
        top_p=options.top_p,
        seed=options.seed if seed is None else seed,
        max_tokens=options.max_tokens,
        stop=list(options.stop) if with_stop else None,
        logprobs=options.logprobs if logprobs else None,
        presence_penalty=options.presence_penalty,
        frequency_penalty=options.frequency_penalty,
        detokenize=detokenize,
        output_kind=RequestOutputKind.DELTA,
        extra_args=extra_args,
    )


def finish_reason(raw: str | None) -> FinishReason | None:
    if raw is None:
        return None
    if raw in ("stop", "length", "abort"):
        return raw  # type: ignore[return-value]
    return "stop"


def _clean(value: float) -> float:
    return value if value > MIN_LOGPROB else MIN_LOGPROB


def vllm_logprobs(
    entries: Sequence[Mapping[int, Any]] | None,
    token_ids: Sequence[int],
    top_k: int,
    decode: Callable[[int], str],
) -> tuple[TokenLogprob, ...] | None:
    """vLLM's per-token {token_id: Logprob} maps -> our TokenLogprob (chosen + top_k)."""
    if entries is None:
        return None
    result = []
    for token_id, entry in zip(token_ids, entries, strict=False):
        chosen = entry[token_id]
        chosen_text = chosen.decoded_token if chosen.decoded_token is not None else decode(token_id)
        ranked = sorted(
            ((tid, lp) for tid, lp in entry.items() if lp.rank is not None and lp.rank <= top_k),
            key=lambda item: item[1].rank,
        )
        top = tuple(
            (
                text := (lp.decoded_token if lp.decoded_token is not None else decode(tid)),
                _clean(lp.logprob),
                tuple(text.encode()),
            )
            for tid, lp in ranked
        )
        result.append(
            TokenLogprob(chosen_text, _clean(chosen.logprob), tuple(chosen_text.encode()), top)
        )
    return tuple(result)


def row_logprob(
    row: torch.Tensor, token_id: int, top_k: int, decode: Callable[[int], str]
) -> TokenLogprob:
    """A TokenLogprob from a full (V,) log-probability row (the aligned distribution)."""
    text = decode(token_id)
    top: tuple[tuple[str, float, tuple[int, ...]], ...] = ()
    if top_k > 0:
        values, ids = torch.topk(row, top_k)
        top = tuple(
            (t := decode(int(i)), _clean(float(v)), tuple(t.encode()))
            for v, i in zip(values.tolist(), ids.tolist(), strict=True)
        )
    return TokenLogprob(text, _clean(float(row[token_id])), tuple(text.encode()), top)
