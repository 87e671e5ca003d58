"""Suites: stable ids, prefix-stable limits, seeded jailbreak sampling, safe template filling."""

from __future__ import annotations

from pathlib import Path

import pytest

from server.evaluation import suites
from server.evaluation.suites import (
    SUITES,
    load_harmful,
    load_helpful,
    load_jailbreak,
    parse_suite_spec,
    sample_pairs,
    wrap,
)


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
