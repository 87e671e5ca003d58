"""The runner: concurrency, append-only results, and resuming an interrupted run."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from server.evaluation.configs import EvalConfig, SamplingParams
from server.evaluation.runner import OpenAIGenerator, ResultStore, ServedVersion, run_generation
from server.evaluation.suites import EvalItem
from tests.evaluation.conftest import FakeGenerator

S = SamplingParams(max_tokens=8)
CONFIGS = (EvalConfig("base", "m"), EvalConfig("la", "m", {"preset": "harmless", "alpha": 3}))
ITEMS = [EvalItem(f"alpacaeval:{i}", "helpful", f"question {i}", False) for i in range(5)]


def _run(generator, store, concurrency=3):
    return asyncio.run(run_generation(generator, store, CONFIGS, ITEMS, S, concurrency,
                                      lambda _: None))


def test_fills_every_pair_once(tmp_path: Path) -> None:
    store = ResultStore(tmp_path / "results.jsonl")
    assert _run(FakeGenerator(), store) == 10
    lines = (tmp_path / "results.jsonl").read_text().splitlines()
    assert len(lines) == 10 and len(store) == 10
    rec = store.get("alpacaeval:3", CONFIGS[1].key(S))
    assert rec is not None and rec.text == "la answers: question 3" and rec.config_name == "la"


def test_interrupted_run_resumes_without_redoing_finished_items(tmp_path: Path) -> None:
    path = tmp_path / "results.jsonl"
    # concurrency 1 makes "interrupt after k items" exact: k=4 answers land, the 5th call fails.
    with pytest.raises(ExceptionGroup):
        _run(FakeGenerator(fail_after=4), ResultStore(path), concurrency=1)
    assert len(path.read_text().splitlines()) == 4
    second = FakeGenerator()
    store = ResultStore(path)  # a fresh process: the index is rebuilt from the file
    assert _run(second, store) == 6
    assert len(second.calls) == 6
    records = [json.loads(line) for line in path.read_text().splitlines()]
    keys = [(r["item_id"], r["config_key"]) for r in records]
    assert len(keys) == len(set(keys)) == 10  # nothing asked twice, nothing missing
    third = FakeGenerator()
    assert _run(third, ResultStore(path)) == 0 and third.calls == []


def test_torn_last_line_is_ignored_and_redone(tmp_path: Path) -> None:
    path = tmp_path / "results.jsonl"
    _run(FakeGenerator(), ResultStore(path))
    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines[:-1]) + "\n" + lines[-1][:20])  # crash mid-write
    store = ResultStore(path)
    assert len(store) == 9
    again = FakeGenerator()
    assert _run(again, store) == 1
    assert len(ResultStore(path)) == 10


def test_corrupt_middle_line_fails_loudly(tmp_path: Path) -> None:
    path = tmp_path / "results.jsonl"
    path.write_text("not json\n{}\n")
    with pytest.raises(ValueError, match="not a result record"):
        ResultStore(path)


def test_openai_generator_sends_the_extension_and_reads_logprobs() -> None:
    sent = {}

    async def create(**kwargs):
        sent.update(kwargs)
        top = [SimpleNamespace(token="A", logprob=-0.1), SimpleNamespace(token=" B", logprob=-2.5)]
        return SimpleNamespace(
            choices=[SimpleNamespace(
                message=SimpleNamespace(content="A"), finish_reason="length",
                logprobs=SimpleNamespace(content=[SimpleNamespace(top_logprobs=top)]))],
            usage=SimpleNamespace(completion_tokens=1))

    client = SimpleNamespace(chat=SimpleNamespace(completions=SimpleNamespace(create=create)))
    config = EvalConfig("la", "m", {"preset": "harmless", "alpha": 3}, system="sys")
    out = asyncio.run(OpenAIGenerator(client).generate(
        config, config.messages("q"), SamplingParams(max_tokens=4, top_logprobs=5)))
    assert sent["extra_body"] == {"alignment": {"preset": "harmless", "alpha": 3}}
    assert sent["messages"][0] == {"role": "system", "content": "sys"}
    assert sent["max_tokens"] == 4 and sent["temperature"] == 0.0
    assert sent["logprobs"] is True and sent["top_logprobs"] == 5
    assert (out.text, out.completion_tokens, out.finish_reason) == ("A", 1, "length")
    assert out.first_token_logprobs == (("A", -0.1), (" B", -2.5))


def test_served_version_reads_the_model_list() -> None:
    """Our /v1/models cards carry ``version``; a name without one (the base, plain vLLM) is
    not pinned; a name already pinned stays as it is."""
    from openai.types import Model

    cards = [Model(id="base", created=1, object="model", owned_by="x"),
             Model(id="helpful", created=7, object="model", owned_by="x", version=3),
             Model(id="helpful@2", created=5, object="model", owned_by="x", version=2)]

    async def list_models() -> SimpleNamespace:
        return SimpleNamespace(data=cards)

    generator = OpenAIGenerator(SimpleNamespace(models=SimpleNamespace(list=list_models)))
    versions = asyncio.run(generator.served_versions())
    served = [versions.get(m) for m in ("base", "helpful", "helpful@2", "missing")]
    assert served == [None, ServedVersion("helpful@3", 7), ServedVersion("helpful@2", 5), None]
