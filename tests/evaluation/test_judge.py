"""Judge: prompt filling, verdict parsing, logprob margins, swapped and resumable judging."""

from __future__ import annotations

import asyncio
import math
from pathlib import Path

import pytest

from server.evaluation.configs import SamplingParams
from server.evaluation.judge import (
    JudgmentStore,
    PairJob,
    judge_pairs,
    judge_prompt,
    letter_margin,
    parse_verdict,
)
from server.evaluation.metrics import win_rate
from server.evaluation.runner import Result, ResultStore
from tests.evaluation.conftest import FakeGenerator


def test_judge_prompt_fills_slots_once() -> None:
    text = judge_prompt("req {answer_b}", "first {x}", "second")
    assert "req {answer_b}" in text and "first {x}" in text and "[Answer B]\nsecond" in text


@pytest.mark.parametrize(("reply", "verdict"), [
    ("A", "A"), ("B.", "B"), ("**B** is better", "B"), ("Answer A", "A"), ("Both", None),
    ("", None),
])
def test_parse_verdict(reply, verdict) -> None:
    assert parse_verdict(reply) == verdict


def test_letter_margin() -> None:
    """p(A) = 0.5 + 0.1 (two spellings), p(B) = 0.2: margin log 0.6 - log 0.2 = log 3."""
    top = [("A", math.log(0.5)), (" A", math.log(0.1)), ("B", math.log(0.2)), ("C", -5.0)]
    assert letter_margin(top) == pytest.approx(math.log(3))
    # B missing: it gets the smallest listed logprob (-5) as a bound.
    assert letter_margin([("A", -1.0), ("x", -5.0)]) == pytest.approx(4.0)
    assert letter_margin([("x", -1.0)]) is None and letter_margin([]) is None


def _answers(tmp_path: Path) -> ResultStore:
    store = ResultStore(tmp_path / "results.jsonl")
    for i in range(3):
        for key, text in (("xk", f"good answer {i}"), ("yk", f"bad answer {i}")):
            store.append(Result(f"p{i}", "helpful", key, key, text, 3, "stop", 0.1))
    return store


def test_a_judge_that_always_says_A_is_inconsistent(tmp_path: Path) -> None:
    jobs = [PairJob(f"p{i}", f"request {i}", "xk", "yk") for i in range(3)]
    judgments = JudgmentStore(tmp_path / "judgments.jsonl")
    gen = FakeGenerator(reply=lambda c, p: "A", logprobs=[("A", -0.1), ("B", -2.0)])
    pairs = asyncio.run(judge_pairs(gen, "judge-m", _answers(tmp_path), jobs, judgments, 2,
                                    lambda _: None))
    w = win_rate(pairs)
    assert (w.ties, w.consistency, w.value) == (3, 0.0, 0.5)
    assert w.debiased_n == 3 and w.debiased_value == 0.5  # equal margins cancel: no preference
    assert len(gen.calls) == 6
    again = FakeGenerator(reply=lambda c, p: "B")
    asyncio.run(judge_pairs(again, "judge-m", _answers(tmp_path),
                            jobs, JudgmentStore(tmp_path / "judgments.jsonl"), 2, lambda _: None))
    assert again.calls == []  # resumed from judgments.jsonl


def test_a_judge_that_reads_the_answers_is_consistent(tmp_path: Path) -> None:
    def prefers_good(config, prompt: str) -> str:
        return "A" if prompt.index("good answer") < prompt.index("bad answer") else "B"

    jobs = [PairJob(f"p{i}", f"request {i}", "xk", "yk") for i in range(3)]
    pairs = asyncio.run(judge_pairs(
        FakeGenerator(reply=prefers_good), "j", _answers(tmp_path), jobs,
        JudgmentStore(tmp_path / "j.jsonl"), 4, lambda _: None))
    w = win_rate(pairs)
    assert (w.wins, w.consistency, w.value) == (3, 1.0, 1.0)
    assert SamplingParams().top_logprobs is None
