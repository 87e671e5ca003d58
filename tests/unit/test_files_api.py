"""Fast tier: OpenAI's Files API and the fine-tuning job API over the fake engine (no training):
upload validation and refusals, list/retrieve/delete/content, the key-scope setting, job
creation (epochs to steps, "auto", the model name, opt-out), field errors with ``param``,
pause/resume/cancel, paging of jobs and events, and what status a deploying job reports."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from contracts.store import SqliteJobStore
from server.api.app import create_app
from server.auth import KeyRing, Scope
from server.training import TrainingService
from tests.fakes import FakeEngine

USER, ADMIN = "user-key", "admin-key"
BASE = "fake-model"
PREFERENCE = {  # OpenAI's DPO example format
    "input": {"messages": [{"role": "user", "content": "Hello, can you tell me how cold San "
                                                        "Francisco is today?"}],
              "tools": [], "parallel_tool_calls": True},
    "preferred_output": [{"role": "assistant", "content": "Today in San Francisco, it is not "
                          "quite cold as expected. Morning clouds will give away to sunshine."}],
    "non_preferred_output": [{"role": "assistant", "content": "It is not particularly cold in "
                              "San Francisco today."}],
}
CHAT = {"messages": [{"role": "system", "content": "Be brief."},
                     {"role": "user", "content": "Capital of France?"},
                     {"role": "assistant", "content": "Paris."}]}


def jsonl(rows: list[dict[str, Any]]) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


@pytest.fixture
def store(tmp_path: Path) -> SqliteJobStore:
    return SqliteJobStore(tmp_path / "home" / "jobs.db")


def _client(store: SqliteJobStore, tmp_path: Path, scope: Scope = Scope.USER) -> TestClient:
    training = TrainingService(store, tmp_path / "home", base_model="/models/fake",
                               served_name=BASE, max_dataset_bytes=20_000,
                               fine_tuning_scope=scope)
    app = create_app(FakeEngine(), KeyRing.build([USER], [ADMIN]), training=training)
    return TestClient(app, headers={"Authorization": f"Bearer {USER}"})


@pytest.fixture
def client(store: SqliteJobStore, tmp_path: Path) -> Iterator[TestClient]:
    with _client(store, tmp_path) as c:
        yield c


def upload(client: TestClient, data: bytes, purpose: str = "fine-tune",
           name: str = "train.jsonl") -> Any:
    return client.post("/v1/files", files={"file": (name, data)}, data={"purpose": purpose})


@pytest.fixture
def file_id(client: TestClient) -> str:
    r = upload(client, jsonl([PREFERENCE] * 5))
    assert r.status_code == 200, r.text
    return str(r.json()["id"])


def create(client: TestClient, file_id: str, **body: Any) -> Any:
    return client.post("/v1/fine_tuning/jobs", json={"model": BASE, "training_file": file_id,
                                                      **body})


def dpo(**hyper: Any) -> dict[str, Any]:
    return {"type": "dpo", "dpo": {"hyperparameters": hyper}}


# -- files ----------------------------------------------------------------------------------------
def test_upload_list_retrieve_content_delete(client: TestClient) -> None:
    data = jsonl([PREFERENCE] * 3)
    r = upload(client, data, name="../../etc/prefs.jsonl")
    assert r.status_code == 200, r.text
    f = r.json()
    assert {k: f[k] for k in ("object", "bytes", "filename", "purpose", "status")} == {
        "object": "file", "bytes": len(data), "filename": "prefs.jsonl", "purpose": "fine-tune",
        "status": "processed"}
    assert f["format"] == "pairs" and f["records"] == 3 and isinstance(f["created_at"], int)
    chat = upload(client, jsonl([CHAT])).json()
    assert chat["format"] == "demonstrations"  # OpenAI's supervised format
    listed = client.get("/v1/files").json()
    assert [x["id"] for x in listed["data"]] == [chat["id"], f["id"]] and not listed["has_more"]
    page = client.get("/v1/files", params={"limit": 1, "order": "asc"}).json()
    assert [x["id"] for x in page["data"]] == [f["id"]] and page["has_more"]
    after = client.get("/v1/files", params={"after": f["id"], "order": "asc"}).json()
    assert [x["id"] for x in after["data"]] == [chat["id"]]
    assert client.get("/v1/files", params={"purpose": "batch"}).json()["data"] == []
    assert client.get(f"/v1/files/{f['id']}").json() == f
    content = client.get(f"/v1/files/{f['id']}/content")
    assert content.status_code == 200 and content.content == data  # as uploaded
    gone = client.delete(f"/v1/files/{f['id']}").json()
    assert gone == {"id": f["id"], "object": "file", "deleted": True}
    for path in (f"/v1/files/{f['id']}", f"/v1/files/{f['id']}/content"):
        r = client.get(path)
        assert r.status_code == 404 and r.json()["error"]["param"] == "file_id"
    assert client.delete(f"/v1/files/{f['id']}").status_code == 404


@pytest.mark.parametrize(("data", "needle", "param"), [
    (b'{"prompt": "\\ud800", "completion": "x"}\n', "line 1: field 'prompt': not valid Unicode",
     "prompt"),
    (b'{"prompt": "a", "completion": "b"}\n{"x": ' + b"[" * 3000 + b"]" * 3000 + b"}\n",
     "line 2: invalid JSON (nested too deeply)", None),
    (jsonl([PREFERENCE, {**PREFERENCE, "non_preferred_output": []}]),
     "line 2: field 'non_preferred_output'", "non_preferred_output"),
    (jsonl([CHAT, {"messages": CHAT["messages"][:2]}]), "line 2: field 'messages[1].role'",
     "messages[1].role"),
    (b'{"label": 1' + b"0" * 5000 + b', "prompt": "p", "completion": "c"}\n',
     "line 1: invalid JSON", None),
])
def test_malformed_uploads_are_400_with_line_and_field(
    client: TestClient, store: SqliteJobStore, data: bytes, needle: str, param: str | None
) -> None:
    r = upload(client, data)
    assert r.status_code == 400, r.text
    assert needle in r.json()["error"]["message"]
    assert r.json()["error"]["param"] == param
    assert store.list_datasets() == []


def test_upload_refusals(client: TestClient) -> None:
    for purpose in ("assistants", "batch"):
        r = upload(client, jsonl([CHAT]), purpose=purpose)
        assert r.status_code == 400 and r.json()["error"]["param"] == "purpose"
    r = client.post("/v1/files", files={"file": ("a.jsonl", jsonl([CHAT]))})
    assert r.status_code == 400 and r.json()["error"]["param"] == "purpose"
    r = client.post("/v1/files", data={"purpose": "fine-tune"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "file"
    r = upload(client, jsonl([PREFERENCE] * 80))
    assert r.status_code == 413
    for limit in (0, 10_001):
        r = client.get("/v1/files", params={"limit": limit})
        assert r.status_code == 400 and r.json()["error"]["param"] == "limit"
    assert client.get("/v1/files", params={"limit": "x"}).status_code == 400
    assert client.get("/v1/files", params={"after": "ds-nope"}).status_code == 400


def test_delete_is_refused_while_a_job_uses_the_file(client: TestClient, file_id: str) -> None:
    job = create(client, file_id, method=dpo()).json()
    r = client.delete(f"/v1/files/{file_id}")
    assert r.status_code == 409 and job["id"] in r.json()["error"]["message"]
    client.post(f"/v1/fine_tuning/jobs/{job['id']}/pause")
    assert client.delete(f"/v1/files/{file_id}").status_code == 409  # paused: still in flight
    client.post(f"/v1/fine_tuning/jobs/{job['id']}/cancel")
    assert client.delete(f"/v1/files/{file_id}").status_code == 200


def test_scope_setting(store: SqliteJobStore, tmp_path: Path, file_id: str) -> None:
    with _client(store, tmp_path, Scope.ADMIN) as admin_only:
        for method, path in (("GET", "/v1/files"), ("GET", "/v1/fine_tuning/jobs"),
                             ("POST", "/v1/files")):
            r = admin_only.request(method, path)
            assert r.status_code == 403, (path, r.text)
        admin = {"Authorization": f"Bearer {ADMIN}"}
        assert admin_only.get("/v1/files", headers=admin).status_code == 200
        assert admin_only.get("/v1/files", headers={"Authorization": "Bearer x"}).status_code == 401


# -- jobs -----------------------------------------------------------------------------------------
def test_create_maps_epochs_multiplier_and_names_the_model(
    client: TestClient, store: SqliteJobStore, file_id: str
) -> None:
    r = create(client, file_id, suffix="weather", seed=7, metadata={"team": "a"},
               method=dpo(beta=0.2, n_epochs=2, batch_size=2, learning_rate_multiplier=0.5))
    assert r.status_code == 200, r.text
    job = r.json()
    assert job["object"] == "fine_tuning.job" and job["status"] == "queued"
    assert job["model"] == BASE and job["training_file"] == file_id
    assert job["fine_tuned_model"] is None and job["seed"] == 7
    assert job["metadata"] == {"team": "a"} and job["user_provided_suffix"] == "weather"
    hyper = {"batch_size": 2, "beta": 0.2, "learning_rate_multiplier": 0.5, "n_epochs": 2}
    assert job["method"] == {"type": "dpo", "dpo": {"hyperparameters": hyper}}
    config = store.get_job(job["id"]).config  # type: ignore[union-attr]
    # 2 epochs of 5 examples in batches of 2: ceil(10 / 2) = 5 steps; 0.5 x 5e-5.
    assert config["hyperparameters"]["max_steps"] == 5 and job["total_steps"] == 5
    assert config["hyperparameters"]["learning_rate"] == pytest.approx(2.5e-5)
    assert config["hyperparameters"]["seed"] == 7 and config["model"] == "/models/fake"
    # The fake engine cannot deploy: no deployment unless asked (and then a clear 400).
    assert config["deploy"] is None
    r = create(client, file_id, method=dpo(), deploy=True)
    assert r.status_code == 400 and r.json()["error"]["param"] == "deploy"


def test_auto_and_extensions(client: TestClient, store: SqliteJobStore, file_id: str) -> None:
    job = create(client, file_id, method=dpo()).json()
    hp = store.get_job(job["id"]).config["hyperparameters"]  # type: ignore[union-attr]
    # auto: 3 epochs of 5 examples, batches of 2 -> 8 steps; beta 0.1; multiplier 1.
    assert (hp["max_steps"], hp["batch_size"], hp["beta"]) == (8, 2, 0.1)
    assert job["hyperparameters"] == {"batch_size": 2, "learning_rate_multiplier": 1.0,
                                      "n_epochs": 3}
    job = create(client, file_id, method=dpo(max_steps=3, max_length=64, max_prompt_length=32,
                                             loss="ipo")).json()
    config = store.get_job(job["id"]).config  # type: ignore[union-attr]
    assert config["hyperparameters"]["max_steps"] == 3 and config["loss"] == "ipo"
    assert job["method"]["dpo"]["hyperparameters"]["n_epochs"] is None
    # No method: inferred from the file (preference data trains with DPO).
    assert create(client, file_id).json()["method"]["type"] == "dpo"


@pytest.mark.parametrize(("body", "param"), [
    ({"training_file": ["x"]}, "training_file"),
    ({"suffix": ["x"]}, "suffix"),
    ({"suffix": "a:b"}, "suffix"),
    ({"seed": "x"}, "seed"),
    ({"metadata": {"k": 1}}, "metadata.k"),
    ({"training_file": "ds-nope"}, "training_file"),
    ({"validation_file": "ds-nope"}, "validation_file"),
    ({"model": "gpt-4o-mini"}, "model"),
    ({"method": dpo(n_epochs=0)}, "method.dpo.hyperparameters.n_epochs"),
    ({"method": dpo(n_epochs=True)}, "method.dpo.hyperparameters.n_epochs"),
    ({"method": dpo(learning_rate_multiplier="fast")},
     "method.dpo.hyperparameters.learning_rate_multiplier"),
    ({"method": dpo(loss="dop")}, "method.dpo.hyperparameters.loss"),
    ({"method": dpo(max_length="long")}, "method.dpo.hyperparameters.max_length"),
    ({"method": dpo(nonsense=1)}, "method.dpo.hyperparameters.nonsense"),
    ({"method": dpo(n_epochs=1, max_steps=3)}, "method.dpo.hyperparameters.max_steps"),
    ({"method": {"type": "ppo"}}, "method.type"),
    ({"method": {"type": "supervised"}}, "training_file"),  # preference data, SFT method
    ({"method": {"type": "reinforcement"}}, "method.type"),
    ({"method": {"type": "ulma"}}, "training_file"),  # preference data, point-wise method
    ({"integrations": [{"type": "wandb"}]}, "integrations"),
    ({"hyperparameters": {"n_epochs": 1}, "method": dpo()}, None),
])
def test_field_errors_are_400_with_param(
    client: TestClient, file_id: str, body: dict[str, Any], param: str | None
) -> None:
    r = client.post("/v1/fine_tuning/jobs", json={"model": BASE, "training_file": file_id, **body})
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param, r.json()


def test_pause_resume_cancel_and_list_paging(
    client: TestClient, store: SqliteJobStore, file_id: str
) -> None:
    ids = [create(client, file_id, method=dpo()).json()["id"] for _ in range(3)]
    page = client.get("/v1/fine_tuning/jobs", params={"limit": 2}).json()
    assert [j["id"] for j in page["data"]] == ids[::-1][:2] and page["has_more"]
    rest = client.get("/v1/fine_tuning/jobs", params={"limit": 2, "after": ids[1]}).json()
    assert [j["id"] for j in rest["data"]] == [ids[0]] and not rest["has_more"]
    for bad in ({"limit": 0}, {"limit": 101}, {"after": "job-nope"}):
        assert client.get("/v1/fine_tuning/jobs", params=bad).status_code == 400
    job = ids[0]
    assert client.post(f"/v1/fine_tuning/jobs/{job}/pause").json()["status"] == "paused"
    assert store.claim("w", 30) is not None  # another job; the paused one is never claimed
    assert client.post(f"/v1/fine_tuning/jobs/{job}/resume").json()["status"] == "queued"
    assert client.post(f"/v1/fine_tuning/jobs/{job}/resume").status_code == 409
    assert client.post(f"/v1/fine_tuning/jobs/{job}/cancel").json()["status"] == "cancelled"
    assert client.post(f"/v1/fine_tuning/jobs/{job}/pause").status_code == 409
    assert client.get("/v1/fine_tuning/jobs/job-nope").status_code == 404


def test_events_are_paged_newest_first_with_metrics(
    client: TestClient, store: SqliteJobStore, file_id: str
) -> None:
    job = create(client, file_id, method=dpo(max_steps=3)).json()
    claimed = store.claim("w", 30)
    assert claimed is not None and claimed.id == job["id"]
    for step in (1, 2, 3):
        store.record_step(job["id"], step, {"loss": 0.7 - step / 10, "grad_norm": float("nan")})
    store.finish(job["id"], "w", "succeeded", checkpoint_id="ckpt-x")
    everything = client.get(f"/v1/fine_tuning/jobs/{job['id']}/events",
                            params={"limit": 100}).json()["data"]
    metrics = [e for e in everything if e["type"] == "metrics"]
    assert [e["data"]["step"] for e in metrics] == [3, 2, 1]  # newest first
    assert metrics[-1]["data"]["train_loss"] == pytest.approx(0.6)
    assert metrics[-1]["data"]["grad_norm"] is None  # NaN is not JSON
    assert metrics[-1]["message"] == "Step 1/3: training loss=0.6000"
    assert [e["message"] for e in everything[-2:]] == [
        f"Created fine-tuning job: {job['id']}", "job queued"]
    assert {e["level"] for e in everything} <= {"info", "warn", "error"}
    seen, after = [], None
    while True:
        params: dict[str, Any] = {"limit": 2, **({"after": after} if after else {})}
        page = client.get(f"/v1/fine_tuning/jobs/{job['id']}/events", params=params).json()
        seen += page["data"]
        if not page["has_more"]:
            break
        after = page["data"][-1]["id"]
    assert seen == everything
    r = client.get(f"/v1/fine_tuning/jobs/{job['id']}/events", params={"after": "nope"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "after"


def test_status_waits_for_the_deployment(
    client: TestClient, store: SqliteJobStore, file_id: str
) -> None:
    """A job that deploys reports running until the auto-deployer records the outcome."""
    job_id = create(client, file_id, method=dpo()).json()["id"]
    config = store.get_job(job_id).config  # type: ignore[union-attr]
    name = f"ft:{BASE}::{job_id}"
    # As if the job had been created on a server that deploys (the fake engine cannot).
    with store._write() as conn:
        config["deploy"] = {"name": name, "mode": "adapter"}
        conn.execute("UPDATE jobs SET config=? WHERE id=?", (json.dumps(config), job_id))
    store.claim("w", 30)
    store.finish(job_id, "w", "succeeded", checkpoint_id="ckpt-x")
    get: Callable[[], Any] = lambda: client.get(f"/v1/fine_tuning/jobs/{job_id}").json()  # noqa: E731
    assert (get()["status"], get()["fine_tuned_model"]) == ("running", None)
    store.add_event(job_id, "live", data={"deployment": name, "status": "live", "version": 1})
    assert (get()["status"], get()["fine_tuned_model"]) == ("succeeded", name)
    store.add_event(job_id, "x", data={"deployment": name, "status": "failed", "reason": "gate"})
    assert get()["status"] == "failed" and "gate" in get()["error"]["message"]


def test_supervised_trains_sft_on_chat_files(client: TestClient) -> None:
    chat = upload(client, jsonl([CHAT] * 4)).json()
    r = create(client, chat["id"], suffix="sft",
               method={"type": "supervised", "supervised": {"hyperparameters": {
                   "n_epochs": 1, "batch_size": 2}}})
    assert r.status_code == 200, r.text
    job = r.json()
    assert job["method"]["type"] == "supervised" and job["total_steps"] == 2


def test_non_file_fields_have_the_admin_upload_limits(client: TestClient) -> None:
    big = "x" * (64 * 1024 + 1)
    r = client.post("/v1/files", files={"file": ("t.jsonl", jsonl([CHAT]))},
                    data={"purpose": "fine-tune", "note": big})
    assert r.status_code == 413, r.text
