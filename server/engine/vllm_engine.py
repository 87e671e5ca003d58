"""The engine on vLLM: an async client in the API process over vLLM's engine-core process.

``AsyncLLM`` starts the engine core (scheduler + model executor) in its own process and talks to
it over ZMQ, as vLLM's own OpenAI server does; this process keeps HTTP, chat templates,
tokenising, detokenising and streaming, so neither side waits on the other's GIL. Guidance
groups (linear alignment, adapter contrast) are kept together by the engine core's scheduler
(``server.engine.guidance``); this class submits their members and restarts a group that lost
lockstep (``server.engine.group_run``).

The client is built in a worker thread, so the API process answers ``/health`` while the engine
core loads the model; a watchdog (``server.engine.watchdog``) sees every batch of step outputs
the engine core delivers, to tell a busy engine from a stalled one.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import multiprocessing
import os
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from server.engine.admission import AdmissionGate
from server.engine.deployments import DeploymentTable, ModelVersion
from server.engine.renderer import HFChatRenderer
from server.engine.types import EngineStats, GenerationDelta, GenerationRequest, ModelCard
from server.engine.vllm_args import EngineConfig, RunnerInfo, build_vllm_config
from server.engine.watchdog import EngineHealth, Watchdog
from server.errors import EngineError, InvalidRequestError, ServiceError, ServiceUnavailableError

if TYPE_CHECKING:
    from server.engine.deployer import VLLMDeployer

# Modules that import vLLM (group_run, vllm_convert) are imported where they are used: importing
# vLLM takes 15-25 s here, and the CLI imports this module before the server opens its port.
# start() has imported vLLM (build_vllm_config) before any request can reach those places.

logger = logging.getLogger(__name__)

__all__ = ["EngineConfig", "VLLMEngine"]


class VLLMEngine:
    """Implements :class:`server.engine.base.Engine` on vLLM's ``AsyncLLM``."""

    def __init__(
        self,
        config: EngineConfig,
        *,
        stall_s: float = 60.0,
        swap_drain_timeout_s: float = 120.0,
        adapter_max_drop: float = 6.0,
    ):
        self.config = config
        self._llm: Any = None
        # The AsyncLLM being built in a worker thread, and the child processes that existed
        # before (shutdown during start-up stops the engine core the build started).
        self._building: asyncio.Future[Any] | None = None
        self._children_before: set[Any] = set()
        self.watchdog = Watchdog(stall_s)
        self._open = False  # requests admitted (set once the live deployments are restored)
        self._renderer: HFChatRenderer | None = None
        self._table: DeploymentTable | None = None
        self.runner: RunnerInfo | None = None
        self.gate = AdmissionGate()
        self._stopping = False
        self._background: set[asyncio.Task[Any]] = set()
        self.regroups = 0  # guidance groups restarted after losing lockstep
        self.created = int(time.time())
        from server.engine.deployer import VLLMDeployer

        self._deployer = VLLMDeployer(self, swap_drain_timeout_s, adapter_max_drop)

    # -- lifecycle -------------------------------------------------------------------------
    @property
    def ready(self) -> bool:
        """Serving requests: alive and opened (after start-up restored the deployments)."""
        return self._open and self.alive

    @property
    def alive(self) -> bool:
        """Started, not stopping, engine core running: enough for the gate's own requests."""
        return self._llm is not None and not self._stopping and not self._llm.errored

    def open(self) -> None:
        self._open = True

    @property
    def max_model_len(self) -> int:
        return self.config.max_model_len

    @property
    def model_path(self) -> Path:
        return self.config.model_path

    @property
    def max_lora_rank(self) -> int:
        return self.config.max_lora_rank

    @property
    def renderer(self) -> HFChatRenderer:
        if self._renderer is None:
            raise ServiceUnavailableError("the engine is still starting")
        return self._renderer

    @property
    def deployer(self) -> VLLMDeployer:
        return self._deployer

    @property
    def llm(self) -> Any:
        if self._llm is None:
            raise ServiceUnavailableError("the engine is not ready", retry_after_s=5)
        return self._llm

    async def start(self) -> None:
        started = time.monotonic()
        vllm_config, self.runner = await asyncio.to_thread(build_vllm_config, self.config)
        if self._stopping:
            raise RuntimeError("the server shut down while the engine was starting")
        # The engine core starts from a worker thread while the port is open: a fork would copy
        # the listening socket and any lock the serving thread holds into the engine core.
        # Spawn is what vLLM already uses on CPU, and on GPU once CUDA is initialised.
        os.environ.setdefault("VLLM_WORKER_MULTIPROC_METHOD", "spawn")
        self._children_before = set(multiprocessing.active_children())
        self._building = asyncio.get_running_loop().run_in_executor(
            None, _build_llm, vllm_config
        )
        try:
            llm = await asyncio.shield(self._building)
        except Exception:
            self._building = None
            raise  # a cancellation leaves the build to shutdown(), which stops and releases it
        if self._stopping:  # shutdown() waited for this build and owns the client now
            raise RuntimeError("the server shut down while the engine was starting")
        self._building = None
        self._watch(llm)
        self._llm = llm
        self._renderer = HFChatRenderer(llm.get_tokenizer())
        base = ModelVersion(self.config.served_name, 0, "base", self.config.model_path,
                            state="live", loaded=True, created=self.created)
        self._table = DeploymentTable(base)
        logger.info("engine ready in %.1f s", time.monotonic() - started)

    async def shutdown(self) -> None:
        self._stopping = True
        for task in list(self._background):
            task.cancel()
        building, self._building = self._building, None
        if building is not None:  # still loading: stop the engine core, then release the client
            for proc in set(multiprocessing.active_children()) - self._children_before:
                logger.info("stopping engine process %s (pid %s) during start-up", proc.name,
                            proc.pid)
                proc.terminate()
            try:
                llm = await asyncio.wait_for(asyncio.shield(building), 60)
                await asyncio.to_thread(llm.shutdown)
            except Exception as exc:  # the build failed because its engine core was stopped
                logger.info("engine start-up abandoned: %s", exc)
        if self._llm is not None:
            llm, self._llm = self._llm, None
            await asyncio.to_thread(llm.shutdown)

    def _watch(self, llm: Any) -> None:
        """Feed the watchdog every batch of step outputs, and start the client's output tasks.

        The batches arrive through ``engine_core.get_output_async`` (vLLM's output handler looks
        it up on every iteration, so wrapping it on the instance sees each one). Built off the
        event loop, the client starts its output tasks lazily; started here, on the loop, as
        AsyncLLM does when built on one, an engine core that dies before the first request is
        noticed at once.
        """
        core, watchdog = llm.engine_core, self.watchdog
        receive = core.get_output_async

        async def get_output_async() -> Any:
            outputs = await receive()
            watchdog.progress()
            return outputs

        core.get_output_async = get_output_async
        llm._run_output_handler()

    def health(self) -> EngineHealth:
        llm = self._llm
        if self._stopping:
            return EngineHealth("stopping", "the server is shutting down")
        if llm is None:
            return EngineHealth("starting", "the model is still loading")
        pending = llm.get_num_unfinished_requests()
        if llm.errored:
            return self.watchdog.dead("the engine-core process exited or failed", pending)
        return self.watchdog.check(pending)

    def spawn(self, work: Awaitable[Any]) -> None:
        """Fire-and-forget work (aborts, unloads) that must outlive a cancelled request."""

        async def run() -> None:
            try:
                await work
            except Exception:
                logger.exception("background engine call failed")

        task = asyncio.get_running_loop().create_task(run())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # -- models ----------------------------------------------------------------------------
    @property
    def table(self) -> DeploymentTable:
        if self._table is None:
            raise ServiceUnavailableError("the engine is still starting")
        return self._table

    def model_cards(self) -> list[ModelCard]:
        if self._table is None:
            return []
        cards = self.table.cards()
        return [dataclasses.replace(c, max_model_len=self.config.max_model_len) for c in cards]

    def resolve_model(self, name: str) -> str:
        self.table.lookup(name)
        return name

    def stats(self) -> EngineStats:
        return EngineStats(
            running=self.gate.in_flight,
            waiting=self.gate.waiting,
            extra={"pair_restarts": float(self.regroups)},
        )

    # -- requests --------------------------------------------------------------------------
    async def generate(self, request: GenerationRequest) -> AsyncIterator[list[GenerationDelta]]:
        if not (self.ready or (request.allow_staged and self.alive)):  # gate requests: alive
            raise ServiceUnavailableError("the engine is not ready", retry_after_s=5)
        self.table.lookup(request.model, allow_staged=request.allow_staged)
        if request.alignment is not None:
            self._check_guidance(request)
        await self.gate.enter(bypass=request.allow_staged)
        version: ModelVersion | None = None
        try:
            # Bound after the gate: a full swap that ran while we waited is what we get.
            version = self.table.lookup(request.model, allow_staged=request.allow_staged)
            version.inflight += 1
            label = self.table.label_for(version)
            if request.alignment is None:
                stream = self._plain(request, version, label)
            else:
                from server.engine.group_run import run_groups

                stream = run_groups(self, request, version, label)
            try:
                async for deltas in stream:
                    yield deltas
            finally:  # a client that went away closes us: close the engine side now, not at GC
                await stream.aclose()
        finally:
            self.gate.leave()
            if version is not None:
                version.inflight -= 1
                if version.inflight == 0:
                    self.spawn(self._deployer.unload_if_idle(version))

    def _check_guidance(self, request: GenerationRequest) -> None:
        assert self.runner is not None and request.alignment is not None
        if not self.runner.guidance:
            raise InvalidRequestError(
                "alignment is not available: the engine runs with async scheduling",
                param="alignment",
            )
        if request.sampling.n > 1 and request.sampling.temperature == 0:
            # As vLLM answers a plain request: greedy choices would all be the same.
            raise InvalidRequestError(
                f"n must be 1 when using greedy sampling, got {request.sampling.n}.", param="n"
            )
        if request.sampling.logprobs is not None and not self.runner.aligned_logprobs:
            raise InvalidRequestError(
                "logprobs with alignment need a single-process executor "
                "(tensor_parallel_size = pipeline_parallel_size = 1)",
                param="logprobs",
            )

    async def _plain(
        self, request: GenerationRequest, version: ModelVersion, label: str
    ) -> AsyncGenerator[list[GenerationDelta], None]:
        from server.engine.vllm_convert import lora_request, plain_deltas, sampling_params

        params = sampling_params(request.sampling)
        collector = await self.add(
            request.request_id, list(request.prompt_ids), params, lora_request(version)
        )
        finished = False
        try:
            while not finished:
                out = await collector.get()
                finished = out.finished
                yield plain_deltas(out, request.sampling.logprobs, label, self.renderer.decode)
        except ServiceError:
            raise
        except Exception as exc:
            raise _engine_error(exc) from exc
        finally:
            if not finished:
                self.spawn(self.llm.abort(request.request_id))

    async def add(self, rid: str, prompt_ids: list[int], params: Any, lora: Any) -> Any:
        """Submit one engine request; vLLM's refusals become 400s, nothing is left behind."""
        from vllm.exceptions import VLLMValidationError

        llm = self.llm
        self.watchdog.submitted(llm.get_num_unfinished_requests())
        try:
            return await llm.add_request(
                rid, {"prompt_token_ids": prompt_ids}, params, lora_request=lora
            )
        except (ValueError, VLLMValidationError) as exc:
            raise InvalidRequestError(str(exc)) from None
        except Exception as exc:
            raise _engine_error(exc) from exc

    async def abort(self, request_id: str) -> None:
        if self._llm is not None:
            await self._llm.abort(request_id)


def _build_llm(vllm_config: Any) -> Any:
    """The AsyncLLM client; blocks until the engine core has loaded the model (worker thread)."""
    from vllm.v1.engine.async_llm import AsyncLLM

    return AsyncLLM.from_vllm_config(vllm_config, disable_log_stats=True)


def _engine_error(exc: Exception) -> ServiceError:
    if isinstance(exc, ServiceError):
        return exc
    logger.error("engine request failed: %r", exc)
    return EngineError("the engine failed; see the server log")
