"""Best-of-N with a deployed reward model (AfD's Init-SFT discriminator, docs/algorithms.md §4.2).

The policy samples N completions; the reward model scores each; the highest reward wins
(``align_core.best_of_n``). Reward models are checkpoints that carry ``reward_model/``; they are
verified against their manifest before first use and kept loaded (a few at most).
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path

import torch

from align_core.afd import best_of_n
from contracts.checkpoints import verify_checkpoint
from server.errors import InvalidRequestError, NotFoundError
from trainers.reward import RewardModel, reward_model_folder

logger = logging.getLogger(__name__)


class RewardModels:
    def __init__(self, home: Path, base_model: Path, capacity: int = 2):
        self.checkpoints = home / "checkpoints"
        self.base_model = base_model
        self.capacity = capacity
        self._loaded: OrderedDict[str, RewardModel] = OrderedDict()
        self._lock = asyncio.Lock()

    def check(self, reward_model: str, param: str = "best_of_n.reward_model") -> Path:
        """The reward model folder of checkpoint ``reward_model``; 404/400 otherwise."""
        folder = (self.checkpoints / reward_model).resolve()
        if folder.parent != self.checkpoints.resolve() or not folder.is_dir():
            raise NotFoundError(
                f"reward model '{reward_model}' not found", param=param
            )
        found = reward_model_folder(folder)
        if found is None:
            raise InvalidRequestError(
                f"checkpoint '{reward_model}' carries no reward model (train one with method "
                "'reward_model' on preference pairs, or 'afd' on demonstrations)",
                param=param,
            )
        return found

    async def score(
        self, reward_model: str, messages: list[dict[str, str]], completions: Sequence[str]
    ) -> list[float]:
        model = await self._get(reward_model)
        rewards = await asyncio.to_thread(model.score, messages, completions)
        return [float(r) for r in rewards]

    async def score_pairs(
        self, reward_model: str, pairs: Sequence[tuple[list[dict[str, str]], str]]
    ) -> list[float]:
        """Rewards of (conversation, completion) pairs, in order (``POST /v1/rewards``)."""
        model = await self._get(reward_model, param="model")
        rewards = await asyncio.to_thread(model.score_pairs, pairs)
        return [float(r) for r in rewards]

    async def _get(
        self, reward_model: str, param: str = "best_of_n.reward_model"
    ) -> RewardModel:
        async with self._lock:
            if reward_model in self._loaded:
                self._loaded.move_to_end(reward_model)
                return self._loaded[reward_model]
            folder = self.check(reward_model, param)
            bad = await asyncio.to_thread(verify_checkpoint, folder.parent)
            if bad:
                raise InvalidRequestError(
                    f"reward model '{reward_model}' failed its checksum check: {', '.join(bad)}",
                    param=param,
                )
            model = await asyncio.to_thread(RewardModel.load, folder, self.base_model)
            self._loaded[reward_model] = model
            while len(self._loaded) > self.capacity:
                self._loaded.popitem(last=False)
            logger.info("reward model %s loaded", reward_model)
            return model


def pick_best(rewards: list[float]) -> int:
    return int(best_of_n(torch.tensor([rewards]))[0])
