"""Best-of-N selection in the generation service, with a fake reward model."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from server.api.app import create_app
from server.auth import KeyRing
from server.errors import NotFoundError
from tests.fakes import FakeEngine


class LengthRewards:
    """Rewards longer answers; knows one reward model id."""

    def __init__(self) -> None:
        self.calls: list[Sequence[str]] = []

    def check(self, reward_model: str) -> Path:
        if reward_model != "rm-1":
            raise NotFoundError(f"reward model '{reward_model}' not found")
        return Path("/fake")

    async def score(
        self, reward_model: str, messages: list, completions: Sequence[str]
    ) -> list[float]:
        self.calls.append(completions)
        return [float(len(c)) for c in completions]


@pytest.fixture
def setup() -> Iterator[tuple[TestClient, FakeEngine, LengthRewards]]:
    engine = FakeEngine()
    engine.replies = ["short", "the longest answer", "medium one"]
    app = create_app(engine, KeyRing.build([], []))
    rewards = LengthRewards()
    app.state.generation.rewards = rewards
    with TestClient(app) as client:
        yield client, engine, rewards


def body(**kw: object) -> dict[str, object]:
    b: dict[str, object] = {
        "model": "fake-model",
        "messages": [{"role": "user", "content": "hi"}],
        "best_of_n": {"n": 3, "reward_model": "rm-1"},
    }
    b.update(kw)
    return b


def test_best_sample_wins_and_usage_counts_all(setup: tuple) -> None:
    client, engine, rewards = setup
    r = client.post("/v1/chat/completions", json=body())
    assert r.status_code == 200, r.text
    choice = r.json()["choices"][0]
    assert choice["message"]["content"] == "the longest answer"
    assert choice["best_of_n_rewards"] == [5.0, 18.0, 10.0]
    assert r.json()["usage"]["completion_tokens"] == 5 + 18 + 10
    assert engine.requests[-1].sampling.n == 3
    assert list(rewards.calls[-1]) == ["short", "the longest answer", "medium one"]


def test_best_of_n_streams_the_winner(setup: tuple) -> None:
    client, _, _ = setup
    r = client.post("/v1/chat/completions", json=body(stream=True))
    events = [e.removeprefix("data: ") for e in r.text.split("\n\n") if e.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
    assert text == "the longest answer"
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"


@pytest.mark.parametrize(
    ("extra", "status", "fragment"),
    [
        ({"n": 2}, 400, "use n=1"),
        ({"temperature": 0}, 400, "temperature > 0"),
        ({"best_of_n": {"n": 3, "reward_model": "nope"}}, 404, "not found"),
        ({"best_of_n": {"n": 0, "reward_model": "rm-1"}}, 400, "best_of_n.n"),
    ],
)
def test_best_of_n_errors(setup: tuple, extra: dict, status: int, fragment: str) -> None:
    client, _, _ = setup
    r = client.post("/v1/chat/completions", json=body(**extra))
    assert r.status_code == status
    assert fragment in r.json()["error"]["message"]


class PairRewards(LengthRewards):
    async def score_pairs(
        self, reward_model: str, pairs: Sequence[tuple[list, str]]
    ) -> list[float]:
        self.check(reward_model)
        return [float(len(m[-1]["content"]) + len(r)) for m, r in pairs]


def test_rewards_route_scores_pairs_in_order() -> None:
    app = create_app(FakeEngine(), KeyRing.build([], []))
    app.state.generation.rewards = PairRewards()
    with TestClient(app) as client:
        r = client.post("/v1/rewards", json={"model": "rm-1", "inputs": [
            {"prompt": "ab", "response": "cde"},
            {"messages": [{"role": "user", "content": "x"}], "response": "yz"},
        ]})
        assert r.status_code == 200, r.text
        assert r.json() == {"object": "list", "model": "rm-1", "scores": [5.0, 3.0]}
        for bad, status, fragment in [
            ({"model": "rm-1", "inputs": []}, 400, "inputs"),
            ({"model": "rm-1", "inputs": [{"response": "a"}]}, 400, "exactly one"),
            ({"model": "nope", "inputs": [{"prompt": "a", "response": "b"}]}, 404, "not found"),
        ]:
            r = client.post("/v1/rewards", json=bad)
            assert r.status_code == status, r.text
            assert fragment in r.json()["error"]["message"]
