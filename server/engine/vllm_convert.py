"""Conversions between our engine types and vLLM's (no vLLM type leaves the engine package)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from vllm import SamplingParams
from vllm.exceptions import VLLMValidationError
from vllm.sampling_params import RequestOutputKind, StructuredOutputsParams

from server.engine.deployments import ModelVersion
from server.engine.types import (
    FinishReason,
    GenerationDelta,
    SamplingOptions,
    StructuredOutput,
    TokenLogprob,
)
from server.errors import InvalidRequestError

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
    final_only: bool = False,
    extra_args: dict[str, Any] | None = None,
) -> SamplingParams:
    """vLLM's parameters for ``options``.

    The grammar (``structured``) and ``logit_bias`` are always carried, also by the partner of a
    guidance group (``with_stop=False``): both members must mask and bias their rows alike for the
    combined row to respect them (docs/linear_alignment.md, "With the OpenAI surface").
    """
    try:
        return SamplingParams(
            n=options.n if n is None else n,
            temperature=options.temperature,
            top_p=options.top_p,
            seed=options.seed if seed is None else seed,
            max_tokens=options.max_tokens,
            stop=list(options.stop) if with_stop else None,
            logprobs=options.logprobs if logprobs else None,
            prompt_logprobs=options.prompt_logprobs if logprobs else None,
            presence_penalty=options.presence_penalty,
            frequency_penalty=options.frequency_penalty,
            detokenize=detokenize,
            output_kind=RequestOutputKind.FINAL_ONLY if final_only else RequestOutputKind.DELTA,
            extra_args=extra_args,
            structured_outputs=structured_outputs(options.structured),
            logit_bias=dict(options.logit_bias) or None,
        )
    except (ValueError, VLLMValidationError) as exc:  # "n must be 1 when ... greedy"
        raise InvalidRequestError(str(exc), param=getattr(exc, "parameter", None)) from None


def structured_outputs(spec: StructuredOutput | None) -> StructuredOutputsParams | None:
    """Our grammar spec -> vLLM's; the backend is vLLM's choice ("auto": xgrammar on this
    install, guidance for schema features xgrammar lacks)."""
    if spec is None:
        return None
    if spec.kind == "json_object":
        return StructuredOutputsParams(json_object=True)
    return StructuredOutputsParams(json=spec.json_schema)


def lora_request(version: ModelVersion) -> Any:
    """vLLM's handle on an adapter version (None for the base and full-weight versions)."""
    if version.mode != "adapter":
        return None
    from vllm.lora.request import LoRARequest

    assert version.lora_id is not None
    return LoRARequest(version.label, version.lora_id, str(version.path))


def plain_deltas(
    out: Any, top_k: int | None, label: str, decode: Callable[[Sequence[int]], str]
) -> list[GenerationDelta]:
    """One vLLM ``RequestOutput`` (delta kind) -> a delta per choice that advanced."""
    result = []
    prompt_lps = None
    if getattr(out, "prompt_logprobs", None):  # delivered once, with the first output
        # Requested only with ``echo``, where it takes the completion's top-k.
        prompt_lps = prompt_logprobs(out.prompt_logprobs, out.prompt_token_ids, top_k or 0, decode)
    for co in out.outputs:
        logprobs = None
        if top_k is not None:
            logprobs = vllm_logprobs(co.logprobs, co.token_ids, top_k, lambda t: decode([t]))
        result.append(
            GenerationDelta(
                index=co.index,
                text=co.text,
                token_ids=tuple(co.token_ids),
                logprobs=logprobs,
                finish_reason=finish_reason(co.finish_reason),
                stop_reason=co.stop_reason,
                model_version=label,
                prompt_logprobs=prompt_lps,
            )
        )
    return result


def prompt_logprobs(
    entries: Sequence[Mapping[int, Any] | None],
    token_ids: Sequence[int],
    top_k: int,
    decode: Callable[[Sequence[int]], str],
) -> tuple[TokenLogprob | None, ...]:
    """vLLM's prompt log-probabilities (None for the first token: nothing precedes it) -> ours."""
    result: list[TokenLogprob | None] = []
    for token_id, entry in zip(token_ids, entries, strict=False):
        if entry is None:
            result.append(None)
            continue
        converted = vllm_logprobs([entry], [token_id], top_k, lambda t: decode([t]))
        result.append(converted[0] if converted else None)
    return tuple(result)


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
