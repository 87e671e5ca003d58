"""Swaps, run on the engine thread: adapter loads/unloads and drained full-weight reloads."""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

from server.engine.deployments import ModelVersion

if TYPE_CHECKING:
    from server.engine.vllm_engine import VLLMEngine

logger = logging.getLogger(__name__)

# One token is a whole forward pass (prefill) through the new weights and the sampler: enough to
# prove they load and run, at the cost of a single engine step while clients are waiting.
SMOKE_TOKENS = 1


def lora_request(version: ModelVersion) -> Any:
    from vllm.lora.request import LoRARequest

    assert version.lora_id is not None
    return LoRARequest(version.label, version.lora_id, str(version.path))


def load_adapter(engine: VLLMEngine, version: ModelVersion) -> None:
    if not engine.llm.add_lora(lora_request(version)):
        raise RuntimeError(f"vLLM refused adapter {version.label}")
    version.loaded = True


def unload_if_idle(engine: VLLMEngine, version: ModelVersion) -> None:
    """Unload an adapter no request uses any more (never one that is live)."""
    if (
        version.mode == "adapter"
        and version.loaded
        and version.inflight == 0
        and version.state in ("retired", "failed")
    ):
        engine.llm.remove_lora(version.lora_id)
        version.loaded = False
        logger.info("adapter %s unloaded", version.label)


def reload_weights(engine: VLLMEngine, version: ModelVersion) -> None:
    """Replace the base weights in place; the engine must be drained (no request running)."""
    engine.llm.collective_rpc("alignserve_swap_weights", kwargs={"weights_path": str(version.path)})
    # Cached KV blocks were computed with the old weights; new prompts must not reuse them.
    engine.llm.reset_prefix_cache()
    engine.table.weights = version


def full_swap(
    engine: VLLMEngine, version: ModelVersion, smoke_prompt: list[int]
) -> dict[str, float]:
    """Reload to ``version``, smoke-test it, and restore the previous weights on any failure.

    Returns the seconds of each phase (``reload_s``, ``smoke_s``).
    """
    previous = engine.table.weights
    started = time.monotonic()
    try:
        reload_weights(engine, version)
        reloaded = time.monotonic()
        smoke_sync(engine, smoke_prompt)
    except Exception:
        logger.exception("full swap to %s failed; restoring %s", version.label, previous.label)
        reload_weights(engine, previous)
        raise
    return {"reload_s": reloaded - started, "smoke_s": time.monotonic() - reloaded}


def smoke_sync(engine: VLLMEngine, prompt_ids: list[int], lora: Any = None) -> list[int]:
    """A short greedy generation on a drained engine; fails on empty or errored output."""
    from vllm import SamplingParams

    rid = f"smoke-{time.monotonic_ns()}"
    engine.llm.add_request(
        rid,
        {"prompt_token_ids": prompt_ids},
        SamplingParams(temperature=0.0, max_tokens=SMOKE_TOKENS),
        lora_request=lora,
    )
    tokens: list[int] = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        for out in engine.llm.step():
            if out.request_id == rid and out.finished:
                tokens = list(out.outputs[0].token_ids)
                if not tokens:
                    raise RuntimeError("smoke generation produced no tokens")
                return tokens
    engine.llm.abort_request([rid])
    raise RuntimeError("smoke generation did not finish in 60 s")
