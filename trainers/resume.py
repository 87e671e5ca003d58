"""Resume points of a training run: model/optimizer/RNG state at a step, written atomically."""

from __future__ import annotations

import random
import shutil
from pathlib import Path
from typing import Any

import torch

from contracts.checkpoints import write_atomically

STATE = "state.pt"


def rng_state() -> dict[str, Any]:
    return {"torch": torch.get_rng_state(), "python": random.getstate()}


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])


def save_resume_state(folder: Path, step: int, state: dict[str, Any]) -> Path:
    """Write ``folder/step-<n>`` (state.pt) and drop older resume points."""
    target = folder / f"step-{step:08d}"

    def fill(tmp: Path) -> None:
        torch.save({"step": step, **state}, tmp / STATE)

    write_atomically(target, fill)
    for old in folder.glob("step-*"):
        if old != target:
            shutil.rmtree(old, ignore_errors=True)
    return target


def load_resume_state(path: str | Path) -> dict[str, Any]:
    state: dict[str, Any] = torch.load(Path(path) / STATE, weights_only=False)
    return state
