"""Deployment operations of the vLLM engine: stage, smoke-test, go live, roll back, remove.

Table mutations run on the engine thread (``call``); full-weight swaps run there once no
request is active (``call_drained``). Adapters load next to running requests.
"""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from server.engine.deployments import Mode, ModelVersion
from server.engine.swap import SMOKE_TOKENS, full_swap, load_adapter, reload_weights, unload_if_idle
from server.engine.types import GenerationRequest, SamplingOptions

if TYPE_CHECKING:
    from server.engine.vllm_engine import VLLMEngine

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SwapResult:
    label: str
    previous: str | None
    seconds: float


async def deploy(
    engine: VLLMEngine, name: str, path: Path, mode: Mode, smoke_prompt: list[int]
) -> SwapResult:
    started = time.monotonic()
    if mode == "full":

        def swap_full(e: VLLMEngine) -> str | None:
            version = e.table.new_version(name, "full", path, int(time.time()))
            try:
                full_swap(e, version, smoke_prompt)
            except Exception:
                version.state = "failed"
                raise
            previous = e.table.make_live(version)
            return previous.label if previous is not None else None

        previous = await engine.call_drained(swap_full)
        return SwapResult(
            f"{name}@{engine.table.aliases[name].version}", previous, time.monotonic() - started
        )

    def stage(e: VLLMEngine) -> ModelVersion:
        version = e.table.new_version(name, "adapter", path, int(time.time()))
        try:
            load_adapter(e, version)
        except Exception:
            version.state = "failed"
            raise
        return version

    version = await engine.call(lambda _: stage(engine))
    staged = time.monotonic()
    try:
        await smoke(engine, version.label, smoke_prompt)
    except Exception:
        await engine.call(lambda _: _fail(engine, version))
        raise
    previous = await engine.call(lambda _: _go_live(engine, version))
    logger.info(
        "adapter %s: load %.3f s, smoke %.3f s",
        version.label,
        staged - started,
        time.monotonic() - staged,
    )
    return SwapResult(version.label, previous, time.monotonic() - started)


async def activate(engine: VLLMEngine, label: str, smoke_prompt: list[int]) -> SwapResult:
    """Make an earlier version live again (rollback)."""
    started = time.monotonic()
    version = engine.table.versions[label]
    if version.mode == "full":

        def swap_back(e: VLLMEngine) -> str | None:
            full_swap(e, version, smoke_prompt)
            return _go_live(e, version)

        previous = await engine.call_drained(swap_back)
    else:

        def reload(e: VLLMEngine) -> None:
            version.state = "staged"  # staged versions are never unloaded under us
            if not version.loaded:
                load_adapter(e, version)

        def back_to_retired(e: VLLMEngine) -> None:
            version.state = "retired"
            unload_if_idle(e, version)

        await engine.call(lambda _: reload(engine))
        try:
            await smoke(engine, label, smoke_prompt)
        except Exception:
            await engine.call(lambda _: back_to_retired(engine))
            raise
        previous = await engine.call(lambda _: _go_live(engine, version))
    return SwapResult(label, previous, time.monotonic() - started)


async def undeploy(engine: VLLMEngine, name: str) -> None:
    current = engine.table.aliases.get(name)
    if current is None:
        return
    if current.mode == "full":

        def restore_base(e: VLLMEngine) -> None:
            if e.table.weights is current:
                reload_weights(e, e.table.base)
            _retire(e, name)

        await engine.call_drained(restore_base)
    else:
        await engine.call(lambda _: _retire(engine, name))


async def smoke(engine: VLLMEngine, label: str, prompt: list[int]) -> None:
    """A short greedy generation on ``label`` through the normal request path."""
    request = GenerationRequest(
        request_id=f"smoke-{uuid.uuid4().hex[:8]}",
        model=label,
        prompt_ids=tuple(prompt),
        sampling=SamplingOptions(max_tokens=SMOKE_TOKENS, temperature=0.0),
        allow_staged=True,
    )
    tokens = 0
    async for batch in engine.generate(request):
        tokens += sum(len(d.token_ids) for d in batch)
    if tokens == 0:
        raise RuntimeError(f"smoke generation on {label} produced no tokens")


def _go_live(engine: VLLMEngine, version: ModelVersion) -> str | None:
    previous = engine.table.make_live(version)
    if previous is not None and previous is not version:
        unload_if_idle(engine, previous)
        return previous.label
    return None


def _fail(engine: VLLMEngine, version: ModelVersion) -> None:
    version.state = "failed"
    unload_if_idle(engine, version)


def _retire(engine: VLLMEngine, name: str) -> None:
    current = engine.table.aliases.pop(name, None)
    if current is not None:
        current.state = "retired"
        unload_if_idle(engine, current)
