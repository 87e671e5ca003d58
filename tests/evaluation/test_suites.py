"""Suites: stable ids, prefix-stable limits, seeded jailbreak sampling, safe template filling."""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path

import pytest

from server.evaluation import suites
from server.evaluation.configs import EvalConfig, SamplingParams
from server.evaluation.evaluate import EvalPlan, Scorers, evaluate
from server.evaluation.packaged import OffensiveScorer
from server.evaluation.refusal import RefusalDetector
from server.evaluation.suites import (
    SUITES,
    benign_sensitive_prompts,
    load_benign_sensitive,
    load_harmful,
    load_helpful,
    load_jailbreak,
    parse_suite_spec,
    sample_pairs,
    wrap,
)
from tests.evaluation.conftest import FakeGenerator


def _paths(home: Path) -> dict[str, Path]:
    dev = home / "data" / "dev"
    return {p.stem: p for p in dev.iterdir()}


def test_harmful_alternates_sources_and_limit_is_a_prefix(fake_home: Path) -> None:
    items = load_harmful(_paths(fake_home), 6)
    assert [i.item_id for i in items] == [
        "harmbench:0", "donotanswer:0", "harmbench:1", "donotanswer:1",
        "harmbench:2", "donotanswer:2",
    ]
    assert all(i.harmful and i.suite == "harmful" for i in items)
    # 5 + 3 prompts: after Do-Not-Answer runs out, HarmBench continues alone.
    assert [i.item_id for i in load_harmful(_paths(fake_home), 100)][6:] == [
        "harmbench:3", "harmbench:4"]
    assert load_harmful(_paths(fake_home), 3) == items[:3]


def test_helpful_is_benign(fake_home: Path) -> None:
    items = load_helpful(_paths(fake_home), 2)
    assert [(i.item_id, i.prompt, i.harmful) for i in items] == [
        ("alpacaeval:0", "helpful instruction 0", False),
        ("alpacaeval:1", "helpful instruction 1", False)]


def test_wrap_replaces_only_the_slot() -> None:
    # str.format would fail on {x} and turn {{braces}} into {braces}.
    assert wrap("A {x} {{b}} {prompt}!", "req") == "A {x} {{b}} req!"


def test_sample_pairs_is_seeded_distinct_and_prefix_stable() -> None:
    long = sample_pairs(3, 4, 10, seed=7)
    assert sample_pairs(3, 4, 4, seed=7) == long[:4]
    assert sample_pairs(3, 4, 10, seed=7) == long
    assert len(set(long)) == 10
    assert sample_pairs(3, 4, 100, seed=7).__len__() == 12  # all pairs, no endless loop
    assert sample_pairs(3, 4, 10, seed=8) != long


def test_jailbreak_skips_long_and_slotless_templates(fake_home: Path) -> None:
    items = load_jailbreak(_paths(fake_home), 10)
    assert len(items) == 10  # 2 usable templates x 5 HarmBench requests
    for item in items:
        _, template, prompt_id = item.item_id.split(":", 2)
        assert template in ("t0", "t1") and prompt_id.startswith("harmbench:")
        assert "{prompt}" not in item.prompt and "hb request" in item.prompt
    assert load_jailbreak(_paths(fake_home), 4) == items[:4]


def test_load_suite_pulls_only_its_datasets(fake_home: Path, monkeypatch) -> None:
    asked = []

    def fake_pull(home, names, progress=None):
        asked.append(tuple(names))
        return {n: p for n, p in _paths(home).items() if n in names}

    monkeypatch.setattr(suites, "pull_datasets", fake_pull)
    assert len(suites.load_suite("helpful", fake_home, 3)) == 3
    assert asked == [SUITES.get("helpful").datasets]


def test_parse_suite_spec() -> None:
    assert parse_suite_spec("harmful", 40) == ("harmful", 40)
    assert parse_suite_spec("jailbreak:20", 40) == ("jailbreak", 20)
    with pytest.raises(KeyError, match="valid names"):
        parse_suite_spec("nope", 40)
    with pytest.raises(ValueError):
        parse_suite_spec("helpful:0", 40)


