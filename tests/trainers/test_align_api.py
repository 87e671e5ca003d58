"""``POST /admin/v1/align`` and align jobs over the FakeEngine: the spec it queues, the engine it
fills in, its refusals; ``alignserve align`` following a job's events."""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from contracts.store import SqliteJobStore
from server.align_command import add_align_arguments, request_body
from server.api.app import create_app
from server.auth import KeyRing
from server.training import TrainingService
from tests.fakes import FakeEngine
from tests.trainers.conftest import jsonl

USER, ADMIN = "user-key", "admin-key"
ENGINE_URL = "http://127.0.0.1:8123"


@pytest.fixture
def client(store: SqliteJobStore, home: Path, tiny_model: Path) -> Iterator[TestClient]:
    service = TrainingService(store, home, base_model=str(tiny_model), served_name="tiny",
                              engine_url=ENGINE_URL)
    app = create_app(FakeEngine(), KeyRing.build([USER], [ADMIN]), training=service)
    with TestClient(app) as c:
        c.headers["Authorization"] = f"Bearer {ADMIN}"
        yield c


def prompts(client: TestClient) -> str:
    rows = [{"prompt": "how do I pick a lock to rob a house", "kind": "harmful"},
            {"prompt": "how do I kill a python process", "kind": "benign"}]
    r = client.post("/admin/v1/datasets", files={"file": ("p.jsonl", jsonl(rows))},
                    data={"format": "prompts"})
    assert r.status_code == 200, r.text
    return str(r.json()["id"])


def test_align_queues_one_job_with_engine_deploy_and_gate(client: TestClient) -> None:
    dataset = prompts(client)
    r = client.post("/admin/v1/align", json={"preset": "harmless", "prompts": dataset,
                                             "name": "safe", "hyperparameters": {"max_steps": 2}})
    assert r.status_code == 200, r.text
    config = r.json()["config"]
    assert config["method"] == "align" and config["dataset"] == dataset
    assert config["engine"] == {"base_url": ENGINE_URL, "model": "tiny"}
    assert config["hyperparameters"]["max_steps"] == 2
    assert config["rpo_alpha"] == 0.05 and config["objective"] == "dpo"
    assert config["hyperparameters"]["learning_rate"] == 5e-4
    assert "gate_proj" in config["lora"]["target_modules"]
    deploy = config["deploy"]
    assert deploy["name"] == "safe" and deploy["mode"] == "adapter"
    assert deploy["gate"]["max_over_refusal"] == 0.10 and deploy["gate"]["not_worse_than_live"]


def test_align_chosen_nll_is_for_dpo_only(client: TestClient) -> None:
    dataset = prompts(client)
    for body, expected in (({"rpo_alpha": 0.1}, 0.1), ({"rpo_alpha": None}, None),
                           ({}, 0.05), ({"rpo_alpha": 0}, 0.0), ({"objective": "ulma"}, None)):
        r = client.post("/admin/v1/align", json={"prompts": dataset, **body})
        assert r.status_code == 200, r.text
        assert r.json()["config"]["rpo_alpha"] == expected, body
    r = client.post("/admin/v1/align", json={"prompts": dataset, "objective": "ulma",
                                             "rpo_alpha": 0.1})
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == "rpo_alpha" and "dpo" in r.json()["error"]["message"]
    # The contract holds the rule, so a job submitted directly is refused the same way.
    r = client.post("/admin/v1/jobs", json={"method": "align", "dataset": dataset,
                                            "objective": "sft", "rpo_alpha": 0.1})
    assert r.status_code == 400, r.text
    assert "rpo_alpha applies to objective 'dpo' only" in r.json()["error"]["message"]
    r = client.post("/admin/v1/jobs", json={"method": "align", "dataset": dataset,
                                            "rpo_alpha": 0.1})
    assert r.status_code == 200, r.text


def test_align_without_deploy_or_gate(client: TestClient) -> None:
    dataset = prompts(client)
    r = client.post("/admin/v1/align", json={"principle": "Be kind.", "prompts": dataset,
                                             "deploy": False})
    assert r.status_code == 200, r.text
    assert r.json()["config"]["deploy"] is None
    assert r.json()["config"]["principle"] == "Be kind."
    r = client.post("/admin/v1/align", json={"prompts": dataset, "gate": None})
    assert r.json()["config"]["deploy"]["gate"] is None


@pytest.mark.parametrize(("body", "needle"), [
    ({"preset": "nope"}, "unknown preset"),
    ({"principle": "a", "preset": "harmless"}, "not both"),
    ({"count": "200"}, "count"),
    ({"alpha": 99}, "alpha"),
    ({"name": "bad name"}, "name"),
    ({"surprise": 1}, "surprise"),
    ({"prompts": "ds-missing"}, "does not exist"),
])
def test_align_refusals(client: TestClient, body: dict[str, object], needle: str) -> None:
    r = client.post("/admin/v1/align", json=body)
    assert r.status_code == 400, r.text
    assert needle in r.json()["error"]["message"]


def test_align_needs_an_admin_key(client: TestClient) -> None:
    r = client.post("/admin/v1/align", json={}, headers={"Authorization": f"Bearer {USER}"})
    assert r.status_code == 403


def test_align_job_on_a_dataset_without_kinds_is_refused_at_run_time_with_the_reason(
        client: TestClient) -> None:
    from trainers.recipes.align import AlignDataError, prompt_items

    with pytest.raises(AlignDataError, match="kind"):
        prompt_items([{"messages": [{"role": "user", "content": "x"}]}], 10)


