"""The engine on vLLM: an in-process engine core driven by one dedicated thread.

Why in-process (``LLMEngine`` without multiprocessing) rather than ``AsyncLLM``: on CPU it was
measured faster (183-193 vs 147 tok/s) and starts in seconds instead of half a minute, and it
gives this class exclusive control of the step loop. Requests added between two steps enter the
batch in the same step, which linear alignment needs for its request pairs; swaps and cache
resets run between steps, never inside one.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import queue
import threading
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from server.engine.deployments import DeploymentTable, ModelVersion
from server.engine.engine_state import Job, Pair, Stream, settle
from server.engine.renderer import HFChatRenderer
from server.engine.types import EngineStats, GenerationDelta, GenerationRequest, ModelCard
from server.errors import EngineError, ServiceUnavailableError

logger = logging.getLogger(__name__)
T = TypeVar("T")

MAX_PAIR_RESTARTS = 8


@dataclass(frozen=True)
class EngineConfig:
    model_path: Path
    served_name: str
    max_model_len: int = 2048
    kv_cache_gib: float = 2.0
    max_num_seqs: int = 64
    gpu_memory_utilization: float = 0.85
    enable_lora: bool = True
    max_loras: int = 4
    max_lora_rank: int = 16
    max_logprobs: int = 20


def _has_cuda() -> bool:
    import torch

    return bool(torch.cuda.is_available())


def _engine_args(config: EngineConfig) -> Any:
    from vllm.engine.arg_utils import EngineArgs

    from server.engine.pairing import LinearAlignmentProcessor

    on_gpu = _has_cuda()
    if not on_gpu:
        # Measured on these machines (docs/VLLM_CPU facts): float32 (bf16 on AVX2 is slower and
        # garbles text), eager (compilation costs minutes per start), no reserved core.
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(int(max(1, config.kv_cache_gib))))
        os.environ.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    return EngineArgs(
        model=str(config.model_path),
        served_model_name=config.served_name,
        dtype="auto" if on_gpu else "float32",
        enforce_eager=not on_gpu,
        max_model_len=config.max_model_len,
        max_num_seqs=config.max_num_seqs,
        # Whole prompts per step: a half-prefilled row would look like a paired row at its
        # first token (see pairing.py), so chunked prefill stays off.
        enable_chunked_prefill=False,
        max_num_batched_tokens=max(config.max_model_len, 4096),
        async_scheduling=False,
        gpu_memory_utilization=config.gpu_memory_utilization,
        enable_lora=config.enable_lora,
        max_loras=config.max_loras,
        max_lora_rank=config.max_lora_rank,  # type: ignore[arg-type]
        max_logprobs=config.max_logprobs,
        logits_processors=[LinearAlignmentProcessor],
        worker_extension_cls="server.engine.worker_ext.WeightSwapExtension",
        max_cpu_loras=max(16, config.max_loras),
        disable_log_stats=True,
        seed=0,
    )


class VLLMEngine:
    """Implements :class:`server.engine.base.Engine` on vLLM."""

    def __init__(self, config: EngineConfig):
        self.config = config
        self._engine: Any = None
        self._renderer: HFChatRenderer | None = None
        self._thread: threading.Thread | None = None
        self._commands: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        # Engine-thread state (see engine_loop): touched only on the engine thread.
        self._pending: deque[Job] = deque()
        self._swaps: deque[Callable[[], None]] = deque()  # run once no request is active
        self._active_seqs = 0
        self._jobs: dict[str, Job] = {}  # engine request id -> plain job
        self._pairs: dict[str, Pair] = {}  # engine request id (either half) -> aligned pair
        self._book_id = f"book-{uuid.uuid4().hex[:8]}"
        self._table: DeploymentTable | None = None
        self.book: Any = None
        self._dead: BaseException | None = None
        self._stopping = False
        self.pair_restarts = 0
        self.steps = 0
        self.step_seconds = 0.0  # summed wall time of engine steps, for /metrics
        self.max_pair_restarts = MAX_PAIR_RESTARTS
        self.created = int(time.time())

    # -- lifecycle -------------------------------------------------------------------------
    @property
    def ready(self) -> bool:
        return self._engine is not None and self._dead is None and not self._stopping

    @property
    def max_model_len(self) -> int:
        return self.config.max_model_len

    @property
    def renderer(self) -> HFChatRenderer:
        if self._renderer is None:
            raise ServiceUnavailableError("the engine is still starting")
        return self._renderer

    async def start(self) -> None:
        started = time.monotonic()
        await asyncio.to_thread(self._build)
        self._thread = threading.Thread(target=self._loop, name="vllm-engine", daemon=True)
        self._thread.start()
        logger.info("engine ready in %.1f s (%s)", time.monotonic() - started, self.config)

    def _build(self) -> None:
        from vllm.v1.engine.llm_engine import LLMEngine

        from server.engine.pairing import open_book

        self.book = open_book(self._book_id)
        self._engine = LLMEngine.from_engine_args(_engine_args(self.config))
        self._renderer = HFChatRenderer(self._engine.get_tokenizer())
        base = ModelVersion(
            self.config.served_name,
            0,
            "base",
            self.config.model_path,
            state="live",
            loaded=True,
            created=self.created,
        )
        self._table = DeploymentTable(base)

    async def shutdown(self) -> None:
        from server.engine.pairing import close_book

        self._stopping = True
        self._commands.put(None)
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join, 30)
        close_book(self._book_id)
        self._engine = None

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
        active = len({*self._jobs.values(), *(p.job for p in self._pairs.values())})
        return EngineStats(
            running=active,
            waiting=len(self._pending),
            extra={
                "pair_restarts": float(self.pair_restarts),
                "steps": float(self.steps),
                "step_seconds": self.step_seconds,
            },
        )

    # -- helpers used by engine_loop on the engine thread ---------------------------------
    @property
    def llm(self) -> Any:
        return self._engine

    def decode_token(self, token_id: int) -> str:
        return self.renderer.decode([token_id])

    @staticmethod
    def as_service_error(exc: Exception) -> Exception:
        return _as_service_error(exc)

    # -- requests --------------------------------------------------------------------------
    async def generate(self, request: GenerationRequest) -> AsyncIterator[list[GenerationDelta]]:
        if not self.ready:
            raise ServiceUnavailableError("the engine is not ready", retry_after_s=5)
        self.table.lookup(request.model, allow_staged=request.allow_staged)
        stream = Stream(asyncio.get_running_loop())
        job = Job(request, stream)
        self._commands.put(lambda: self._submit(job))
        finished = False
        try:
            while True:
                item = await stream.queue.get()
                if item is None:
                    finished = True
                    return
                if isinstance(item, BaseException):
                    finished = True
                    raise item
                yield item
        finally:
            if not finished:  # the client went away: free the engine's slots
                self._commands.put(lambda: self._abort_job(job))

    async def abort(self, request_id: str) -> None:
        def find_and_abort() -> None:
            for job in {*self._jobs.values(), *(p.job for p in self._pairs.values())}:
                if job.request.request_id == request_id:
                    self._abort_job(job)

        self._commands.put(find_and_abort)

    async def call(self, fn: Callable[[Any], T]) -> T:
        """Run ``fn(llm_engine)`` on the engine thread between two steps."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()

        def run() -> None:
            try:
                result = fn(self._engine)
            except BaseException as exc:  # handed to the caller, never lost
                loop.call_soon_threadsafe(settle, future, None, exc)
            else:
                loop.call_soon_threadsafe(settle, future, result, None)

        self._commands.put(run)
        return await future

    async def call_drained(self, fn: Callable[[Any], T]) -> T:
        """Run ``fn(self)`` on the engine thread once no request is running.

        Admission pauses until it has run: requests in flight finish on the old state, new ones
        wait in the queue (a full-weight swap never mixes weights inside one response).
        """
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()

        def run() -> None:
            try:
                result = fn(self)
            except BaseException as exc:
                loop.call_soon_threadsafe(settle, future, None, exc)
            else:
                loop.call_soon_threadsafe(settle, future, result, None)

        self._commands.put(lambda: self._swaps.append(run))
        return await future

    def _run_swaps_if_drained(self) -> None:
        from server.engine.engine_loop import admit

        ran = False
        while self._swaps and not self._jobs and not self._pairs:
            self._run_command(self._swaps.popleft())
            ran = True
        if ran:
            admit(self)

    # -- engine thread ---------------------------------------------------------------------
    def _loop(self) -> None:
        from server.engine.engine_loop import step_once

        while not self._stopping:
            idle = not self._engine.has_unfinished_requests()
            try:
                command = self._commands.get(timeout=0.5) if idle else self._commands.get_nowait()
            except queue.Empty:
                command = None
                if idle:
                    continue
            if command is not None:
                self._run_command(command)
                while True:  # everything queued joins the same step
                    try:
                        more = self._commands.get_nowait()
                    except queue.Empty:
                        break
                    if more is None:
                        return
                    self._run_command(more)
            self._run_swaps_if_drained()
            if self._engine.has_unfinished_requests():
                began = time.monotonic()
                try:
                    step_once(self)
                except BaseException as exc:
                    logger.exception("engine step failed; failing all requests")
                    self._dead = exc
                    self._fail_all(EngineError("the engine failed; see the server log"))
                    return
                self.steps += 1
                self.step_seconds += time.monotonic() - began

    def _run_command(self, command: Callable[[], None]) -> None:
        try:
            command()
        except Exception:
            logger.exception("engine command failed")

    def _submit(self, job: Job) -> None:
        from server.engine.engine_loop import submit

        submit(self, job)

    def _abort_job(self, job: Job) -> None:
        from server.engine.engine_loop import abort_job

        abort_job(self, job)

    def _fail_all(self, error: Exception) -> None:
        for job in {*self._jobs.values(), *(p.job for p in self._pairs.values())}:
            job.stream.push(error)
        self._jobs.clear()
        self._pairs.clear()


def _as_service_error(exc: Exception) -> Exception:
    from server.errors import InvalidRequestError, ServiceError

    if isinstance(exc, ServiceError):
        return exc
    if isinstance(exc, ValueError):
        return InvalidRequestError(str(exc))
    return EngineError("the engine could not accept the request")
