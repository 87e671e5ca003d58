"""Grouped multi-LoRA kernels for vLLM's CPU path (installed into the worker process).

vLLM's PyTorch-native punica ops (``vllm.lora.ops.torch_ops``, used by ``PunicaWrapperCPU``)
gather one full ``(out, rank)`` weight matrix *per token* before an einsum: a 600-token prefill
through 30 layers materialises gigabytes of copies, so one prefill step with an adapter in the
batch took seconds here and every hot-swap smoke test waited behind it. They also read the slot
``-1`` (a token with no adapter) as the *last* slot, so a base-model request in a batch would
pick up the adapter loaded there once every slot is in use.

These replacements group the tokens by adapter slot and run one matmul per slot in use (a
handful per step), leaving tokens without an adapter untouched. Same signatures and the same
results for every token that has an adapter.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Groups:
    """Which adapter slot each token of a batch uses.

    ``slots``: the slots in use; ``position``: ``(T,)`` index into ``slots`` per token, ``-1``
    for a token without an adapter, or None when every token uses ``slots[0]``.
    """

    slots: tuple[int, ...]
    position: Tensor | None = None


def group_slots(slots: Tensor) -> Groups:
    """Group the tokens by adapter slot; slot ``-1`` (no adapter) is left out."""
    used = torch.unique(slots).tolist()  # sorted
    if len(used) == 1:
        return Groups(()) if used[0] < 0 else Groups((int(used[0]),))
    in_use = tuple(int(s) for s in used if s >= 0)
    lookup = torch.full((max(in_use) + 2,), -1, dtype=torch.long)  # last entry: slot -1
    lookup[list(in_use)] = torch.arange(len(in_use))
    return Groups(in_use, lookup[slots.long()])


def apply_groups(inputs: Tensor, weights: Tensor, groups: Groups, dtype: torch.dtype) -> Tensor:
    """``out[t] = weights[slot(t)] @ inputs[t]``, zero for tokens without an adapter.

    Several slots still cost one GEMM: the shrink (wide input, rank-sized output) multiplies by
    every slot in use and keeps each token's block; the expand (rank-sized input) places each
    token's input in its slot's block of a ``k * rank`` row, so one GEMM applies the right B.
    """
    stacked = weights.squeeze(1) if weights.dim() == 4 else weights  # (L, out, in)
    x = inputs.to(dtype)
    n_out, n_in = stacked.shape[1], stacked.shape[2]
    if not groups.slots:
        return x.new_zeros(x.shape[0], n_out)
    if groups.position is None:
        return x @ stacked[groups.slots[0]].to(dtype).T
    k, tokens = len(groups.slots), x.shape[0]
    chosen = stacked[list(groups.slots)].to(dtype)  # (k, out, in)
    position = groups.position
    has = (position >= 0).unsqueeze(1)  # (T, 1)
    safe = position.clamp_min(0)
    if n_in >= n_out:  # shrink
        every = (x @ chosen.reshape(k * n_out, n_in).T).view(tokens, k, n_out)
        picked = every.gather(1, safe.view(tokens, 1, 1).expand(tokens, 1, n_out)).squeeze(1)
        return picked * has
    blocks = x.new_zeros(tokens, k, n_in)
    blocks.scatter_(1, safe.view(tokens, 1, 1).expand(tokens, 1, n_in), (x * has).unsqueeze(1))
    return blocks.view(tokens, k * n_in) @ chosen.permute(1, 0, 2).reshape(n_out, k * n_in).T


def _per_slot(inputs: Tensor, weights: Tensor, slots: Tensor, dtype: torch.dtype) -> Tensor:
    if slots.numel() != inputs.shape[0]:
        # One slot for the whole batch; or prompt log-probabilities (``echo``), for which vLLM
        # runs the LM head on one request's prompt rows with the step's per-request sampler
        # slots: those rows cannot be matched to a slot, and a mixed batch would index out of
        # shape and kill the engine core. One slot in use: it is that request's. Several: the
        # request is a base-model one (the API refuses ``echo`` logprobs on deployments).
        single = slots.numel() >= 1 and bool((slots == slots.flatten()[0]).all())
        fill = int(slots.flatten()[0]) if single else -1
        slots = slots.new_full((inputs.shape[0],), fill)
    return apply_groups(inputs, weights, group_slots(slots), dtype)


def _write_shrink(output_tensor: Tensor, outputs: Tensor, scaling: float) -> None:
    output_tensor[:, : outputs.shape[1]] = scaling * outputs


def _write_expand(output_tensor: Tensor, outputs: Tensor, add_inputs: bool) -> None:
    # As vLLM's op: a single output row is broadcast, extra rows are dropped.
    limit = 1 if outputs.shape[0] == 1 else output_tensor.shape[0]
    cols = min(outputs.shape[1], output_tensor.shape[1])  # adapter and model may pad differently
    if add_inputs:
        output_tensor[:, :cols] += outputs[:limit, :cols]
    else:
        output_tensor[:, :cols] = outputs[:limit, :cols]


def _write_slice(
    output_tensor: Tensor, outputs: Tensor, offset: int, size: int, add_inputs: bool
) -> None:
    if add_inputs:
        output_tensor[:, offset : offset + size] += outputs
    else:
        output_tensor[:, offset : offset + size] = outputs


def bgmv_shrink(
    inputs: Tensor, lora_a_weights: Tensor, output_tensor: Tensor, lora_indices_tensor: Tensor,
    scaling: float = 1.0,
) -> None:
    outputs = _per_slot(inputs, lora_a_weights, lora_indices_tensor, output_tensor.dtype)
    _write_shrink(output_tensor, outputs, scaling)


def bgmv_expand(
    inputs: Tensor, lora_b_weights: Tensor, output_tensor: Tensor, lora_indices_tensor: Tensor,
    add_inputs: bool = True,
) -> None:
    outputs = _per_slot(inputs, lora_b_weights, lora_indices_tensor, output_tensor.dtype)
    _write_expand(output_tensor, outputs, add_inputs)


def bgmv_expand_slice(
    inputs: Tensor, lora_b_weights: Tensor, output_tensor: Tensor, lora_indices_tensor: Tensor,
    slice_offset: int, slice_size: int, add_inputs: bool = True,
) -> None:
    outputs = _per_slot(inputs, lora_b_weights, lora_indices_tensor, output_tensor.dtype)
    _write_slice(output_tensor, outputs, slice_offset, slice_size, add_inputs)


def _tokens(slots: Tensor, seq_lens: Tensor) -> Tensor:
    return torch.repeat_interleave(slots, seq_lens)


def sgmv_shrink(
    inputs: Tensor, lora_a_weights: Tensor, output_tensor: Tensor, b_seq_start_loc: Tensor,
    seq_len_tensor: Tensor, lora_indices_tensor: Tensor, batches: int, max_seq_length: int,
    token_nums: int, scaling: float,
) -> None:
    slots = _tokens(lora_indices_tensor, seq_len_tensor)
    bgmv_shrink(inputs, lora_a_weights, output_tensor, slots, scaling)


def sgmv_expand(
    inputs: Tensor, lora_b_weights: Tensor, output_tensor: Tensor, b_seq_start_loc: Tensor,
    seq_len_tensor: Tensor, lora_indices_tensor: Tensor, batches: int, max_seq_length: int,
    token_nums: int, add_inputs: bool = False,
) -> None:
    slots = _tokens(lora_indices_tensor, seq_len_tensor)
    bgmv_expand(inputs, lora_b_weights, output_tensor, slots, add_inputs)


def sgmv_expand_slice(
    inputs: Tensor, lora_b_weights: Tensor, output_tensor: Tensor, b_seq_start_loc: Tensor,
    seq_len_tensor: Tensor, lora_indices_tensor: Tensor, batches: int, max_seq_length: int,
    token_nums: int, slice_offset: int, slice_size: int, add_inputs: bool = False,
) -> None:
    slots = _tokens(lora_indices_tensor, seq_len_tensor)
    bgmv_expand_slice(
        inputs, lora_b_weights, output_tensor, slots, slice_offset, slice_size, add_inputs
    )


OPS = {
    "bgmv_shrink": bgmv_shrink,
    "bgmv_expand": bgmv_expand,
    "bgmv_expand_slice": bgmv_expand_slice,
    "sgmv_shrink": sgmv_shrink,
    "sgmv_expand": sgmv_expand,
    "sgmv_expand_slice": sgmv_expand_slice,
}

# -- the punica wrapper's per-layer calls ------------------------------------------------------
# A step calls the LoRA ops ~14 times per layer with the same token-to-slot mapping; grouping
# the tokens once per mapping (the wrapper's metadata changes only in ``update_metadata``)
# removes most of the per-call overhead, which dominated the step on CPU.
_GROUPS = "_alignserve_lora_groups"


def _groups(wrapper: Any, tokens: int) -> Groups | None:
    """The cached grouping of this step's tokens, or None if ``tokens`` is not this batch."""
    groups = wrapper.__dict__.get(_GROUPS)
    if groups is None:
        slots = wrapper.token_lora_indices
        groups = (slots.shape[0], group_slots(slots))
        wrapper.__dict__[_GROUPS] = groups
    count, grouping = groups
    return grouping if count == tokens else None


