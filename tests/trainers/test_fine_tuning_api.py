"""The OpenAI fine-tuning flow on the tiny model, with a real worker and the real trainer:
upload -> create (DPO, n_epochs) -> train -> "running" while deploying -> the auto-deployer's
outcome -> "succeeded" with the model name -> events and checkpoints; and pause/resume: a job
paused mid-run stops after a step with a resume point and, resumed, finishes with the steps and
losses of an uninterrupted run."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from contracts.store import Job, SqliteJobStore
from server.api.app import create_app
from server.auth import KeyRing
from server.auto_deploy import AutoDeployer
from server.errors import ServiceUnavailableError
from server.training import TrainingService
from tests.fakes import FakeEngine
from tests.trainers.conftest import jsonl, pairs
from trainers.worker import Worker, WorkerConfig

USER = "user-key"


def preference(n: int) -> list[dict[str, Any]]:
    """OpenAI's preference format, made from the shared pair fixtures."""
    return [{"input": {"messages": [{"role": "user", "content": p["prompt"]}]},
             "preferred_output": [{"role": "assistant", "content": p["chosen"]}],
             "non_preferred_output": [{"role": "assistant", "content": p["rejected"]}]}
            for p in pairs(n)]


class FakeDeployments:
    """What the auto-deployer needs from the deployment service: the first ``busy`` deploys
    answer 503 (the engine is still starting), then every deploy goes live."""

    def __init__(self, busy: int = 0) -> None:
        self.deployed: list[tuple[str, str, str]] = []
        self.busy = busy

    async def proposed_checkpoints(self) -> set[str]:
        return {c for c, _, _ in self.deployed}

    async def deploy_once(self, checkpoint: str, name: str, mode: str,
                          check: object = None) -> dict[str, Any]:
        if self.busy:
            self.busy -= 1
            raise ServiceUnavailableError("deployment changes need a ready engine")
        self.deployed.append((checkpoint, name, mode))
        return {"name": name, "version": 1, "checkpoint": checkpoint, "mode": mode,
                "status": "live", "reason": None}


@pytest.fixture
def training(store: SqliteJobStore, home: Path, tiny_model: Path) -> TrainingService:
    return TrainingService(store, home, base_model=str(tiny_model), served_name="tiny")


@pytest.fixture
def client(training: TrainingService) -> Iterator[TestClient]:
    app = create_app(FakeEngine(), KeyRing.build([USER], []), training=training)
    app.state.deployments = FakeDeployments(busy=1)  # a server that can deploy
    with TestClient(app, headers={"Authorization": f"Bearer {USER}"}) as c:
        yield c


