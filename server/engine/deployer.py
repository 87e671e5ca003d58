"""Hot-swap through the engine client: adapters next to running requests, full weights drained.

Every change is staged, smoke-tested on the new weights, and only then made live; a failure
leaves the previous version serving. Adapters load with ``add_lora`` while other requests run;
full weights are reloaded in place by RPC into the workers (``collective_rpc``) after the API
process's admission gate closed and every request in flight finished, with vLLM's scheduler
paused around the reload. The drain has a deadline: past it the swap is abandoned before anything
was loaded (:class:`SwapDrainTimeout`), admission reopens and the previous weights keep serving.
An adapter must also still resemble the weights it runs on (``server.engine.adapter_gate``).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from server.engine.adapter_gate import AdapterGate
from server.engine.deployments import Mode, ModelVersion
from server.engine.types import GenerationRequest, SamplingOptions
from server.errors import ServiceUnavailableError

if TYPE_CHECKING:
    from server.engine.vllm_engine import VLLMEngine

logger = logging.getLogger(__name__)
SMOKE_TIMEOUT_S = 120.0
# vLLM itself (``server.engine.vllm_convert``) is imported where it is used: this module is part
# of the app's import graph (deploy_service), and importing vLLM takes 15-25 s here, all of it
# before the server can open its port.


class SwapDrainTimeout(ServiceUnavailableError):
    """A full-weight swap gave up waiting for the requests in flight; nothing was loaded."""

    def __init__(self, target: str, in_flight: int, deadline_s: float, serving: str):
        super().__init__(
            f"swap to {target} abandoned: {in_flight} request(s) still in flight after the "
            f"{deadline_s:g} s drain deadline (ALIGNSERVE_SWAP_DRAIN_TIMEOUT_S); {serving} "
            "keeps serving. Retry when traffic is lower, or raise the deadline.",
            retry_after_s=30, code="swap_drain_timeout",
        )
        self.in_flight, self.deadline_s = in_flight, deadline_s


@dataclass(frozen=True)
class SwapResult:
    label: str
    previous: str | None
    seconds: float
    phases: dict[str, float] = field(default_factory=dict)  # seconds per phase of the swap


StagedCheck = Callable[[str], Awaitable[None]]
"""A test of a staged version (by label) before it goes live; raising refuses the version."""


class Deployer(Protocol):
    """The engine's deployment seam (what a deployment service or a reconciler drives)."""

    async def deploy(
        self, name: str, path: Path, mode: Mode, number: int, smoke_prompt: list[int],
        check: StagedCheck | None = None, created: float | None = None,
    ) -> SwapResult:
        """Put version ``number`` of ``name`` live (staged first; reused if already known).
        ``check(label)`` runs on the staged adapter after the smoke test; raising refuses it.
        ``created``: the version's creation time in the deployment store (what /v1/models
        shows, the same on every replica and after a restart); default now."""
        ...

    async def undeploy(self, name: str) -> None: ...

    def live(self) -> dict[str, str]:
        """Deployment name -> label of the version live under it."""
        ...


