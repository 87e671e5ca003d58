"""``POST /v1/rewards``: score (prompt, response) pairs with a deployed reward model.

Reward models are checkpoints that carry ``reward_model/``: AfD's discriminator, or the
Bradley-Terry model of method ``reward_model``. The score is the model's scalar logit, the reward
Best-of-N maximises; the evaluation's reward-model metric
(``alignserve eval --reward-url .../v1/rewards --reward-model <checkpoint id>``) uses it.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field, model_validator

from server.api.deps import UserScope
from server.best_of_n import RewardModels
from server.errors import InvalidRequestError
from server.names import CHECKPOINT_ID_PATTERN

router = APIRouter(prefix="/v1")
MAX_INPUTS = 256


class RewardInput(BaseModel):
    model_config = ConfigDict(extra="forbid")
    prompt: str | None = Field(default=None, description="A single user turn.")
    messages: list[dict[str, str]] | None = Field(
        default=None, description="The conversation before the response (instead of prompt)."
    )
    response: str

    @model_validator(mode="after")
    def _one_context(self) -> RewardInput:
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("give exactly one of 'prompt' and 'messages'")
        return self

    def conversation(self) -> list[dict[str, str]]:
        if self.messages is not None:
            return self.messages
        return [{"role": "user", "content": self.prompt or ""}]


class RewardRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str = Field(
        pattern=CHECKPOINT_ID_PATTERN,
        description="Checkpoint id of a reward model (methods afd, reward_model).",
    )
    inputs: Annotated[list[RewardInput], Field(min_length=1, max_length=MAX_INPUTS)]


@router.post("/rewards")
async def score(body: RewardRequest, request: Request, _: UserScope) -> dict[str, Any]:
    rewards: RewardModels | None = getattr(request.app.state.generation, "rewards", None)
    if rewards is None:
        raise InvalidRequestError("reward models are not available here", param="model")
    scores = await rewards.score_pairs(
        body.model, [(item.conversation(), item.response) for item in body.inputs]
    )
    return {"object": "list", "model": body.model, "scores": scores}