def test_openai_flow_end_to_end(
    client: TestClient, training: TrainingService, store: SqliteJobStore, home: Path
) -> None:
    f = client.post("/v1/files", files={"file": ("prefs.jsonl", jsonl(preference(8)))},
                    data={"purpose": "fine-tune"}).json()
    hyper = {"beta": 0.1, "n_epochs": 1, "batch_size": 4, "max_length": 64,
             "max_prompt_length": 32}
    r = client.post("/v1/fine_tuning/jobs", json={
        "model": "tiny", "training_file": f["id"], "suffix": "prefs",
        "method": {"type": "dpo", "dpo": {"hyperparameters": hyper}}})
    assert r.status_code == 200, r.text
    job = r.json()
    name = f"ft:tiny:prefs:{job['id']}"
    assert job["total_steps"] == 2  # 1 epoch of 8 examples in batches of 4
    assert job["deployment"] == name
    Worker(store, WorkerConfig(home, worker_id="w")).run_forever(max_jobs=1)
    trained = client.get(f"/v1/fine_tuning/jobs/{job['id']}").json()
    # Trained, not deployed yet: an OpenAI client must not get a name that does not answer.
    assert (trained["status"], trained["fine_tuned_model"]) == ("running", None)
    assert client.get(f"/v1/fine_tuning/jobs/{job['id']}/checkpoints").json()["data"] == []
    deployments = client.app.state.deployments  # type: ignore[attr-defined]
    deployer = AutoDeployer(training, deployments)
    assert asyncio.run(deployer.deploy_finished()) == []  # engine not ready: tried again later
    assert client.get(f"/v1/fine_tuning/jobs/{job['id']}").json()["status"] == "running"
    asyncio.run(deployer.deploy_finished())
    assert deployments.deployed == [(trained["checkpoint_id"], name, "adapter")]
    done = client.get(f"/v1/fine_tuning/jobs/{job['id']}").json()
    assert (done["status"], done["fine_tuned_model"]) == ("succeeded", name)
    assert done["finished_at"] is not None and done["error"] is None
    checkpoints = client.get(f"/v1/fine_tuning/jobs/{job['id']}/checkpoints").json()["data"]
    assert len(checkpoints) == 1
    ckpt = checkpoints[0]
    assert ckpt["object"] == "fine_tuning.job.checkpoint" and ckpt["step_number"] == 2
    assert ckpt["fine_tuned_model_checkpoint"] == name and ckpt["fine_tuning_job_id"] == job["id"]
    assert ckpt["metrics"]["step"] == 2.0 and isinstance(ckpt["metrics"]["train_loss"], float)
    events = client.get(f"/v1/fine_tuning/jobs/{job['id']}/events",
                        params={"limit": 100}).json()["data"]
    assert events[0]["message"].startswith(f"fine-tuned model {name} is live")
    assert [e["data"]["step"] for e in events if e["type"] == "metrics"] == [2, 1]
    assert any(e["message"].startswith("training finished: checkpoint") for e in events)


class _PauseAt(SqliteJobStore):
    """A store that asks to pause its job once ``step`` is recorded (a client's request at
    exactly that moment)."""

    pause_at = 2

    def record_step(self, job_id: str, step: int, metrics: dict[str, float]) -> None:
        super().record_step(job_id, step, metrics)
        if step == self.pause_at:
            self.request_pause(job_id)


def _losses(store: SqliteJobStore, job_id: str) -> list[tuple[int, float]]:
    return [(m["step"], m["loss"]) for m in store.metrics(job_id)]


def test_pause_stops_after_a_step_and_resumes_from_it(
    make_job: Callable[..., Job], store: SqliteJobStore, home: Path
) -> None:
    hyper = {"max_steps": 4, "checkpoint_every": 100, "learning_rate": 1e-3}
    reference = make_job("dpo", pairs(8), hyperparameters=hyper)
    Worker(store, WorkerConfig(home, worker_id="ref")).run_forever(max_jobs=1)
    job = make_job("dpo", pairs(8), hyperparameters=hyper)
    pausing = _PauseAt(store.path)
    Worker(pausing, WorkerConfig(home, worker_id="w1")).run_forever(max_jobs=1)
    paused = store.get_job(job.id)
    assert paused is not None and paused.status == "paused" and paused.step == 2
    assert int((paused.resume_path or "step-0").rsplit("-", 1)[1]) == 2  # saved at the pause
    assert paused.attempts == 0 and not paused.pause_requested  # a pause is not a failure
    assert Worker(store, WorkerConfig(home, worker_id="idle")).run_forever(max_jobs=1) == 0
    resumed = store.resume(job.id)
    assert resumed is not None and resumed.status == "queued"
    Worker(store, WorkerConfig(home, worker_id="w2")).run_forever(max_jobs=1)
    finished = store.get_job(job.id)
    assert finished is not None and finished.status == "succeeded"
    expected = _losses(store, reference.id)
    got = _losses(store, job.id)
    assert [s for s, _ in got] == [s for s, _ in expected] == [1, 2, 3, 4]
    assert [loss for _, loss in got] == pytest.approx([loss for _, loss in expected], abs=1e-6)
    messages = [e.message for e in store.events(job.id)]
    assert "pause requested" in messages and "job paused after step 2" in messages
    assert "resuming after step 2" in messages
