"""Deployment operations of the vLLM engine: stage, smoke-test, go live, roll back, remove.

Table mutations run on the engine thread (``call``); full-weight swaps run there once no
request is active (``call_drained``). Adapters load next to running requests.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from server.engine.deployments import Mode, ModelVersion
from server.engine.engine_loop import submit
from server.engine.engine_state import Job, Stream, settle
from server.engine.swap import SMOKE_TOKENS, full_swap, load_adapter, reload_weights, unload_if_idle
from server.engine.types import GenerationRequest, SamplingOptions

if TYPE_CHECKING:
    from server.engine.vllm_engine import VLLMEngine

logger = logging.getLogger(__name__)
SMOKE_TIMEOUT_S = 120.0


@dataclass(frozen=True)
class SwapResult:
    label: str
    previous: str | None
    seconds: float
    phases: dict[str, float] = field(default_factory=dict)  # seconds per phase of the swap


async def deploy(
    engine: VLLMEngine, name: str, path: Path, mode: Mode, smoke_prompt: list[int]
) -> SwapResult:
    started = time.monotonic()
    if mode == "full":
        phases: dict[str, float] = {}

        def swap_full(e: VLLMEngine) -> str | None:
            phases["drain_s"] = time.monotonic() - started
            version = e.table.new_version(name, "full", path, int(time.time()))
            try:
                phases.update(full_swap(e, version, smoke_prompt))
            except Exception:
                version.state = "failed"
                raise
            previous = e.table.make_live(version)
            return previous.label if previous is not None else None

        previous = await engine.call_drained(swap_full)
        label = f"{name}@{engine.table.aliases[name].version}"
        logger.info("full %s: %s", label, _phases_text(phases))
        return SwapResult(label, previous, time.monotonic() - started, phases)

    phases = {}

    def stage(e: VLLMEngine, live: Gate) -> None:
        phases["queued_s"] = time.monotonic() - started  # the step in progress finishing
        version = e.table.new_version(name, "adapter", path, int(time.time()))
        try:
            load_adapter(e, version)
        except Exception:
            version.state = "failed"
            raise
        phases["load_s"] = time.monotonic() - started - phases["queued_s"]
        _smoke_then_live(e, version, smoke_prompt, live, on_fail=_fail)

    label, previous = await _gated(engine, stage)
    phases["smoke_s"] = time.monotonic() - started - phases["queued_s"] - phases["load_s"]
    logger.info("adapter %s: %s", label, _phases_text(phases))
    return SwapResult(label, previous, time.monotonic() - started, phases)


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

        def back_to_retired(e: VLLMEngine, v: ModelVersion) -> None:
            v.state = "retired"
            unload_if_idle(e, v)

        def reload(e: VLLMEngine, live: Gate) -> None:
            version.state = "staged"  # staged versions are never unloaded under us
            try:
                if not version.loaded:
                    load_adapter(e, version)
            except Exception:
                back_to_retired(e, version)
                raise
            _smoke_then_live(e, version, smoke_prompt, live, on_fail=back_to_retired)

        _, previous = await _gated(engine, reload)
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


class Gate:
    """Settles, from the engine thread, the coroutine waiting for a version to go live."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop = loop
        self.future: asyncio.Future[tuple[str, str | None]] = loop.create_future()
        self.abandoned = False  # the caller gave up waiting: the version must not go live

    def settle(self, result: tuple[str, str | None] | None, error: BaseException | None) -> None:
        self.loop.call_soon_threadsafe(settle, self.future, result, error)


async def _gated(
    engine: VLLMEngine, stage: Callable[[VLLMEngine, Gate], None]
) -> tuple[str, str | None]:
    """Run ``stage`` on the engine thread and wait until its smoke test put the version live."""
    live = Gate(asyncio.get_running_loop())
    await engine.call(lambda _: stage(engine, live))
    try:
        return await asyncio.wait_for(live.future, SMOKE_TIMEOUT_S)
    except TimeoutError:
        live.abandoned = True
        raise RuntimeError(f"smoke generation did not finish in {SMOKE_TIMEOUT_S:.0f} s") from None


def _smoke_then_live(
    engine: VLLMEngine,
    version: ModelVersion,
    prompt: list[int],
    live: Gate,
    on_fail: Callable[[VLLMEngine, ModelVersion], None],
) -> None:
    """Engine thread: admit a short greedy generation on ``version`` ahead of the queue and,
    the moment it ends, put the version live (or fail it) without leaving the engine thread,
    so the swap costs one engine step rather than a round trip per phase."""

    def finished(job: Job) -> None:
        if live.abandoned or job.completion_tokens == 0:
            on_fail(engine, version)
            live.settle(None, RuntimeError(f"smoke generation on {version.label} failed"))
        else:
            live.settle((version.label, _go_live(engine, version)), None)

    request = GenerationRequest(
        request_id=f"smoke-{uuid.uuid4().hex[:8]}",
        model=version.label,
        prompt_ids=tuple(prompt),
        sampling=SamplingOptions(max_tokens=SMOKE_TOKENS, temperature=0.0),
        allow_staged=True,
    )
    submit(engine, Job(request, Stream(live.loop), on_finish=finished))


def _phases_text(phases: dict[str, float]) -> str:
    return ", ".join(f"{k.removesuffix('_s')} {v:.3f} s" for k, v in phases.items())


def _go_live(engine: VLLMEngine, version: ModelVersion) -> str | None:
    previous = engine.table.make_live(version)
    if previous is not None and previous is not version:
        unload_if_idle(engine, previous)
        return previous.label
    return None


def _fail(engine: VLLMEngine, version: ModelVersion) -> None:  # engine thread
    version.state = "failed"
    unload_if_idle(engine, version)


def _retire(engine: VLLMEngine, name: str) -> None:
    current = engine.table.aliases.pop(name, None)
    if current is not None:
        current.state = "retired"
        unload_if_idle(engine, current)
