"""What the engine thread does: admit, step, route outputs, restart broken pairs.

Every function here runs on the engine thread only (see vllm_engine.VLLMEngine._loop).
"""

from __future__ import annotations

import dataclasses
import logging
import random
from typing import TYPE_CHECKING, Any

from server.engine.engine_state import Job, Pair
from server.engine.pairing import pair_args
from server.engine.swap import lora_request, unload_if_idle
from server.engine.types import GenerationDelta, TokenLogprob
from server.engine.vllm_convert import finish_reason, row_logprob, sampling_params, vllm_logprobs
from server.errors import EngineError

if TYPE_CHECKING:
    from server.engine.vllm_engine import VLLMEngine

logger = logging.getLogger(__name__)


def submit(engine: VLLMEngine, job: Job) -> None:
    if job.request.allow_staged:  # a deployment's smoke test: the swap waits on it
        engine._pending.appendleft(job)
    else:
        engine._pending.append(job)
    admit(engine)


def admit(engine: VLLMEngine) -> None:
    """Start queued jobs while sequence slots remain.

    Admission is ours, not the scheduler's: vLLM would admit the visible half of a pair and
    leave its shadow waiting when only one slot is free, breaking the pair at its first token.
    """
    limit = engine.config.max_num_seqs
    while engine._pending and not engine._swaps:  # a pending full swap holds admission
        job = engine._pending[0]
        if engine._active_seqs and engine._active_seqs + job.seqs_needed > limit:
            return
        engine._pending.popleft()
        job.seqs = job.seqs_needed
        engine._active_seqs += job.seqs
        try:
            _start(engine, job)
        except Exception as exc:
            _finish_job(engine, job)
            job.stream.push(engine.as_service_error(exc))
            job.stream.close()


def _start(engine: VLLMEngine, job: Job) -> None:
    request = job.request
    version = engine.table.lookup(request.model, allow_staged=request.allow_staged)
    job.version = version
    job.version_label = engine.table.label_for(version)
    version.inflight += 1
    lora = lora_request(version) if version.mode == "adapter" else None
    if request.alignment is None:
        job.open_choices = 1
        engine._jobs[request.request_id] = job
        engine.llm.add_request(
            request.request_id,
            {"prompt_token_ids": list(request.prompt_ids)},
            sampling_params(request.sampling),
            lora_request=lora,
        )
        return
    job.open_choices = request.sampling.n
    base_seed = request.sampling.seed
    for index in range(request.sampling.n):
        # Both halves must draw the same sample, so an aligned pair is always seeded.
        seed = base_seed + index if base_seed is not None else random.getrandbits(62)
        _start_pair(engine, Pair(job, index, seed))


def _start_pair(engine: VLLMEngine, pair: Pair) -> None:
    request = pair.job.request
    alignment = request.alignment
    assert alignment is not None
    options = dataclasses.replace(
        request.sampling, max_tokens=request.sampling.max_tokens - len(pair.emitted)
    )
    base = f"{request.request_id}-{pair.index}-{pair.attempt}"
    pair.visible_rid, pair.shadow_rid = f"{base}-v", f"{base}-p"
    version = pair.job.version
    lora = lora_request(version) if version is not None and version.mode == "adapter" else None

    def extra(role: str) -> dict[str, Any]:
        return pair_args(
            engine.book.book_id,
            pair.pair_id,
            role,
            alignment.alpha,
            alignment.nucleus_top_p,
            alignment.nucleus_temperature,
            want_logprobs=role == "visible" and options.logprobs is not None,
        )

    visible = sampling_params(
        options, n=1, seed=pair.seed, logprobs=False, extra_args=extra("visible")
    )
    shadow = sampling_params(
        options,
        n=1,
        seed=pair.seed,
        with_stop=False,
        logprobs=False,
        detokenize=False,
        extra_args=extra("shadow"),
    )
    engine._pairs[pair.visible_rid] = pair
    engine._pairs[pair.shadow_rid] = pair
    engine.llm.add_request(
        pair.visible_rid,
        {"prompt_token_ids": [*request.prompt_ids, *pair.emitted]},
        visible,
        lora_request=lora,
    )
    engine.llm.add_request(
        pair.shadow_rid,
        {"prompt_token_ids": [*alignment.principled_prompt_ids, *pair.emitted]},
        shadow,
        lora_request=lora,
    )


