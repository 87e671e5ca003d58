"""AfD's initial samples and LD-Align's first answers come from the serving engine when the job
names one; rDPO trains on the scores a pairs dataset carries. Real jobs on the tiny model; the
engine is a small HTTP server speaking the chat-completions shape, which records what it was
asked (tests/real/test_align_loop.py runs the real engine)."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from contracts.datasets import DatasetError, parse_jsonl
from contracts.store import Job, SqliteJobStore
from tests.trainers.chat_server import ChatServer
from tests.trainers.conftest import demonstrations, pairs, run_job

GEN = {"generation": {"max_new_tokens": 6, "temperature": 0.5, "top_p": 0.9}}


class Engine(ChatServer):
    """Answers ``engine answer N`` to its N-th request."""

    def __init__(self) -> None:
        super().__init__(lambda body: (200, f"engine answer {len(self.requests)}"))


@pytest.fixture
def engine() -> Iterator[Engine]:
    with Engine() as e:
        yield e


def test_afd_draws_the_initial_samples_through_the_engine(
    make_job: Callable[..., Job], store: SqliteJobStore, home: Path, engine: Engine
) -> None:
    job = make_job("afd", demonstrations(), max_prompts=4, samples_per_prompt=2, **GEN,
                   engine={"base_url": engine.url, "model": "served-base"},
                   hyperparameters={"max_steps": 4, "learning_rate": 1e-2})
    run_job(store, home, job)
    init = torch.load(home / "jobs" / job.id / "afd-init-samples.pt", weights_only=False)
    texts = [s["completion"] for s in init["samples"]]
    assert len(engine.requests) == 8  # the SFT policy's samples stay in the worker
    assert sorted(texts) == sorted(f"engine answer {i}" for i in range(1, 9))
    asked = engine.requests[0]
    assert asked["path"] == "/v1/chat/completions" and asked["model"] == "served-base"
    assert (asked["max_tokens"], asked["temperature"], asked["top_p"]) == (6, 0.5, 0.9)
    sft = torch.load(home / "jobs" / job.id / "afd-sft-samples.pt", weights_only=False)
    assert not any(s["completion"].startswith("engine answer") for s in sft["samples"])


def test_ld_align_first_iteration_answers_through_the_engine(
    make_job: Callable[..., Job], store: SqliteJobStore, home: Path, engine: Engine
) -> None:
    job = make_job("ld_align", demonstrations(4), iterations=2, autoencoder_steps=5, **GEN,
                   engine={"base_url": engine.url, "model": "served-base"},
                   hyperparameters={"max_steps": 4, "learning_rate": 1e-2})
    run_job(store, home, job)
    first = torch.load(home / "jobs" / job.id / "ld_align-iteration-0.pt", weights_only=False)
    second = torch.load(home / "jobs" / job.id / "ld_align-iteration-1.pt", weights_only=False)
    assert len(engine.requests) == 4
    assert all(p["rejected"].startswith("engine answer") for p in first["pairs"])
    assert not any(p["rejected"].startswith("engine answer") for p in second["pairs"])


def test_rdpo_trains_on_the_scores_the_pairs_carry(
    make_job: Callable[..., Job], store: SqliteJobStore, home: Path
) -> None:
    rows = [{**p, "chosen_score": 0.9, "rejected_score": 0.2} for p in pairs(4)]
    job = make_job("rdpo", rows, hyperparameters={"max_steps": 2, "learning_rate": 1e-2})
    run_job(store, home, job)
    data = torch.load(home / "jobs" / job.id / "rdpo-data.pt", weights_only=False)
    assert data["chosen_scores"].tolist() == pytest.approx([0.9] * 4)
    assert data["rejected_scores"].tolist() == pytest.approx([0.2] * 4)


def _parse(rec: dict[str, Any]) -> list[dict[str, Any]]:
    return parse_jsonl(json.dumps(rec).encode(), "pairs")[1]


@pytest.mark.parametrize(("extra", "message"), [
    ({"chosen_score": 1.0}, "field 'rejected_score': needed with 'chosen_score'"),
    ({"rejected_score": 1.0}, "field 'chosen_score': needed with 'rejected_score'"),
    ({"chosen_score": "high", "rejected_score": 0}, "field 'chosen_score': must be a finite"),
    ({"chosen_score": 0, "rejected_score": True}, "field 'rejected_score': must be a finite"),
    ({"chosen_score": 0, "rejected_score": None}, "field 'rejected_score': must be a finite"),
])
def test_pair_scores_are_checked(extra: dict[str, Any], message: str) -> None:
    with pytest.raises(DatasetError, match=message):
        _parse({"prompt": "q", "chosen": "a", "rejected": "b", **extra})


def test_pair_scores_are_kept() -> None:
    rec = {"prompt": "q", "chosen": "a", "rejected": "b", "chosen_score": 1, "rejected_score": 0}
    assert _parse(rec) == [{
        "messages": [{"role": "user", "content": "q"}], "chosen": "a", "rejected": "b",
        "chosen_score": 1.0, "rejected_score": 0.0}]
