"""evaluate() end to end with a fake generator, and the files it writes (JSON, table, PNGs)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from server.evaluation.configs import EvalConfig, SamplingParams
from server.evaluation.evaluate import EvalPlan, JudgeSpec, Scorers, evaluate
from server.evaluation.packaged import OffensiveScorer
from server.evaluation.refusal import RefusalDetector
from server.evaluation.report import render_markdown
from server.evaluation.runner import ServedVersion
from server.evaluation.suites import EvalItem
from tests.evaluation.conftest import FakeGenerator

SUITES = {
    "harmful": [EvalItem(f"harmbench:{i}", "harmful", f"bad request {i}", True) for i in range(4)],
    "helpful": [EvalItem(f"alpacaeval:{i}", "helpful", f"question {i}", False) for i in range(4)],
}


class FixedReward:
    async def score(self, prompts, responses):
        return [float(len(r.split())) for r in responses]


def _reply(config: EvalConfig, prompt: str) -> str:
    """The aligned config refuses harmful requests and one of four benign ones."""
    if prompt.startswith("Which answer") or "[Answer A]" in prompt:
        return "A"
    if config.alignment and (prompt.startswith("bad") or prompt == "question 0"):
        return "I'm sorry, but I can't help with that."
    return "Here is a helpful answer of eight words."


def _plan(out: Path) -> EvalPlan:
    return EvalPlan(
        configs=(EvalConfig("base", "m"), EvalConfig("LA alpha=3", "m", {"preset": "harmless"})),
        suites=SUITES, sampling=SamplingParams(max_tokens=16), output=out, concurrency=4,
        judge=JudgeSpec(model="m", baseline="base"), meta={"command": "alignserve eval compare"},
    )


def _scorers() -> Scorers:
    return Scorers(RefusalDetector(None), OffensiveScorer(unavailable_reason="not installed"),
                   FixedReward())


def test_evaluate_writes_report_table_and_charts(tmp_path: Path) -> None:
    out = tmp_path / "run"
    gen = FakeGenerator(reply=_reply)
    report = asyncio.run(evaluate(_plan(out), gen, _scorers(), lambda _: None))
    names = {p.name for p in out.iterdir()}
    assert {"results.jsonl", "judgments.jsonl", "report.json", "results.md",
            "refusal.png", "length.png", "winrate.png"} <= names
    assert "offensive.png" not in names  # the classifier was unavailable
    for png in out.glob("*.png"):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    saved = json.loads((out / "report.json").read_text())
    assert saved["results"] == json.loads(json.dumps(report["results"]))
    la = saved["results"]["LA alpha=3"]
    assert la["harmful"]["refusal_rate"]["value"] == 1.0
    assert la["helpful"]["refusal_rate"]["value"] == 0.25  # over-refusal 1 of 4
    assert saved["results"]["base"]["harmful"]["refusal_rate"]["k"] == 0
    assert la["helpful"]["reward_mean"] == 8.0  # both replies have eight words
    assert saved["offensive_classifier"] == {"available": False, "reason": "not installed"}
    assert saved["win_rates"]["LA alpha=3"]["helpful"]["consistency"] == 0.0
    assert saved["refusal_detector"]["held_out_examples"] > 30
    table = (out / "results.md").read_text()
    assert "| LA alpha=3 | 1.00 (4/4) | 0.25 (1/4) |" in table
    assert "bad request" not in table and "bad request" not in (out / "report.json").read_text()
    # 2 configs x 8 prompts answered + 4 helpful prompts judged twice
    assert len(gen.calls) == 16 + 8


def test_rerun_reuses_answers_and_judgements(tmp_path: Path) -> None:
    out = tmp_path / "run"
    asyncio.run(evaluate(_plan(out), FakeGenerator(reply=_reply), _scorers(), lambda _: None))
    again = FakeGenerator(reply=_reply)
    report = asyncio.run(evaluate(_plan(out), again, _scorers(), lambda _: None))
    assert again.calls == [] and report["new_answers"] == 0


def test_markdown_without_judge_or_extras() -> None:
    rate = {"value": 0.5, "k": 1, "n": 2, "ci95": [0.1, 0.9]}
    report = {
        "suites": {"helpful": {"harmful": False}},
        "results": {"base": {"helpful": {"n": 2, "refusal_rate": rate, "mean_words": 12.0}}},
        "win_rates": {},
    }
    assert render_markdown(report).splitlines() == [
        "| configuration | over-refusal helpful | words helpful |",
        "|---|---|---|",
        "| base | 0.50 (1/2) | 12.0 |",
    ]


def test_a_retrained_adapter_under_the_same_name_is_answered_again(tmp_path: Path) -> None:
    """Answers are stored by configuration key; the key follows the version a name serves."""
    out = tmp_path / "run"
    plan = EvalPlan(configs=(EvalConfig("base", "m"), EvalConfig("tuned", "helpful")),
                    suites=SUITES, sampling=SamplingParams(max_tokens=16), output=out)
    first = FakeGenerator(reply=_reply, versions={"helpful": ServedVersion("helpful@1", 100)})
    report = asyncio.run(evaluate(plan, first, _scorers(), lambda _: None))
    assert report["configs"][1]["model"] == "helpful@1"
    assert {c for c, _ in first.calls} == {"base", "tuned"}

    same = FakeGenerator(reply=_reply, versions={"helpful": ServedVersion("helpful@1", 100)})
    asyncio.run(evaluate(plan, same, _scorers(), lambda _: None))
    assert same.calls == []

    retrained = FakeGenerator(reply=_reply, versions={"helpful": ServedVersion("helpful@2", 200)})
    report = asyncio.run(evaluate(plan, retrained, _scorers(), lambda _: None))
    assert [c for c, _ in retrained.calls] == ["tuned"] * 8  # the base's answers still stand
    assert report["new_answers"] == 8 and report["configs"][1]["model"] == "helpful@2"