def step_once(engine: VLLMEngine) -> None:
    outputs = engine.llm.step()
    book = engine.book
    deltas: dict[Job, list[GenerationDelta]] = {}
    for out in outputs:
        rid = out.request_id
        job = engine._jobs.get(rid)
        if job is not None:
            deltas.setdefault(job, []).extend(_plain_deltas(engine, job, out))
            if out.finished:
                del engine._jobs[rid]
                job.open_choices = 0
            continue
        pair = engine._pairs.get(rid)
        if pair is None or rid != pair.visible_rid or pair.pair_id in book.broken:
            continue
        deltas.setdefault(pair.job, []).append(_pair_delta(engine, pair, out))
        if out.finished:
            _end_pair(engine, pair)
    for pair_id, reason in list(book.broken.items()):
        pair = engine._pairs.get(pair_id)
        if pair is not None:
            _restart_pair(engine, pair, reason, deltas)
    book.broken.clear()
    book.logprob_rows.clear()
    for job, items in deltas.items():
        if items:
            if job.on_finish is not None:  # only a completion hook reads the count
                job.completion_tokens += sum(len(d.token_ids) for d in items)
            job.stream.push(items)
        if job.open_choices == 0 and not job.done:
            _finish_job(engine, job)
            job.stream.close()
    admit(engine)


def _plain_deltas(engine: VLLMEngine, job: Job, out: Any) -> list[GenerationDelta]:
    top_k = job.request.sampling.logprobs
    result = []
    for co in out.outputs:
        logprobs = None
        if top_k is not None:
            logprobs = vllm_logprobs(co.logprobs, co.token_ids, top_k, engine.decode_token)
        result.append(
            GenerationDelta(
                index=co.index,
                text=co.text,
                token_ids=tuple(co.token_ids),
                logprobs=logprobs,
                finish_reason=finish_reason(co.finish_reason),
                stop_reason=co.stop_reason,
                model_version=job.version_label,
            )
        )
    return result


def _pair_delta(engine: VLLMEngine, pair: Pair, out: Any) -> GenerationDelta:
    co = out.outputs[0]
    tokens = tuple(co.token_ids)
    pair.emitted.extend(tokens)
    top_k = pair.job.request.sampling.logprobs
    logprobs: tuple[TokenLogprob, ...] | None = None
    if top_k is not None:
        row = engine.book.logprob_rows.pop(pair.pair_id, None)
        if row is not None and len(tokens) == 1:
            logprobs = (row_logprob(row, tokens[0], top_k, engine.decode_token),)
        else:
            logprobs = ()
    return GenerationDelta(
        index=pair.index,
        text=co.text,
        token_ids=tokens,
        logprobs=logprobs,
        finish_reason=finish_reason(co.finish_reason),
        stop_reason=co.stop_reason,
        model_version=pair.job.version_label,
    )


def _end_pair(engine: VLLMEngine, pair: Pair) -> None:
    engine._pairs.pop(pair.visible_rid, None)
    if engine._pairs.pop(pair.shadow_rid, None) is not None:
        engine.llm.abort_request([pair.shadow_rid])
    pair.job.open_choices -= 1


def _restart_pair(
    engine: VLLMEngine, pair: Pair, reason: str, deltas: dict[Job, list[GenerationDelta]]
) -> None:
    """Drop the broken step's token and start the pair again after its last good token."""
    engine.llm.abort_request([pair.visible_rid, pair.shadow_rid])
    engine._pairs.pop(pair.visible_rid, None)
    engine._pairs.pop(pair.shadow_rid, None)
    engine.pair_restarts += 1
    logger.warning(
        "request %s choice %d: aligned pair lost lockstep (%s); restarting after %d tokens",
        pair.job.request.request_id,
        pair.index,
        reason,
        len(pair.emitted),
    )
    pair.attempt += 1
    if pair.attempt > engine.max_pair_restarts:
        _fail_job(engine, pair.job, EngineError("aligned decoding could not keep its pair in step"))
        return
    if len(pair.emitted) >= pair.job.request.sampling.max_tokens:
        deltas.setdefault(pair.job, []).append(
            GenerationDelta(
                index=pair.index,
                text="",
                token_ids=(),
                finish_reason="length",
                model_version=pair.job.version_label,
            )
        )
        pair.job.open_choices -= 1
        return
    _start_pair(engine, pair)


def abort_job(engine: VLLMEngine, job: Job) -> None:
    if job in engine._pending:
        engine._pending.remove(job)
        job.done = True
        _on_finish(job)
        return
    if job.done:
        return
    rids = [rid for rid, j in engine._jobs.items() if j is job]
    rids += [rid for rid, p in engine._pairs.items() if p.job is job]
    for rid in rids:
        engine._jobs.pop(rid, None)
        engine._pairs.pop(rid, None)
    if rids:
        engine.llm.abort_request(rids)
    _finish_job(engine, job)


def _fail_job(engine: VLLMEngine, job: Job, error: Exception) -> None:
    abort_job(engine, job)
    job.stream.push(error)
    job.stream.close()


def _finish_job(engine: VLLMEngine, job: Job) -> None:
    if not job.done:
        job.done = True
        engine._active_seqs -= job.seqs
        if job.version is not None:
            job.version.inflight -= 1
            unload_if_idle(engine, job.version)
        _on_finish(job)


def _on_finish(job: Job) -> None:
    """A job's completion hook (a deployment gate); its failure must not stop the engine."""
    if job.on_finish is None:
        return
    try:
        job.on_finish(job)
    except Exception:
        logger.exception("completion hook of %s failed", job.request.request_id)
