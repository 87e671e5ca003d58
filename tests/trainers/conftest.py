"""Fixtures of the trainer tier: a tiny random Llama (built once per session), a fresh home."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from contracts.checkpoints import verify_checkpoint
from contracts.datasets import import_dataset
from contracts.specs import parse_spec, total_steps
from contracts.store import Job, SqliteJobStore
from tests.trainers.tiny import build_tiny_model
from trainers.worker import Worker, WorkerConfig

SMALL = {"max_length": 64, "max_prompt_length": 32, "batch_size": 4}


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "home"


@pytest.fixture
def store(home: Path) -> SqliteJobStore:
    return SqliteJobStore.at_home(home)


def jsonl(rows: list[dict[str, Any]]) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


def pairs(n: int = 8) -> list[dict[str, Any]]:
    return [{"prompt": f"question {i} please", "chosen": "I'm sorry, I can't help with that.",
             "rejected": f"Here is how to bake bread {i}."} for i in range(n)]


def pointwise(n: int = 8) -> list[dict[str, Any]]:
    return [{"prompt": f"question {i}", "label": i % 2 == 1,
             "completion": "Hello there, friend." if i % 2 else "The lazy dog bakes bread."}
            for i in range(n)]


def demonstrations(n: int = 8) -> list[dict[str, Any]]:
    return [{"prompt": f"question {i}", "completion": "Hello there, how are you today?"}
            for i in range(n)]


@pytest.fixture
def make_job(
    store: SqliteJobStore, home: Path, tiny_model: Path
) -> Callable[..., Job]:
    """Import ``rows`` and queue a job for ``method`` on the tiny model."""

    def make(method: str, rows: list[dict[str, Any]], **fields: Any) -> Job:
        dataset = import_dataset(store, home, jsonl(rows))
        hyper = {**SMALL, **fields.pop("hyperparameters", {})}
        body = {"method": method, "dataset": dataset.id, "model": str(tiny_model),
                "hyperparameters": hyper, **fields}
        spec = parse_spec(body)
        return store.create_job(method, spec.model_dump(mode="json"), total_steps(spec))

    return make


def run_job(store: SqliteJobStore, home: Path, job: Job) -> tuple[Job, Path]:
    """Run the queued job through the real worker; it must succeed with a verified checkpoint.
    Returns the finished job and its checkpoint folder."""
    Worker(store, WorkerConfig(home, worker_id="test")).run_forever(max_jobs=1)
    done = store.get_job(job.id)
    assert done is not None and done.status == "succeeded", done and done.error
    assert done.checkpoint_id is not None
    folder = home / "checkpoints" / done.checkpoint_id
    assert verify_checkpoint(folder) == []
    return done, folder
