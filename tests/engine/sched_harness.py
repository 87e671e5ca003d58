"""A real vLLM scheduler (ours) driven without a model: the harness plays the model runner.

Each step the harness reads the real ``SchedulerOutput`` and answers with a ``ModelRunnerOutput``
in which every request whose scheduled tokens reach the end of its known tokens samples one
token. Members of a guidance group sample the same token (as the logits processors make them),
so any disagreement the tests see comes from scheduling, which is what is under test.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from vllm import SamplingParams
from vllm.v1.outputs import LogprobsLists, ModelRunnerOutput
from vllm.v1.request import Request

from server.engine.guidance.groups import Member
from server.engine.guidance.scheduler import GroupScheduler

VOCAB = 128
EOS = 1


def tiny_config_folder(folder: Path) -> Path:
    from transformers import LlamaConfig

    cfg = LlamaConfig(
        vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
    )
    cfg.architectures = ["LlamaForCausalLM"]
    cfg.save_pretrained(folder)
    return folder


def make_scheduler(
    model_dir: Path,
    *,
    num_blocks: int = 64,
    block_size: int = 16,
    max_num_seqs: int = 8,
    max_num_batched_tokens: int = 256,
    chunked_prefill: bool = True,
    long_prefill_threshold: int = 0,
) -> GroupScheduler:
    from vllm.engine.arg_utils import EngineArgs
    from vllm.v1.kv_cache_interface import FullAttentionSpec, KVCacheConfig, KVCacheGroupSpec
    from vllm.v1.structured_output import StructuredOutputManager

    config = EngineArgs(
        model=str(model_dir), skip_tokenizer_init=True, max_model_len=1024,
        block_size=block_size, max_num_seqs=max_num_seqs,
        max_num_batched_tokens=max_num_batched_tokens, enable_chunked_prefill=chunked_prefill,
        long_prefill_token_threshold=long_prefill_threshold, dtype="float32",
        enforce_eager=True, enable_prefix_caching=False,
    ).create_engine_config()
    config.cache_config.num_gpu_blocks = num_blocks
    spec = FullAttentionSpec(
        block_size=block_size, num_kv_heads=2, head_size=16, dtype=torch.float32
    )
    kv = KVCacheConfig(
        num_blocks=num_blocks, kv_cache_tensors=[],
        kv_cache_groups=[KVCacheGroupSpec(["layer.0"], spec)],
    )
    return GroupScheduler(
        vllm_config=config, kv_cache_config=kv,
        structured_output_manager=StructuredOutputManager(config), block_size=block_size,
    )


_ids = itertools.count()


def request(
    prompt_len: int, max_tokens: int, member: Member | None = None, rid: str | None = None,
    logprobs: int | None = None,
) -> Request:
    params = SamplingParams(
        max_tokens=max_tokens, temperature=0.0, logprobs=logprobs,
        extra_args=member.args() if member is not None else None,
    )
    params.update_from_generation_config({}, EOS)
    return Request(
        request_id=rid or f"r{next(_ids)}",
        prompt_token_ids=[2 + (i % 100) for i in range(prompt_len)],
        sampling_params=params,
        pooling_params=None,
    )


def group(name: str, visible_len: int, partner_len: int, max_tokens: int, **kw: Any
          ) -> tuple[Request, Request]:
    m = Member(group=name, visible=True, lead=False, kind="principle", alpha=1.0, top_p=0.8,
               temperature=0.5, **kw)
    p = Member(group=name, visible=False, lead=True, kind="principle", alpha=1.0, top_p=0.8,
               temperature=0.5)
    return (request(visible_len, max_tokens, m, f"{name}-v", logprobs=2 if kw else None),
            request(partner_len, max_tokens, p, f"{name}-p"))


@dataclass
class StepLog:
    sampled: dict[str, list[int]] = field(default_factory=dict)
    preempted: set[str] = field(default_factory=set)
    outputs: list[Any] = field(default_factory=list)


def step(
    scheduler: GroupScheduler, token: int = 7, tamper: dict[str, list[int]] | None = None
) -> StepLog:
    """One schedule + fake model step + update; returns who sampled what and the outputs."""
    out = scheduler.schedule()
    req_ids = list(out.num_scheduled_tokens)
    sampled: list[list[int]] = []
    for rid in req_ids:
        r = scheduler.requests[rid]
        # r.num_computed_tokens was advanced by schedule(): a sample happens when it reaches
        # every token known so far (a partial prefill chunk samples nothing).
        sampled.append([token] if r.num_computed_tokens >= r.num_tokens else [])
    if tamper:
        for rid, tokens in tamper.items():
            if rid in req_ids:
                sampled[req_ids.index(rid)] = tokens
    logprobs = None
    if req_ids:
        width = 3
        logprobs = LogprobsLists(
            np.zeros((len(req_ids), width), dtype=np.int64),
            np.full((len(req_ids), width), -1.0, dtype=np.float32),
            np.ones(len(req_ids), dtype=np.int64),
            None,
        )
    mro = ModelRunnerOutput(
        req_ids=req_ids,
        req_id_to_index={rid: i for i, rid in enumerate(req_ids)},
        sampled_token_ids=sampled,
        logprobs=logprobs,
    )
    results = scheduler.update_from_output(out, mro)
    log = StepLog(
        {rid: s for rid, s in zip(req_ids, sampled, strict=True) if s},
        set(out.preempted_req_ids or ()),
    )
    for eco in results.values():
        log.outputs.extend(eco.outputs)
    return log
