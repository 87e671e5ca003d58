"""Synthesis survives a flaky engine: retries, answers kept per prompt, and a resumed attempt
asks only what is missing. A real HTTP server in a thread plays the engine
(``tests.trainers.chat_server``)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest

from contracts.specs import parse_spec
from tests.trainers.chat_server import ChatServer
from trainers.distill import (
    Answers,
    EngineClient,
    EngineError,
    PromptItem,
    Synthesis,
    synthesise,
)
from trainers.loop import Transient
from trainers.recipes import align


class Engine(ChatServer):
    """Answers ``answer to <prompt>``; a request about a prompt in ``down`` gets 503."""

    def __init__(self) -> None:
        self.down: set[str] = set()
        super().__init__(self.answer)

    def answer(self, body: dict[str, Any]) -> tuple[int, str]:
        prompt = body["messages"][-1]["content"]
        return (503, "busy") if prompt in self.down else (200, f"answer to {prompt}")

    @property
    def asked(self) -> list[str]:
        return [r["messages"][-1]["content"] for r in self.requests]


@pytest.fixture
def engine() -> Iterator[Engine]:
    with Engine() as e:
        yield e


def user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


class Control:
    def __init__(self) -> None:
        self.events: list[str] = []

    def check(self) -> None:
        pass

    def event(self, message: str, data: dict[str, Any] | None = None) -> None:
        self.events.append(message)


def run_distil(engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
               n: int = 6, job: str = "work",
               answers_from: str | None = None) -> tuple[dict[str, Any], Control]:
    spec = parse_spec({"method": "align", "dataset": "d", "preset": "harmless",
                       "engine": {"base_url": engine.url, "model": "m"},
                       "synthesis": {"concurrency": 3}, "answers_from": answers_from})
    # No waiting between retries in a test; everything else is the product's client.
    monkeypatch.setattr(align, "engine_client",
                        lambda s: EngineClient(engine.url, "m", retries=2, backoff_s=0.0))
    control = Control()
    ctx = SimpleNamespace(control=control, work_dir=tmp_path / job)
    records = [{"messages": user(f"p{i}"), "kind": "benign" if i % 2 else "harmful"}
               for i in range(n)]
    return align.distil(ctx, spec, records), control  # type: ignore[arg-type]


def test_a_busy_engine_is_asked_again(engine: Engine) -> None:
    client = EngineClient(engine.url, "m", retries=2, backoff_s=0.0)
    engine.down.add("p")

    async def ask() -> str:
        async with httpx.AsyncClient() as http:
            return await client.chat(http, user("p"), max_tokens=4, temperature=0.0, seed=0)

    with pytest.raises(EngineError, match="503") as info:
        asyncio.run(ask())
    assert info.value.retryable and engine.asked == ["p"] * 3


def test_engine_down_gives_the_job_back_and_the_next_attempt_asks_only_the_rest(
    engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine.down.add("p4")
    with pytest.raises(Transient, match="5 of 6 prompts answered and kept"):
        run_distil(engine, tmp_path, monkeypatch)
    kept = (tmp_path / "work" / align.ANSWERS_FILE).read_text().splitlines()
    assert sorted(json.loads(line)["i"] for line in kept) == [0, 1, 2, 3, 5]

    answers_file = tmp_path / "work" / align.ANSWERS_FILE
    with answers_file.open("a") as f:
        f.write('{"i": 4, "key": "')  # the worker was killed mid-write
    engine.down.clear()
    engine.requests.clear()
    data, control = run_distil(engine, tmp_path, monkeypatch)
    assert len(align.kept_answers(answers_file, [PromptItem(user(f"p{i}"), "benign")
                                                 for i in range(6)])) == 6
    assert sorted(engine.asked) == ["p4", "p4", "p4"]  # plain, aligned, told to decline
    assert len(data["answers"]) == 6
    assert data["answers"][4] == Answers("answer to p4", "answer to p4", "answer to p4").__dict__
    assert any("5 answered by an earlier attempt" in e for e in control.events)


def test_kept_answers_skip_half_written_lines_and_other_prompts(tmp_path: Path) -> None:
    items = [PromptItem(user("a"), "benign"), PromptItem(user("b"), "harmful")]
    path = tmp_path / "answers.jsonl"
    good = {"i": 0, "key": align.prompt_key(items[0]), "plain": "x", "aligned": "y",
            "declined": "z"}
    other = {**good, "i": 1}  # the key of prompt 0: the prompts changed, ask again
    path.write_text(json.dumps(good) + "\n" + json.dumps(other) + "\n" + '{"i": 1, "ke')
    assert align.kept_answers(path, items) == {0: Answers("x", "y", "z")}


def test_a_refused_request_is_not_repeated() -> None:
    calls: list[str] = []

    def unauthorized(request: httpx.Request) -> httpx.Response:
        calls.append(request.url.path)
        return httpx.Response(401, json={"error": {"message": "bad key"}})

    with pytest.raises(EngineError, match="401") as info:
        asyncio.run(synthesise(EngineClient("http://e", "m", backoff_s=0.0),
                               [PromptItem(user("p"), "benign")],
                               Synthesis({"preset": "harmless"}, concurrency=1),
                               transport=httpx.MockTransport(unauthorized)))
    assert not info.value.retryable and len(calls) == 3  # plain, aligned, decline: once each


def test_a_worker_gives_a_transient_failure_back_until_its_attempts_run_out(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from contracts.store import SqliteJobStore
    from trainers import worker as worker_module

    def engine_down(*args: Any) -> str:
        raise Transient("the engine failed during synthesis; 5 of 6 prompts kept")

    monkeypatch.setattr(worker_module, "run_job", engine_down)
    store = SqliteJobStore.at_home(home)
    job_id = store.create_job("align", {"method": "align"}, total_steps=10).id
    worker = worker_module.Worker(store, worker_module.WorkerConfig(home, max_attempts=2))
    worker.run_forever(max_jobs=1)
    job = store.get_job(job_id)
    assert job is not None and job.status == "queued" and job.attempts == 1
    worker.run_forever(max_jobs=1)
    job = store.get_job(job_id)
    assert job is not None and job.status == "failed" and "after 2 attempts" in (job.error or "")


def test_answers_from_another_job_are_not_asked_again(
    engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A retry after a refused gate trains on the first job's answers: no engine call for them,
    only for prompts that job never had."""
    first, _ = run_distil(engine, tmp_path, monkeypatch, n=4, job="job-a")
    engine.requests.clear()
    again, control = run_distil(engine, tmp_path, monkeypatch, n=5, job="job-b",
                                answers_from="job-a")
    assert sorted(engine.asked) == ["p4", "p4", "p4"]
    assert again["pairs"][:len(first["pairs"])] == first["pairs"]
    assert any("4 answered by job job-a" in e for e in control.events)
    assert (tmp_path / "job-a" / align.ANSWERS_FILE).read_text().count("\n") == 4  # untouched
    with pytest.raises(align.AlignDataError, match="job job-x kept no synthesis answers"):
        run_distil(engine, tmp_path, monkeypatch, job="job-c", answers_from="job-x")
