"""Admin training routes over the FakeEngine: uploads, jobs, SSE events, checkpoints, auth,
and the OpenAI-style fine-tuning routes; one job runs end to end through the API."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from contracts.store import SqliteJobStore
from server.api.app import create_app
from server.auth import KeyRing
from server.training import TrainingService
from tests.fakes import FakeEngine
from tests.trainers.conftest import SMALL, jsonl, pairs
from trainers.worker import Worker, WorkerConfig

USER, ADMIN = "user-key", "admin-key"
LIMIT = 20_000


@pytest.fixture
def service(store: SqliteJobStore, home: Path, tiny_model: Path) -> TrainingService:
    return TrainingService(store, home, base_model=str(tiny_model), max_dataset_bytes=LIMIT)


@pytest.fixture
def client(service: TrainingService) -> Iterator[TestClient]:
    app = create_app(FakeEngine(), KeyRing.build([USER], [ADMIN]), training=service)
    with TestClient(app) as c:
        c.headers["Authorization"] = f"Bearer {ADMIN}"
        yield c


def _upload(client: TestClient, data: bytes, **form: str) -> dict[str, object]:
    r = client.post("/admin/v1/datasets", files={"file": ("d.jsonl", data)}, data=form)
    return {"status": r.status_code, **r.json()}


def test_upload_then_minimal_job_then_get(client: TestClient) -> None:
    ds = _upload(client, jsonl(pairs(4)))
    assert ds["status"] == 200 and str(ds["id"]).startswith("ds-")
    r = client.post("/admin/v1/jobs", json={"method": "dpo", "dataset": ds["id"],
                                            "hyperparameters": {"max_steps": 3}})
    assert r.status_code == 200, r.text
    job = r.json()
    assert job["status"] == "queued" and job["total_steps"] == 3
    assert job["config"]["model"]  # defaulted to the served base model
    got = client.get(f"/admin/v1/jobs/{job['id']}").json()
    assert got["status"] == "queued" and got["checkpoint_id"] is None
    assert [j["id"] for j in client.get("/admin/v1/jobs").json()["data"]] == [job["id"]]


@pytest.mark.parametrize(("data", "needle"), [
    (b'{"prompt": "a", "chosen": "b", "rejected": "c"}\n{bad\n', "line 2"),
    (jsonl([{"prompt": "a", "chosen": "b"}]), "line 1: field 'rejected'"),
    (jsonl([{"prompt": "a", "completion": "b", "label": "yes"}]), "line 1: field 'label'"),
    (b"", "empty"),
])
def test_malformed_uploads_are_400_and_store_nothing(
    client: TestClient, store: SqliteJobStore, data: bytes, needle: str
) -> None:
    r = _upload(client, data)
    assert r["status"] == 400
    assert needle in r["error"]["message"]  # type: ignore[index]
    assert store.list_datasets() == []


def test_oversized_upload_is_413(client: TestClient, store: SqliteJobStore) -> None:
    r = _upload(client, jsonl(pairs(400)))
    assert r["status"] == 413 and r["error"]["code"] == "payload_too_large"  # type: ignore[index]
    assert store.list_datasets() == []


def test_server_side_path_import(client: TestClient, home: Path, tmp_path: Path) -> None:
    path = home / "imports" / "p.jsonl"  # the only folder it reads (ALIGNSERVE_IMPORT_DIR)
    path.parent.mkdir(parents=True)
    path.write_bytes(jsonl(pairs(2)))
    r = client.post("/admin/v1/datasets", json={"path": str(path)})
    assert r.status_code == 200 and r.json()["records"] == 2
    outside = tmp_path / "p.jsonl"
    outside.write_bytes(jsonl(pairs(2)))
    r = client.post("/admin/v1/datasets", json={"path": str(outside)})
    assert r.status_code == 400 and r.json()["error"]["code"] == "path_not_allowed"


def test_job_validation_errors_are_400(client: TestClient) -> None:
    ds = _upload(client, jsonl(pairs(2)))["id"]
    bad = client.post("/admin/v1/jobs", json={"method": "dpo", "dataset": ds, "extra": 1})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "extra"
    loss = client.post("/admin/v1/jobs", json={"method": "dpo", "dataset": ds, "loss": "dop"})
    assert loss.status_code == 400 and "valid names" in loss.json()["error"]["message"]
    missing = client.post("/admin/v1/jobs", json={"method": "dpo", "dataset": "ds-nope"})
    assert missing.status_code == 400 and missing.json()["error"]["code"] == "dataset_not_found"
    fmt = client.post("/admin/v1/jobs", json={"method": "ulma", "dataset": ds})
    assert fmt.status_code == 400 and fmt.json()["error"]["code"] == "wrong_format"
    assert client.get("/admin/v1/jobs/job-nope").status_code == 404


def test_user_key_is_refused_on_admin_routes_only(client: TestClient) -> None:
    user = {"Authorization": f"Bearer {USER}"}
    assert client.get("/admin/v1/jobs", headers=user).status_code == 403
    # OpenAI's fine-tuning and files API: user keys by default (ALIGNSERVE_FINE_TUNING_SCOPE).
    assert client.get("/v1/fine_tuning/jobs", headers=user).status_code == 200
    assert client.get("/v1/files", headers=user).status_code == 200


def test_cancel_queued_job_and_sse_events(client: TestClient) -> None:
    ds = _upload(client, jsonl(pairs(2)))["id"]
    job = client.post("/admin/v1/jobs", json={"method": "dpo", "dataset": ds}).json()
    assert client.post(f"/admin/v1/jobs/{job['id']}/cancel").json()["status"] == "cancelled"
    r = client.get(f"/admin/v1/jobs/{job['id']}/events")
    assert r.headers["content-type"].startswith("text/event-stream")
    data = [line.removeprefix("data: ") for line in r.text.split("\n") if line.startswith("data:")]
    assert data[-1] == "[DONE]"
    assert [json.loads(d)["message"] for d in data[:-1]] == [
        "job queued", "job cancelled before it started"]


def test_openai_fine_tuning_routes(client: TestClient, tiny_model: Path) -> None:
    """An admin dataset is a file of the Files API; the job echoes OpenAI's shapes (details:
    tests/unit/test_files_api.py, tests/trainers/test_fine_tuning_api.py)."""
    ds = _upload(client, jsonl(pairs(2)))["id"]
    body = {"training_file": ds, "model": "fake-model",
            "method": {"type": "dpo",
                       "dpo": {"hyperparameters": {"beta": 0.2, "batch_size": "auto"}}}}
    r = client.post("/v1/fine_tuning/jobs", json=body)
    assert r.status_code == 200, r.text
    job = r.json()
    assert job["object"] == "fine_tuning.job" and job["status"] == "queued"
    assert job["model"] == "fake-model"  # the served name, never the folder
    hyper = {"batch_size": 2, "beta": 0.2, "learning_rate_multiplier": 1.0, "n_epochs": 3}
    assert job["method"] == {"type": "dpo", "dpo": {"hyperparameters": hyper}}
    assert job["total_steps"] == 3  # 3 epochs ("auto") of 2 pairs in batches of 2
    listed = client.get("/v1/fine_tuning/jobs").json()
    assert listed["object"] == "list" and listed["data"][0]["id"] == job["id"]
    admin_job = client.post("/admin/v1/jobs", json={"method": "dpo", "dataset": ds}).json()
    seen = client.get(f"/v1/fine_tuning/jobs/{admin_job['id']}").json()
    assert seen["model"] == "fake-model" and seen["training_file"] == ds
    assert str(tiny_model) not in str(seen)
    bad = client.post("/v1/fine_tuning/jobs", json={**body, "method": {"type": "ppo"}})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "method.type"
    unknown = client.post("/v1/fine_tuning/jobs", json={**body, "training_file": "ds-nope"})
    assert unknown.status_code == 400 and unknown.json()["error"]["param"] == "training_file"


def test_end_to_end_job_through_the_api(
    client: TestClient, store: SqliteJobStore, home: Path
) -> None:
    ds = _upload(client, jsonl(pairs(4)))["id"]
    job = client.post("/admin/v1/jobs", json={
        "method": "dpo", "dataset": ds, "deploy": {"name": "tiny-dpo"},
        "hyperparameters": {**SMALL, "max_steps": 2}}).json()
    Worker(store, WorkerConfig(home, worker_id="api")).run_forever(max_jobs=1)
    got = client.get(f"/admin/v1/jobs/{job['id']}").json()
    assert got["status"] == "succeeded" and got["checkpoint_id"]
    checkpoints = client.get("/admin/v1/checkpoints").json()["data"]
    assert [c["id"] for c in checkpoints] == [got["checkpoint_id"]]
    assert checkpoints[0]["deploy"] == {"name": "tiny-dpo", "mode": None, "gate": None}
    assert Path(checkpoints[0]["path"], "adapter_config.json").is_file()
    metrics = client.get(f"/admin/v1/jobs/{job['id']}/metrics").json()["data"]
    assert [m["step"] for m in metrics] == [1, 2]


def test_an_adapter_too_large_for_the_engine_is_refused_before_training(
    client: TestClient, service: TrainingService
) -> None:
    service.max_lora_rank = 16
    ds = _upload(client, jsonl(pairs(4)))
    job = {"method": "dpo", "dataset": ds["id"], "lora": {"r": 32, "alpha": 64},
           "deploy": {"name": "big"}}
    r = client.post("/admin/v1/jobs", json=job)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["param"] == "lora.r" and "max_lora_rank 16" in error["message"]
    assert "ALIGNSERVE_MAX_LORA_RANK=32" in error["message"]
    assert client.get("/admin/v1/jobs").json()["data"] == []
    # Not deployed, or deployed as merged full weights: nothing to fit into an adapter slot.
    for deploy in (None, {"name": "big", "mode": "full"}):
        r = client.post("/admin/v1/jobs", json={**job, "deploy": deploy})
        assert r.status_code == 200, r.text
