"""Worker-side extension for full-weight swaps (loaded by vLLM via ``worker_extension_cls``).

Runs inside the vLLM worker, next to the model. Two traps seen on CPU (docs/vllm_cpu.md):
with tied embeddings the output layer keeps stale pre-packed weights after a reload, so it is
re-dispatched here; the prefix cache is reset by the engine after every swap.
"""

from __future__ import annotations

import hashlib
import logging
from typing import Any

import torch

from server.engine import cpu_lora_ops
from server.engine.lifeline import die_with_parent

logger = logging.getLogger(__name__)
die_with_parent()  # imported in the engine core (one device) or in each worker process

# vLLM imports this module inside the worker process (whatever the process layout), so this is
# the one place that reaches the worker's LoRA ops before its first step.
if not torch.cuda.is_available() and cpu_lora_ops.install():
    logger.info("grouped CPU LoRA ops installed")


class WeightSwapExtension:
    """Mixed into vLLM's worker class; methods are reached through ``collective_rpc``."""

    model_runner: Any

    def alignserve_swap_weights(self, weights_path: str) -> str:
        self.model_runner.reload_weights(weights_path=weights_path)
        model = self.model_runner.get_model()
        if not torch.cuda.is_available():
            from vllm.model_executor.layers.utils import dispatch_cpu_unquantized_gemm

            lm_head = getattr(model, "lm_head", None)
            if lm_head is not None and getattr(lm_head, "weight", None) is not None:
                dispatch_cpu_unquantized_gemm(lm_head, remove_weight=False)
        return self.alignserve_weights_digest()

    def alignserve_weights_digest(self) -> str:
        """A cheap fingerprint of the live weights (first values of every tensor)."""
        digest = hashlib.sha256()
        for name, tensor in sorted(self.model_runner.get_model().state_dict().items()):
            digest.update(name.encode())
            digest.update(tensor.detach().flatten()[:16].float().cpu().numpy().tobytes())
        return digest.hexdigest()[:16]
