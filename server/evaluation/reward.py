"""Optional reward-model scores from an HTTP endpoint (e.g. a deployed AfD reward model).

The server's `POST /v1/rewards` speaks this contract (see `server/api/rewards.py`): POST
``{"model": NAME, "inputs": [{"prompt": ..., "response": ...}, ...]}`` to the URL, answer
``{"scores": [float, ...]}`` in the same order. Any service that speaks it can be plugged in
with ``--reward-url`` (and ``--reward-model``); without it the metric is simply absent.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Protocol

import httpx

logger = logging.getLogger(__name__)


class RewardScorer(Protocol):
    async def score(self, prompts: Sequence[str], responses: Sequence[str]) -> list[float]: ...


class HTTPRewardScorer:
    def __init__(self, url: str, model: str | None, api_key: str | None = None,
                 batch_size: int = 16, client: httpx.AsyncClient | None = None) -> None:
        self.url, self.model, self.batch_size = url, model, batch_size
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.client = client or httpx.AsyncClient(timeout=300.0, headers=headers)

    async def score(self, prompts: Sequence[str], responses: Sequence[str]) -> list[float]:
        if len(prompts) != len(responses):
            raise ValueError("prompts and responses differ in length")
        scores: list[float] = []
        for start in range(0, len(prompts), self.batch_size):
            inputs = [{"prompt": p, "response": r} for p, r in
                      zip(prompts[start:start + self.batch_size],
                          responses[start:start + self.batch_size], strict=True)]
            reply = await self.client.post(self.url, json={"model": self.model, "inputs": inputs})
            reply.raise_for_status()
            batch = reply.json().get("scores")
            if not isinstance(batch, list) or len(batch) != len(inputs):
                raise ValueError(f"{self.url}: expected {len(inputs)} scores in 'scores'")
            scores += [float(s) for s in batch]
        return scores
