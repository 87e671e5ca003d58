"""A job's ``deploy.gate`` through the auto-deployer and the real DeploymentService: the staged
version answers the gate's prompts, a failing version is refused with the numbers (job events,
checkpoint view) and what was live keeps serving. The engine and its switch are the in-memory
fakes of test_reconciler; tests/real/test_align_loop.py runs the real engine."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from contracts.checkpoints import base_model_identity
from contracts.records import CheckpointRecord
from contracts.specs import parse_spec
from contracts.store import Store
from server.auto_deploy import AutoDeployer
from server.eval_gate import EvaluationGate
from server.evaluation.refusal import RefusalDetector
from server.training import TrainingService
from tests.unit.test_reconciler import Replica, checkpoint, home, store  # noqa: F401

REFUSAL = "I'm sorry, but I can't help with that."
HELPFUL = "Sure: open the task manager and end the process."
GATE = {"suites": ["benign_sensitive"], "limit": 3, "max_tokens": 64, "max_over_refusal": 0.0,
        "min_harmful_refusal": None, "not_worse_than_live": False}


def finished_job(db: Store, root: Path, cid: str, gate: dict[str, object] | None) -> str:
    config = {"method": "dpo", "dataset": "ds", "deploy": {"name": "safe", "mode": "adapter",
                                                          "gate": gate}}
    job = db.create_job("dpo", config, 1)
    return finish(db, root, job.id, cid)


def finish(db: Store, root: Path, job_id: str, cid: str) -> str:
    job = db.get_job(job_id)
    assert job is not None
    claimed = db.claim("w", 30)
    assert claimed is not None and claimed.id == job.id
    folder = checkpoint(root, cid)
    manifest = {"format": "peft-lora",
                "base_model": base_model_identity(str(root / "models" / "base"))}
    db.add_checkpoint(CheckpointRecord(cid, job.id, str(folder), "dpo", 0.0, manifest))
    db.finish(job.id, "w", "succeeded", checkpoint_id=cid)
    return job.id


def deployer_for(replica: Replica, training: TrainingService) -> AutoDeployer:
    auto = AutoDeployer(training, replica.service)
    auto._evaluation = EvaluationGate(replica.engine, replica.service.home,
                                      detector=RefusalDetector(None))  # keywords: no download
    return auto


def test_gate_refuses_and_the_live_version_keeps_serving(home: Path, store: Store) -> None:  # noqa: F811
    replica = Replica(home, store, "r1")
    training = TrainingService(store, home)
    auto = deployer_for(replica, training)
    replica.engine.reply = HELPFUL
    first = finished_job(store, home, "ckpt-good", GATE)
    records = asyncio.run(auto.deploy_finished())
    assert [r["status"] for r in records] == ["live"]
    assert replica.deployer.aliases == {"safe": "safe@1"}
    # The next checkpoint refuses benign requests: the gate keeps it out.
    replica.engine.reply = REFUSAL
    second = finished_job(store, home, "ckpt-refuser", GATE)
    records = asyncio.run(auto.deploy_finished())
    assert [r["status"] for r in records] == ["failed"]
    assert "benign_sensitive over-refusal 1.00 > 0.00" in records[0]["reason"]
    assert replica.deployer.aliases == {"safe": "safe@1"}
    staged = [q for q in replica.engine.requests if q.model == "safe@2"]
    assert len(staged) == 3 and all(q.allow_staged for q in staged)
    # The numbers are on the job and on the checkpoint's view.
    gate_events = [e.data for e in store.events(second) if (e.data or {}).get("stage") == "gate"]
    assert [d["status"] for d in gate_events] == ["running", "refused"]
    assert gate_events[-1]["refusal_rates"]["benign_sensitive"]["k"] == 3
    views = {v["id"]: v for v in training.checkpoint_views()}
    assert views["ckpt-refuser"]["gate"]["status"] == "refused"
    assert views["ckpt-good"]["gate"]["status"] == "passed"
    assert first != second


def test_no_gate_deploys_without_asking(home: Path, store: Store) -> None:  # noqa: F811
    replica = Replica(home, store, "r1")
    training = TrainingService(store, home)
    auto = deployer_for(replica, training)
    replica.engine.reply = REFUSAL
    finished_job(store, home, "ckpt-plain", None)
    assert [r["status"] for r in asyncio.run(auto.deploy_finished())] == ["live"]
    assert replica.engine.requests == []
    assert training.checkpoint_views()[0]["gate"] is None


def refused_align_job(home: Path, store: Store, attempts: int,  # noqa: F811
                      seed: int = 0) -> tuple[Replica, TrainingService, str, str]:
    """An align job with ``attempts``, finished; every answer of its adapter refuses, so the
    gate (benign over-refusal 0) refuses it. Returns the replica, service, job and dataset."""
    replica = Replica(home, store, "r1")
    training = TrainingService(store, home)
    replica.engine.reply = REFUSAL
    dataset = training.upload(b'{"prompt": "hi", "kind": "benign"}\n', "prompts", "p.jsonl").id
    spec = parse_spec({"method": "align", "dataset": dataset, "model": str(home / "models"),
                       "engine": {"base_url": "http://127.0.0.1:9", "model": "m"},
                       "hyperparameters": {"seed": seed}, "attempts": attempts,
                       "deploy": {"name": "safe", "mode": "adapter", "gate": GATE}})
    first = training.create_job(spec.model_dump(mode="json")).id
    finish(store, home, first, "ckpt-try1")
    return replica, training, first, dataset


def test_a_refused_align_job_trains_again_with_the_next_seed(home: Path, store: Store) -> None:  # noqa: F811
    replica, training, first, _ = refused_align_job(home, store, attempts=2, seed=3)
    auto = deployer_for(replica, training)
    assert [r["status"] for r in asyncio.run(auto.deploy_finished())] == ["failed"]
    second = store.get_job(f"{first}-try2")
    assert second is not None and second.status == "queued"
    assert second.config["attempt"] == 2 and second.config["answers_from"] == first
    assert second.config["hyperparameters"]["seed"] == 4
    assert second.config["deploy"]["gate"] == store.get_job(first).config["deploy"]["gate"]
    told = [e.data for e in store.events(first) if (e.data or {}).get("stage") == "attempt"]
    assert told == [{"stage": "attempt", "attempt": 2, "attempts": 2, "next_job": second.id}]
    assert any("refused by the evaluation gate" in e.message for e in store.events(second.id))
    # A restarted server finds the attempt made: it makes no second one.
    asyncio.run(deployer_for(replica, training).deploy_finished())
    assert [j.id for j in training.jobs() if j.id.startswith(first)] == [second.id, first]
    # The last attempt refused too: nothing more is made, and the job says so.
    finish(store, home, second.id, "ckpt-try2")
    assert [r["status"] for r in asyncio.run(auto.deploy_finished())] == ["failed"]
    assert store.get_job(f"{first}-try3") is None
    assert any("no attempt left (2 of 2 made)" in e.message for e in store.events(second.id))
    assert replica.deployer.aliases == {}


def test_a_server_stopped_after_the_refusal_makes_the_attempt_on_restart(
    home: Path, store: Store, monkeypatch: pytest.MonkeyPatch  # noqa: F811
) -> None:
    replica, training, first, _ = refused_align_job(home, store, attempts=3)

    def stopped(*_: object) -> None:
        raise SystemExit("the server stopped")

    monkeypatch.setattr("server.auto_deploy.retry_refused", stopped)
    with pytest.raises(SystemExit):
        asyncio.run(deployer_for(replica, training).deploy_finished())
    assert store.get_job(f"{first}-try2") is None
    monkeypatch.undo()
    asyncio.run(deployer_for(replica, training).deploy_finished())
    made = store.get_job(f"{first}-try2")
    assert made is not None and made.config["attempt"] == 2 and made.config["attempts"] == 3


def test_an_attempt_that_cannot_start_says_why(home: Path, store: Store) -> None:  # noqa: F811
    replica, training, first, dataset = refused_align_job(home, store, attempts=2)
    training.delete_dataset(dataset)
    assert [r["status"] for r in asyncio.run(deployer_for(replica, training)
                                             .deploy_finished())] == ["failed"]
    assert store.get_job(f"{first}-try2") is None
    said = [e for e in store.events(first) if (e.data or {}).get("stage") == "attempt"]
    assert "attempt 2 of 2 cannot start" in said[0].message and "does not exist" in said[0].message
