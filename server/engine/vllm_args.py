"""How the engine is configured: our settings -> vLLM's engine config, and which runner it uses.

The engine core runs in its own process (vLLM's ``AsyncLLM`` over ``EngineCoreProc``), as in
vLLM's own server: the API process does HTTP, chat templates, tokenising, detokenising and
streaming; the engine core schedules and steps the model. Guidance groups need two hooks there:
the :class:`GroupScheduler` and the logits-processor front-end of the runner vLLM picks
(V1 on the CPU, Model Runner V2 on CUDA by default).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

logger = logging.getLogger(__name__)

ExecutorBackend = Literal["auto", "uni", "mp", "ray"]


@dataclass(frozen=True)
class EngineConfig:
    model_path: Path
    served_name: str
    max_model_len: int = 2048
    kv_cache_gib: float = 2.0  # CPU only: VLLM_CPU_KVCACHE_SPACE
    max_num_seqs: int = 64
    max_num_batched_tokens: int | None = None  # None: vLLM's default (or 2 x max_model_len)
    gpu_memory_utilization: float = 0.85
    enable_lora: bool = True
    max_loras: int = 4
    max_lora_rank: int = 16
    max_logprobs: int = 20
    dtype: str = "auto"  # "auto": float32 on CPU, the checkpoint's dtype on GPU
    tensor_parallel_size: int = 1
    pipeline_parallel_size: int = 1
    distributed_executor_backend: ExecutorBackend = "auto"
    enable_chunked_prefill: bool | None = None  # None: off on CPU (measured), vLLM's on GPU
    async_scheduling: bool = False
    enforce_eager: bool | None = None  # None: eager on CPU, compiled/graphs on GPU
    seed: int = 0

    @property
    def world_size(self) -> int:
        return self.tensor_parallel_size * self.pipeline_parallel_size


@dataclass(frozen=True)
class RunnerInfo:
    """What vLLM chose, read back from its config after it was built."""

    device: str  # "cpu" | "cuda"
    model_runner: str  # "v1" | "v2"
    executor: str
    chunked_prefill: bool
    async_scheduling: bool
    guidance: bool  # guidance groups (alignment, contrast) are served
    aligned_logprobs: bool  # the scheduler can read the processors' aligned log-probabilities


def has_cuda() -> bool:
    import torch

    return bool(torch.cuda.is_available())


def _engine_args(config: EngineConfig, on_gpu: bool) -> Any:
    from vllm.engine.arg_utils import AsyncEngineArgs

    if not on_gpu:
        # Measured on these machines (docs/vllm_cpu.md): float32 (bf16 on AVX2 is slower and
        # garbles text), eager (compilation costs minutes per start), no reserved core.
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(int(max(1, config.kv_cache_gib))))
        os.environ.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "1"  # the engine core in its own process
    backend: str | None = config.distributed_executor_backend
    if backend == "auto":
        backend = "uni" if config.world_size == 1 else None  # None: vLLM picks mp or ray
    dtype = config.dtype if config.dtype != "auto" or on_gpu else "float32"
    chunked = config.enable_chunked_prefill
    if chunked is None and not on_gpu:
        # Measured on this CPU (docs/benchmarks.md, section 1): same throughput either way, and
        # whole-prompt steps give a TTFT p50 equal to the stock server's (1.11x with chunks).
        chunked = False
    batched = config.max_num_batched_tokens
    if batched is None and chunked is False:
        # Whole prompts of both members of a group must fit one step.
        batched = max(2 * config.max_model_len, 4096)
    return AsyncEngineArgs(
        model=str(config.model_path),
        served_model_name=config.served_name,
        dtype=dtype,  # type: ignore[arg-type]
        enforce_eager=(not on_gpu) if config.enforce_eager is None else config.enforce_eager,
        max_model_len=config.max_model_len,
        max_num_seqs=config.max_num_seqs,
        max_num_batched_tokens=batched,
        enable_chunked_prefill=chunked,
        async_scheduling=config.async_scheduling,
        tensor_parallel_size=config.tensor_parallel_size,
        pipeline_parallel_size=config.pipeline_parallel_size,
        distributed_executor_backend=backend,
        gpu_memory_utilization=config.gpu_memory_utilization,
        enable_lora=config.enable_lora,
        max_loras=config.max_loras,
        max_lora_rank=config.max_lora_rank,  # type: ignore[arg-type]
        max_logprobs=config.max_logprobs,
        worker_extension_cls="server.engine.worker_ext.WeightSwapExtension",
        max_cpu_loras=max(16, config.max_loras),
        disable_log_stats=True,
        seed=config.seed,
    )


def build_vllm_config(config: EngineConfig) -> tuple[Any, RunnerInfo]:
    """vLLM's config with our scheduler and the processor front-end of the runner it uses."""
    from vllm.usage.usage_lib import UsageContext

    on_gpu = has_cuda()
    vllm_config = _engine_args(config, on_gpu).create_engine_config(UsageContext.OPENAI_API_SERVER)
    v2 = bool(vllm_config.use_v2_model_runner)
    parallel = vllm_config.parallel_config
    if config.world_size == 1 and config.distributed_executor_backend == "auto":
        # vLLM's CPU platform turns 'uni' into 'mp' (a worker process under the engine-core
        # process). One device needs no worker process: the worker lives in the engine core,
        # which saves a hop per step and lets the scheduler read what the processors computed.
        parallel.distributed_executor_backend = "uni"
    sched = vllm_config.scheduler_config
    guidance = not sched.async_scheduling
    if guidance:
        from server.engine.guidance.scheduler import GroupScheduler

        sched.scheduler_cls = GroupScheduler
        if v2:
            from server.engine.guidance.processor_v2 import GuidanceProcessorV2

            processor: type = GuidanceProcessorV2
        else:
            from server.engine.guidance.processor_v1 import GuidanceProcessorV1

            processor = GuidanceProcessorV1
        vllm_config.model_config.logits_processors = [processor]
    else:
        logger.warning(
            "async scheduling is on: guidance groups (alignment, contrast) are refused; "
            "turn it off to serve them"
        )
    info = RunnerInfo(
        device="cuda" if on_gpu else "cpu",
        model_runner="v2" if v2 else "v1",
        executor=str(parallel.distributed_executor_backend),
        chunked_prefill=bool(sched.enable_chunked_prefill),
        async_scheduling=bool(sched.async_scheduling),
        guidance=guidance,
        aligned_logprobs=guidance and str(parallel.distributed_executor_backend) == "uni",
    )
    logger.info(
        "engine: %s, model runner %s, executor %s (tp %d, pp %d), chunked prefill %s, "
        "async scheduling %s, guidance groups %s",
        info.device, info.model_runner, info.executor, config.tensor_parallel_size,
        config.pipeline_parallel_size, info.chunked_prefill, info.async_scheduling,
        "on" if info.guidance else "off",
    )
    return vllm_config, info
