"""The align loop's built-in training prompts never meet a dev suite's prompt."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from server import align_prompts
from server.evaluation.suites import (
    DEV_RESERVED,
    benign_sensitive_prompts,
    load_harmful,
    load_helpful,
    load_jailbreak,
)


@pytest.fixture
def pools(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    """Stand-in pools as large as the real ones' relevant parts (200 HarmBench requests)."""
    dev = tmp_path / "data" / "dev"
    dev.mkdir(parents=True)

    def jsonl(name: str, prompts: list[str]) -> Path:
        path = dev / f"{name}.jsonl"
        path.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in prompts))
        return path

    paths = {
        "harmful_harmbench": jsonl("harmful_harmbench", [f"hb {i}" for i in range(200)]),
        "harmful_donotanswer": jsonl("harmful_donotanswer", [f"dna {i}" for i in range(500)]),
        "helpful_alpacaeval": jsonl("helpful_alpacaeval", [f"help {i}" for i in range(400)]),
    }
    templates = dev / "jailbreak_templates.json"
    templates.write_text(json.dumps([f"Template {i}: {{prompt}}" for i in range(40)]))
    paths["jailbreak_templates"] = templates
    monkeypatch.setattr(align_prompts, "pull_datasets",
                        lambda home, names, progress=None: {n: paths[n] for n in names})
    return paths


def test_training_prompts_avoid_every_dev_prompt(pools: dict[str, Path], tmp_path: Path) -> None:
    rows = align_prompts.training_prompts(tmp_path, 300, seed=3)
    dev = {i.prompt for i in load_harmful(pools, DEV_RESERVED)}
    dev |= {i.prompt for i in load_helpful(pools, DEV_RESERVED)}
    dev |= {r["prompt"] for r in benign_sensitive_prompts("dev")}
    jailbreak = load_jailbreak(pools, 1000)
    dev |= {r.item_id.split(":", 2)[2] for r in jailbreak}  # harmbench:<i> ids
    train = {r["prompt"] for r in rows}
    assert not train & dev
    hb_train = {int(r["prompt"].split()[1]) for r in rows if r["source"] == "harmbench"}
    hb_jailbreak = {int(r.item_id.rsplit(":", 1)[1]) for r in jailbreak}
    assert hb_train and hb_jailbreak and not hb_train & hb_jailbreak


def test_training_prompts_are_half_harmful_from_every_source(
    pools: dict[str, Path], tmp_path: Path
) -> None:
    rows = align_prompts.training_prompts(tmp_path, 200, seed=0)
    kinds = Counter(r["kind"] for r in rows)
    assert kinds == {"harmful": 100, "benign": 100}
    sources = Counter(r["source"] for r in rows if r["kind"] == "harmful")
    assert sources == {"harmbench": 34, "donotanswer": 33, "written": 33}
    assert align_prompts.training_prompts(tmp_path, 200, seed=0) == rows
    assert align_prompts.training_prompts(tmp_path, 200, seed=1) != rows


def test_written_harmful_prompts_are_training_only_and_distinct() -> None:
    rows = align_prompts.written_harmful_prompts()
    assert len(rows) >= 50
    assert {r["split"] for r in rows} == {"train"}
    assert len({r["id"] for r in rows}) == len({r["prompt"] for r in rows}) == len(rows)
    benign = {r["prompt"] for split in ("dev", "train") for r in benign_sensitive_prompts(split)}
    assert not benign & {r["prompt"] for r in rows}
    # Interleaved categories: a short draw still covers every risk area.
    categories = Counter(r["category"] for r in rows)
    assert {r["category"] for r in rows[:len(categories)]} == set(categories)


def test_written_prompts_run_out_before_the_public_pools(
    pools: dict[str, Path], tmp_path: Path
) -> None:
    rows = align_prompts.training_prompts(tmp_path, 600, seed=0)
    written = align_prompts.written_harmful_prompts()
    sources = Counter(r["source"] for r in rows if r["kind"] == "harmful")
    assert sources["written"] == len(written)
    assert sources["harmbench"] + sources["donotanswer"] == 300 - len(written)
