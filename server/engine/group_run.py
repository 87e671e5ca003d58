"""Running the guided choices of one request: submit each group, stream it, restart on loss.

Each choice of an aligned request is a guidance group of two engine requests (see
``server.engine.guidance``): the *visible* member, whose tokens and text the client receives,
and its *partner*. The engine core keeps them in lockstep; if a step breaks it, the core ends
the visible member with ``stop_reason = REGROUP`` before any wrong token leaves it, and the group
is started again here after its last good token.
"""

from __future__ import annotations

import dataclasses
import logging
import random
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import aclosing
from typing import TYPE_CHECKING

from server.engine.deployments import ModelVersion
from server.engine.guidance.groups import REGROUP, Member
from server.engine.types import GenerationDelta, GenerationRequest
from server.engine.vllm_convert import lora_request, plain_deltas, sampling_params
from server.errors import EngineError
from server.streams import merged

if TYPE_CHECKING:
    from server.engine.vllm_engine import VLLMEngine

logger = logging.getLogger(__name__)

MAX_RESTARTS = 8


async def run_groups(
    engine: VLLMEngine, request: GenerationRequest, version: ModelVersion, label: str
) -> AsyncGenerator[list[GenerationDelta], None]:
    """Deltas of all ``n`` guided choices, merged as they come."""
    alignment = request.alignment
    assert alignment is not None
    against: ModelVersion | None = None
    if alignment.contrast_against is not None:
        against = engine.table.lookup(alignment.contrast_against)
        against.inflight += 1
    base_seed = request.sampling.seed

    async def choice(index: int) -> AsyncIterator[list[GenerationDelta]]:
        # Both members must draw the same sample, so a group is always seeded.
        seed = base_seed + index if base_seed is not None else random.getrandbits(62)
        async for delta in _run_choice(engine, request, index, seed, version, against, label):
            yield [delta]

    try:
        async with aclosing(merged([choice(i) for i in range(request.sampling.n)])) as stream:
            async for deltas in stream:
                yield deltas
    finally:
        if against is not None:
            against.inflight -= 1


async def _run_choice(
    engine: VLLMEngine,
    request: GenerationRequest,
    index: int,
    seed: int,
    version: ModelVersion,
    against: ModelVersion | None,
    label: str,
) -> AsyncIterator[GenerationDelta]:
    alignment = request.alignment
    assert alignment is not None
    contrast = against is not None
    emitted: list[int] = []
    options = request.sampling
    for attempt in range(MAX_RESTARTS + 1):
        left = options.max_tokens - len(emitted)
        if left <= 0:
            yield GenerationDelta(index, "", (), finish_reason="length", model_version=label)
            return
        group = f"{request.request_id}-{index}-{attempt}"
        member = Member(
            group=group,
            visible=True,
            lead=contrast,
            kind="contrast" if contrast else "principle",
            alpha=alignment.alpha,
            top_p=alignment.nucleus_top_p,
            temperature=alignment.nucleus_temperature,
            want_logprobs=options.logprobs is not None,
        )
        partner = dataclasses.replace(member, visible=False, lead=not contrast, want_logprobs=False)
        step = dataclasses.replace(options, max_tokens=left)
        visible_params = sampling_params(step, n=1, seed=seed, extra_args=member.args())
        partner_params = sampling_params(
            step, n=1, seed=seed, with_stop=False, logprobs=False, detokenize=False,
            final_only=True, extra_args=partner.args(),
        )
        partner_prompt = (
            list(request.prompt_ids) if contrast else list(alignment.principled_prompt_ids)
        )
        visible_id, partner_id = f"{group}-v", f"{group}-p"
        ended = False
        regroup = False
        collector = await engine.add(
            visible_id, [*request.prompt_ids, *emitted], visible_params, lora_request(version)
        )
        try:
            await engine.add(
                partner_id,
                [*partner_prompt, *emitted],
                partner_params,
                lora_request(against) if against is not None else lora_request(version),
            )
            while not ended:
                out = await collector.get()
                ended = out.finished
                co = out.outputs[0]
                if co.finish_reason == "abort" and co.stop_reason == REGROUP:
                    regroup = True
                    break
                emitted.extend(co.token_ids)
                for delta in plain_deltas(out, options.logprobs, label, engine.renderer.decode):
                    yield dataclasses.replace(delta, index=index)
        finally:
            stale = [partner_id] if ended and not regroup else [visible_id, partner_id]
            engine.spawn(engine.llm.abort(stale))
        if not regroup:
            return
        engine.regroups += 1
        if options.structured is not None and emitted:
            # A restart prompts with the tokens so far, but a grammar always starts from its
            # beginning: the rest would be held to the wrong state. Rare (see the scheduler).
            raise EngineError(
                f"guided decoding lost lockstep after {len(emitted)} tokens of a "
                "grammar-constrained output, which cannot be resumed mid-grammar; retry"
            )
        logger.warning(
            "request %s choice %d: guidance group lost lockstep; restarting after %d tokens",
            request.request_id, index, len(emitted),
        )
    raise EngineError("guided decoding could not keep its group in step")
