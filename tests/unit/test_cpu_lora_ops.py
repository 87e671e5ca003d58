"""The grouped CPU LoRA ops against vLLM's own PyTorch ops, plus the no-adapter rows."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import torch

from server.engine import cpu_lora_ops

ref = pytest.importorskip("vllm.lora.ops.torch_ops.lora_ops")

SLOTS, RANK, IN, OUT = 4, 8, 48, 40


@pytest.fixture
def weights() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    a = torch.randn(SLOTS, 1, RANK, IN, generator=g)
    return a, torch.randn(SLOTS, 1, OUT, RANK, generator=g)


SLOT_CASES = [[0] * 6, [2, 0, 1, 1, 3, 0], [1], [3, -1, 0, -1, 2, -1], [-1] * 6]


@pytest.mark.parametrize("slots", SLOT_CASES)
@pytest.mark.parametrize("add_inputs", [False, True])
def test_bgmv_matches_vllm_on_adapter_rows_and_leaves_other_rows(
    weights: tuple[torch.Tensor, torch.Tensor], slots: list[int], add_inputs: bool
) -> None:
    a, b = weights
    idx = torch.tensor(slots)
    tokens = 6
    x = torch.randn(tokens, IN)
    start = torch.randn(tokens, OUT + 8)
    has = (idx >= 0).expand(tokens) if idx.numel() == 1 else idx >= 0

    ours_mid, theirs_mid = torch.zeros(tokens, RANK), torch.zeros(tokens, RANK)
    cpu_lora_ops.bgmv_shrink(x, a, ours_mid, idx, 0.5)
    ref.bgmv_shrink(x, a, theirs_mid, idx if idx.numel() > 1 else idx.expand(tokens), 0.5)
    torch.testing.assert_close(ours_mid[has], theirs_mid[has])
    assert not ours_mid[~has].any()  # no adapter: no LoRA contribution

    ours, theirs = start.clone(), start.clone()
    cpu_lora_ops.bgmv_expand_slice(theirs_mid, b, ours, idx, 4, OUT, add_inputs)
    ref.bgmv_expand_slice(
        theirs_mid, b, theirs, idx if idx.numel() > 1 else idx.expand(tokens), 4, OUT, add_inputs
    )
    torch.testing.assert_close(ours[has], theirs[has])
    expected_rest = start[~has].clone()
    if not add_inputs:
        expected_rest[:, 4 : 4 + OUT] = 0
    torch.testing.assert_close(ours[~has], expected_rest)


def test_sgmv_expands_slots_per_sequence(weights: tuple[torch.Tensor, torch.Tensor]) -> None:
    a, b = weights
    seq_lens, slots = torch.tensor([3, 1, 2]), torch.tensor([1, -1, 2])
    x = torch.randn(6, IN)
    mid = torch.zeros(6, RANK)
    cpu_lora_ops.sgmv_shrink(x, a, mid, torch.tensor([0, 3, 4]), seq_lens, slots, 3, 3, 6, 1.0)
    out = torch.zeros(6, OUT)
    cpu_lora_ops.sgmv_expand(mid, b, out, torch.tensor([0, 3, 4]), seq_lens, slots, 3, 3, 6, False)
    per_token = [1, 1, 1, -1, 2, 2]
    for t, s in enumerate(per_token):
        expected = torch.zeros(OUT) if s < 0 else b[s, 0] @ (a[s, 0] @ x[t])
        torch.testing.assert_close(out[t], expected, rtol=1e-4, atol=1e-4)


@pytest.fixture
def installed() -> Iterator[Any]:
    punica_cpu = pytest.importorskip("vllm.lora.punica_wrapper.punica_cpu")
    wrapper = punica_cpu.PunicaWrapperCPU
    saved_ops = {name: getattr(punica_cpu, name) for name in cpu_lora_ops.OPS}
    saved = dict(vars(wrapper))
    try:
        assert cpu_lora_ops.install()
        yield punica_cpu
    finally:
        for name, op in saved_ops.items():
            setattr(punica_cpu, name, op)
        for name in list(vars(wrapper)):
            if name not in saved:
                delattr(wrapper, name)
        for name, value in saved.items():
            if name not in ("__dict__", "__weakref__"):
                setattr(wrapper, name, value)


@pytest.mark.parametrize("prefill", [True, False])
def test_wrapper_applies_each_tokens_adapter_and_none_without_one(
    installed: Any, prefill: bool
) -> None:
    """``add_lora_linear`` through the patched wrapper, mapping changed between two calls."""
    from vllm.lora.layers.utils import LoRAMapping

    g = torch.Generator().manual_seed(1)
    slices = (24, 16)
    a = tuple(torch.randn(SLOTS, 1, RANK, IN, generator=g) for _ in slices)
    b = tuple(torch.randn(SLOTS, 1, n, RANK, generator=g) for n in slices)
    wrapper = installed.PunicaWrapperCPU(64, 8, "cpu")
    for tokens in ([1, 1, 3, 3, 0, 0], [2, 2, 0, 4, 4, 0]):  # adapter ids; 0 = none
        slot_of = {0: -1, 1: 0, 2: 1, 3: 3, 4: 2}
        lora_index_to_id = [1, 2, 4, 3]
        mapping = LoRAMapping(tuple(tokens), tuple(tokens), is_prefill=prefill)
        wrapper.update_metadata(mapping, lora_index_to_id, SLOTS + 1, 1000)
        x = torch.randn(len(tokens), IN, generator=g)
        y = torch.randn(len(tokens), sum(slices), generator=g)
        before = y.clone()
        wrapper.add_lora_linear(y, x, a, b, 0.5, slices)
        for t, adapter in enumerate(tokens):
            slot = slot_of[adapter]
            expected = before[t].clone()
            if slot >= 0:
                offset = 0
                for i, n in enumerate(slices):
                    delta = b[i][slot, 0] @ (a[i][slot, 0] @ x[t]) * 0.5
                    expected[offset : offset + n] += delta
                    offset += n
            torch.testing.assert_close(y[t], expected, rtol=1e-4, atol=1e-4)


def test_install_points_the_cpu_wrapper_at_the_grouped_ops(installed: Any) -> None:
    assert all(getattr(installed, n) is op for n, op in cpu_lora_ops.OPS.items())
    assert cpu_lora_ops.install()  # idempotent