class VLLMDeployer:
    def __init__(
        self, engine: VLLMEngine, drain_timeout_s: float = 120.0, adapter_max_drop: float = 6.0
    ):
        self.engine = engine
        self.drain_timeout_s = drain_timeout_s
        self.adapter_gate = AdapterGate(engine, adapter_max_drop)
        self._lock = asyncio.Lock()  # one change at a time

    def live(self) -> dict[str, str]:
        return {name: v.label for name, v in self.engine.table.aliases.items()}

    async def deploy(
        self, name: str, path: Path, mode: Mode, number: int, smoke_prompt: list[int],
        check: StagedCheck | None = None, created: float | None = None,
    ) -> SwapResult:
        if check is not None and mode == "full":
            # Checking full weights would hold every request back for the whole evaluation.
            raise ValueError("a staged check (evaluation gate) needs an adapter deployment")
        async with self._lock:
            table = self.engine.table
            version = table.versions.get(f"{name}@{number}")
            if version is None or version.state == "failed":
                when = int(created if created is not None else time.time())
                version = table.new_version(name, mode, path, when, number)
            return await self._activate(version, smoke_prompt, check)

    async def undeploy(self, name: str) -> None:
        async with self._lock:
            table = self.engine.table
            current = table.aliases.get(name)
            if current is None:
                return
            if current.mode == "full" and table.weights is current:
                await self._drained_reload(table.base)
            table.aliases.pop(name, None)
            current.state = "retired"
            await self.unload_if_idle(current)

    async def unload_if_idle(self, version: ModelVersion) -> None:
        """Unload an adapter no request uses any more (never one that is live)."""
        if (
            version.mode == "adapter"
            and version.loaded
            and version.inflight == 0
            and version.state in ("retired", "failed")
            and self.engine.alive
        ):
            version.loaded = False
            await self.engine.llm.remove_lora(version.lora_id)
            logger.info("adapter %s unloaded", version.label)

    # -- internals -------------------------------------------------------------------------
    async def _activate(
        self, version: ModelVersion, smoke_prompt: list[int], check: StagedCheck | None = None
    ) -> SwapResult:
        started = time.monotonic()
        table = self.engine.table
        phases: dict[str, float] = {}
        previous_state = version.state
        previous_weights = table.weights
        version.state = "staged"  # never unloaded or served by name while it is tested
        if version.mode == "full":
            try:
                phases.update(await self._drained_reload(version, smoke_prompt))
            except Exception:
                version.state = "failed" if previous_state == "staged" else "retired"
                raise
        else:
            try:
                if not version.loaded:
                    from server.engine.vllm_convert import lora_request

                    if not await self.engine.llm.add_lora(lora_request(version)):
                        raise RuntimeError(f"vLLM refused adapter {version.label}")
                    version.loaded = True
                phases["load_s"] = time.monotonic() - started
                await self.adapter_gate.check(version, smoke_prompt)
                phases["smoke_s"] = time.monotonic() - started - phases["load_s"]
                if check is not None:
                    await check(version.label)
                    phases["check_s"] = time.monotonic() - started - sum(phases.values())
            except Exception:
                version.state = "failed" if previous_state == "staged" else "retired"
                await self.unload_if_idle(version)
                raise
        replaced = table.make_live(version)
        previous = None
        if replaced is not None and replaced is not version:
            previous = replaced.label
            await self.unload_if_idle(replaced)
        if version.mode == "full" and previous is None and previous_weights is not table.base:
            previous = previous_weights.label
        seconds = time.monotonic() - started
        logger.info("%s live in %.3f s (%s)", version.label, seconds, _phases_text(phases))
        return SwapResult(version.label, previous, seconds, phases)

    async def _drained_reload(
        self, target: ModelVersion, smoke_prompt: list[int] | None = None
    ) -> dict[str, float]:
        """Close admission, drain, reload ``target``'s weights, smoke-test, reopen.

        On any failure the weights that were serving are restored before admission reopens.
        """
        engine, table = self.engine, self.engine.table
        previous = table.weights
        phases: dict[str, float] = {}
        started = time.monotonic()
        engine.gate.close()
        try:
            try:
                await asyncio.wait_for(engine.gate.drained(), self.drain_timeout_s)
            except TimeoutError:
                error = SwapDrainTimeout(target.label, engine.gate.in_flight,
                                         self.drain_timeout_s, previous.label)
                logger.warning("%s", error.message)
                raise error from None
            phases["drain_s"] = time.monotonic() - started
            await self._reload(target)
            phases["reload_s"] = time.monotonic() - started - phases["drain_s"]
            if smoke_prompt is not None:
                try:
                    await self._smoke(target, smoke_prompt)
                except Exception:
                    logger.exception("smoke test of %s failed; restoring %s",
                                     target.label, previous.label)
                    await self._reload(previous)
                    raise
                phases["smoke_s"] = time.monotonic() - started - sum(phases.values())
        finally:
            engine.gate.open()
        return phases

    async def _reload(self, target: ModelVersion) -> None:
        llm = self.engine.llm
        await llm.pause_generation(mode="wait", clear_cache=False)
        try:
            await llm.collective_rpc(
                "alignserve_swap_weights", kwargs={"weights_path": str(target.path)}
            )
            # Cached KV blocks were computed with the old weights.
            await llm.reset_prefix_cache()
            self.engine.table.weights = target
        finally:
            await llm.resume_generation()

    async def _smoke(self, version: ModelVersion, prompt: list[int]) -> None:
        """One greedy token on ``version``; a non-finite distribution fails it."""
        from server.engine.vllm_convert import MIN_LOGPROB

        request = GenerationRequest(
            request_id=f"smoke-{uuid.uuid4().hex[:8]}",
            model=version.label,
            prompt_ids=tuple(prompt),
            sampling=SamplingOptions(max_tokens=1, temperature=0.0, logprobs=0),
            allow_staged=True,
        )

        async def run() -> None:
            tokens, logprob = 0, math.nan
            async for deltas in self.engine.generate(request):
                for delta in deltas:
                    tokens += len(delta.token_ids)
                    if delta.logprobs:
                        logprob = delta.logprobs[0].logprob
            if tokens == 0:
                raise RuntimeError(f"smoke generation on {version.label} produced no tokens")
            if not logprob > MIN_LOGPROB:
                raise RuntimeError(
                    f"smoke generation on {version.label} gave a non-finite distribution "
                    "(NaN or infinite weights?)"
                )

        try:
            await asyncio.wait_for(run(), SMOKE_TIMEOUT_S)
        except TimeoutError:
            raise RuntimeError(
                f"smoke generation did not finish in {SMOKE_TIMEOUT_S:.0f} s"
            ) from None


def _phases_text(phases: dict[str, float]) -> str:
    return ", ".join(f"{k.removesuffix('_s')} {v:.3f} s" for k, v in phases.items())