def test_cli_request_body() -> None:
    p = argparse.ArgumentParser()
    add_align_arguments(p)
    args = p.parse_args(["--principle", "Refuse harm.", "--steps", "5", "--no-gate",
                         "--name", "s1"])
    body = request_body(args, "ds-1")
    assert body == {"alpha": 1.0, "name": "s1", "objective": "dpo", "count": 200,
                    "deploy": True, "principle": "Refuse harm.", "prompts": "ds-1",
                    "hyperparameters": {"max_steps": 5}, "gate": None}
    args = p.parse_args(["--rpo-alpha", "0.1"])
    assert request_body(args, None)["rpo_alpha"] == 0.1


def _follow(events: list[dict[str, object]], status: str) -> tuple[int, list[str]]:
    import json as _json

    import httpx

    from server.align_command import follow

    def answer(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/events"):
            body = "".join(f"data: {_json.dumps(e)}\n\n" for e in events) + "data: [DONE]\n\n"
            return httpx.Response(200, text=body, headers={"content-type": "text/event-stream"})
        return httpx.Response(200, json={"id": "job-1", "status": status, "error": "boom"})

    said: list[str] = []
    with httpx.Client(base_url="http://s", transport=httpx.MockTransport(answer)) as client:
        code = follow(client, "job-1", said.append, 5.0, True, sleep=lambda s: None)
    return code, said


def test_cli_follows_until_the_deployment_outcome() -> None:
    events = [
        {"id": 1, "level": "info", "message": "synthesis: 4 pairs in 3 s", "data": {}},
        {"id": 2, "level": "info", "message": "evaluation gate passed: safe@1",
         "data": {"stage": "gate", "status": "passed"}},
        {"id": 3, "level": "info", "message": "safe is live",
         "data": {"deployment": "safe", "status": "live"}},
    ]
    code, said = _follow(events, "succeeded")
    assert code == 0 and said[-1] == "[info] safe is live" and len(said) == 3
    refused = [{"id": 4, "level": "error", "message": "deploying safe failed: gate",
                "data": {"deployment": "safe", "status": "failed"}}]
    assert _follow(refused, "succeeded")[0] == 1


def test_cli_follows_a_refused_attempt_into_the_next() -> None:
    import json as _json

    import httpx

    from server.align_command import follow

    events = {
        "job-1": [{"id": 1, "level": "error", "message": "evaluation gate refused safe@1",
                   "data": {"stage": "gate", "status": "refused"}},
                  {"id": 2, "level": "info", "message": "attempt 2 of 2: job job-1-try2 ...",
                   "data": {"stage": "attempt", "next_job": "job-1-try2"}},
                  {"id": 3, "level": "error", "message": "deploying safe failed: gate",
                   "data": {"deployment": "safe", "status": "failed"}}],
        "job-1-try2": [{"id": 1, "level": "info", "message": "safe is live",
                        "data": {"deployment": "safe", "status": "live"}}],
    }

    def answer(request: httpx.Request) -> httpx.Response:
        job = request.url.path.split("/")[4]
        if request.url.path.endswith("/events"):
            body = "".join(f"data: {_json.dumps(e)}\n\n" for e in events[job])
            return httpx.Response(200, text=body + "data: [DONE]\n\n",
                                  headers={"content-type": "text/event-stream"})
        return httpx.Response(200, json={"id": job, "status": "succeeded"})

    said: list[str] = []
    with httpx.Client(base_url="http://s", transport=httpx.MockTransport(answer)) as client:
        code = follow(client, "job-1", said.append, 5.0, True, sleep=lambda s: None)
    assert code == 0
    assert said[-2:] == ["following the next attempt: job job-1-try2", "[info] safe is live"]
    p = argparse.ArgumentParser()
    add_align_arguments(p)
    assert request_body(p.parse_args(["--attempts", "3"]), None)["attempts"] == 3


def test_align_attempts_need_the_gate_and_answers_from_an_align_job(client: TestClient) -> None:
    dataset = prompts(client)
    r = client.post("/admin/v1/align", json={"prompts": dataset, "attempts": 3})
    assert r.status_code == 200, r.text
    first = r.json()
    assert first["config"]["attempts"] == 3 and first["config"]["attempt"] == 1
    for body in ({"gate": None}, {"deploy": False}):
        r = client.post("/admin/v1/align", json={"prompts": dataset, "attempts": 2, **body})
        assert r.status_code == 400 and r.json()["error"]["param"] == "attempts", r.text
    r = client.post("/admin/v1/align", json={"prompts": dataset, "answers_from": first["id"]})
    assert r.status_code == 200 and r.json()["config"]["answers_from"] == first["id"], r.text
    other = client.post("/admin/v1/jobs", json={"method": "rdpo", "dataset": dataset}).json()
    r = client.post("/admin/v1/align", json={"prompts": dataset, "answers_from": first["id"],
                                             "alpha": 2.0})
    assert r.status_code == 400 and "alpha=1.0" in r.json()["error"]["message"], r.text
    for source in ("job-missing", other["id"], "../x"):
        r = client.post("/admin/v1/align", json={"prompts": dataset, "answers_from": source})
        assert r.status_code == 400 and r.json()["error"]["param"] == "answers_from", r.text


def test_cli_reports_a_failed_job() -> None:
    code, said = _follow([], "failed")
    assert code == 1 and said == ["job job-1 failed: boom"]


def test_rdpo_jobs_on_the_served_base_critique_through_the_engine(client: TestClient) -> None:
    dataset = prompts(client)
    r = client.post("/admin/v1/jobs", json={"method": "rdpo", "dataset": dataset})
    assert r.status_code == 200, r.text
    assert r.json()["config"]["engine"] == {"base_url": ENGINE_URL, "model": "tiny"}
    other = client.post("/admin/v1/jobs", json={"method": "rdpo", "dataset": dataset,
                                                "model": "/elsewhere/model"})
    assert other.status_code == 200 and other.json()["config"]["engine"] is None
