"""The recipe type and its registry."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from align_core import Registry
from trainers.loop import Stage, TrainContext

Records = list[dict[str, Any]]


def _nothing(ctx: TrainContext, folder: Path) -> None:
    return None


@dataclass(frozen=True)
class Recipe:
    """``stages``: the stages to run on the dataset's records; ``save_extra``: extra files
    for the final checkpoint (beside the policy)."""

    stages: Callable[[TrainContext, Records], list[Stage]]
    save_extra: Callable[[TrainContext, Path], None] = _nothing


RECIPES: Registry[Recipe] = Registry("recipe")
