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
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():  # dropout on the GPU
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


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
    # On the CPU: weights are copied into the modules wherever they live, and the optimizer
    # moves its state to its parameters' device.
    state: dict[str, Any] = torch.load(Path(path) / STATE, weights_only=False, map_location="cpu")
    return state