def _wrapper_methods(base: Any) -> dict[str, Callable[..., None]]:
    original_update = base.update_metadata

    def update_metadata(self: Any, *args: Any, **kwargs: Any) -> None:
        self.__dict__.pop(_GROUPS, None)
        original_update(self, *args, **kwargs)

    def shrink(self: Any, y: Tensor, x: Tensor, w_t_all: Tensor, scale: float) -> None:
        groups = _groups(self, x.shape[0])
        if groups is None:
            bgmv_shrink(x, w_t_all, y, self.token_lora_indices, scale)
        else:
            _write_shrink(y, apply_groups(x, w_t_all, groups, y.dtype), scale)

    def expand(self: Any, y: Tensor, x: Tensor, w_t_all: Tensor, add_inputs: bool) -> None:
        groups = _groups(self, x.shape[0])
        if groups is None:
            bgmv_expand(x, w_t_all, y, self.token_lora_indices, add_inputs)
        else:
            _write_expand(y, apply_groups(x, w_t_all, groups, y.dtype), add_inputs)

    def expand_slice(
        self: Any, y: Tensor, x: Tensor, w_t_all: Tensor, y_offset: int, y_slice_size: int,
        add_inputs: bool,
    ) -> None:
        groups = _groups(self, x.shape[0])
        if groups is None:
            bgmv_expand_slice(
                x, w_t_all, y, self.token_lora_indices, y_offset, y_slice_size, add_inputs
            )
        else:
            outputs = apply_groups(x, w_t_all, groups, y.dtype)
            _write_slice(y, outputs, y_offset, y_slice_size, add_inputs)

    return {
        "update_metadata": update_metadata,
        "_shrink_prefill": shrink,
        "_shrink_decode": shrink,
        "_expand_prefill": expand,
        "_expand_decode": expand,
        "_expand_slice_prefill": expand_slice,
        "_expand_slice_decode": expand_slice,
    }


def install() -> bool:
    """Point vLLM's CPU punica wrapper at the grouped ops; False where that wrapper is absent."""
    try:
        from vllm.lora.punica_wrapper import punica_cpu
    except ImportError:  # a vLLM build without the CPU wrapper (or without LoRA support)
        return False
    wrapper = punica_cpu.PunicaWrapperCPU
    methods = _wrapper_methods(wrapper)
    missing = [n for n in OPS if not hasattr(punica_cpu, n)]
    missing += [n for n in methods if not hasattr(wrapper, n)]
    if missing:
        logger.warning("vLLM's CPU LoRA wrapper lacks %s; keeping its own ops", missing)
        return False
    if getattr(wrapper, _GROUPS + "_installed", False):
        return True
    for name, op in OPS.items():
        setattr(punica_cpu, name, op)
    for name, method in methods.items():
        setattr(wrapper, name, method)
    setattr(wrapper, _GROUPS + "_installed", True)
    return True