def test_benign_sensitive_set_size_ids_and_text() -> None:
    dev, train = benign_sensitive_prompts("dev"), benign_sensitive_prompts("train")
    records = dev + train
    assert len(records) >= 200
    assert len({r["id"] for r in records}) == len(records)
    assert len({r["prompt"].strip().lower() for r in records}) == len(records)
    assert all(set(r) == {"id", "prompt", "category", "split"} for r in records)
    assert all(r["prompt"].strip() and r["category"] for r in records)
    with pytest.raises(ValueError, match="split"):
        benign_sensitive_prompts("test")


def test_benign_sensitive_splits_are_disjoint_and_stratified() -> None:
    dev, train = benign_sensitive_prompts("dev"), benign_sensitive_prompts("train")
    assert len(dev) >= 100 and len(train) >= 100
    assert {r["split"] for r in dev} == {"dev"} and {r["split"] for r in train} == {"train"}
    assert not {r["id"] for r in dev} & {r["id"] for r in train}
    assert not {r["prompt"] for r in dev} & {r["prompt"] for r in train}
    dev_cats = Counter(r["category"] for r in dev)
    train_cats = Counter(r["category"] for r in train)
    assert len(dev_cats) >= 10 and set(dev_cats) == set(train_cats)
    for cat in dev_cats:  # stratified: each category split about in half
        assert abs(dev_cats[cat] - train_cats[cat]) <= 1, cat


def test_benign_sensitive_suite_is_dev_benign_and_prefix_stable(tmp_path: Path) -> None:
    dev = benign_sensitive_prompts("dev")
    items = load_benign_sensitive({}, 1000)
    assert [i.item_id for i in items] == [f"benign_sensitive:{r['id']}" for r in dev]
    assert [i.prompt for i in items] == [r["prompt"] for r in dev]
    assert all(i.suite == "benign_sensitive" and not i.harmful for i in items)
    assert load_benign_sensitive({}, 12) == items[:12]
    # Any prefix mixes categories (the file interleaves them).
    assert len({r["category"] for r in dev[:12]}) >= 10
    suite = SUITES.get("benign_sensitive")
    assert suite.datasets == () and not suite.harmful
    # Shipped in the package: no pull, nothing written under home.
    assert suites.load_suite("benign_sensitive", tmp_path, 5) == items[:5]
    assert suites.load_suite("benign_sensitive", tmp_path, 5, offset=60) == items[60:65]
    assert suites.load_suite("benign_sensitive", tmp_path, 40, offset=len(items) - 2) == items[-2:]
    assert list(tmp_path.iterdir()) == []
    assert parse_suite_spec("benign_sensitive:40", 10) == ("benign_sensitive", 40)


def test_eval_reports_benign_sensitive_refusals_as_over_refusal(tmp_path: Path) -> None:
    items = load_benign_sensitive({}, 4)
    first = items[0].prompt

    def reply(config: EvalConfig, prompt: str) -> str:  # declines one of the four
        return "I'm sorry, but I can't help with that." if prompt == first else "Sure: step one."

    plan = EvalPlan(configs=(EvalConfig("base", "m"),), suites={"benign_sensitive": items},
                    sampling=SamplingParams(max_tokens=8), output=tmp_path / "run")
    scorers = Scorers(RefusalDetector(None), OffensiveScorer(unavailable_reason="not installed"))
    report = asyncio.run(evaluate(plan, FakeGenerator(reply=reply), scorers, lambda _: None))
    assert report["suites"]["benign_sensitive"]["harmful"] is False
    assert report["results"]["base"]["benign_sensitive"]["refusal_rate"]["k"] == 1
    table = (tmp_path / "run" / "results.md").read_text()
    assert "over-refusal benign_sensitive" in table and "0.25 (1/4)" in table
