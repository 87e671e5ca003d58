"""The deployment gate refuses weights holding NaN or infinity (one such tensor poisons every
answer of the engine, adapters and base alike)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from server.checkpoint_gate import check_finite


def test_finite_weights_pass(tmp_path: Path) -> None:
    save_file({"a": torch.randn(4, 4), "ids": torch.arange(3)}, tmp_path / "adapter.safetensors")
    check_finite(tmp_path)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_a_non_finite_tensor_is_refused_by_name(tmp_path: Path, bad: float) -> None:
    poisoned = torch.zeros(3, 3)
    poisoned[1, 2] = bad
    save_file({"ok": torch.ones(2), "lora_B": poisoned}, tmp_path / "adapter.safetensors")
    with pytest.raises(ValueError, match="lora_B"):
        check_finite(tmp_path)


def test_a_reward_model_checkpoint_is_not_a_chat_model(tmp_path: Path) -> None:
    from server.checkpoint_gate import CheckpointChecks

    folder = tmp_path / "checkpoints" / "ckpt-rm"
    folder.mkdir(parents=True)
    (folder / "manifest.json").write_text(json.dumps(
        {"method": "reward_model", "format": "peft-lora", "base_model": {}}))
    checks = CheckpointChecks(None, tmp_path)  # type: ignore[arg-type]  # refused before the engine
    with pytest.raises(ValueError, match="/v1/rewards"):
        checks.verified_weights(folder, "adapter")
