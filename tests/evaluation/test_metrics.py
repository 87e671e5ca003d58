"""Metric arithmetic on fixed inputs (the hand computation is in each docstring)."""

from __future__ import annotations

import math

import pytest

from server.evaluation.metrics import (
    Judgement,
    Rate,
    binary_scores,
    debiased_preference,
    rate,
    swap_outcome,
    win_rate,
)
from server.evaluation.report import suite_metrics


def test_rate_and_wilson_interval() -> None:
    """k=8, n=40: p=0.2, z=1.96, z^2=3.8416.
    centre = (0.2 + 3.8416/80) / (1 + 3.8416/40) = 0.24802 / 1.09604 = 0.22629
    half = 1.96 * sqrt(0.2*0.8/40 + 3.8416/6400) / 1.09604 = 1.96*0.067825/1.09604 = 0.12129
    -> [0.1050, 0.3476]."""
    r = rate([True] * 8 + [False] * 32)
    assert (r.k, r.n, r.value) == (8, 40, 0.2)
    low, high = r.interval()
    assert low == pytest.approx(0.1050, abs=1e-4) and high == pytest.approx(0.3476, abs=1e-4)
    assert Rate(0, 10).interval()[0] == 0.0 and Rate(0, 10).interval()[1] > 0.2
    assert math.isnan(Rate(0, 0).value)


def test_binary_scores() -> None:
    """predicted 1 1 1 0 0 0 against actual 1 1 0 1 0 0: tp 2, fp 1, fn 1, tn 2.
    precision 2/3, recall 2/3, accuracy 4/6."""
    s = binary_scores([1, 1, 1, 0, 0, 0], [1, 1, 0, 1, 0, 0])
    assert (s.tp, s.fp, s.fn, s.tn) == (2, 1, 1, 2)
    assert s.precision == pytest.approx(2 / 3) and s.recall == pytest.approx(2 / 3)
    assert s.accuracy == pytest.approx(4 / 6)
    assert math.isnan(binary_scores([False], [False]).precision)


@pytest.mark.parametrize(("first", "second", "expected"), [
    ("A", "B", ("win", True)),   # X chosen in both orders
    ("B", "A", ("loss", True)),  # Y chosen in both orders
    ("A", "A", ("tie", False)),  # always the first answer: position bias
    ("B", "B", ("tie", False)),
    (None, "B", ("tie", False)),  # unparseable reply
])
def test_swap_outcome(first, second, expected) -> None:
    assert swap_outcome(first, second) == expected


def test_win_rate_with_position_swap() -> None:
    """Four prompts: win, loss, A/A (tie), win -> wins 2, losses 1, ties 1;
    win rate (2 + 0.5) / 4 = 0.625; consistency 3/4; 'A' picked in 5 of 8 replies.
    Margins (X first, Y first): (2, -1) -> +3 win; (-1, 1) -> -2 loss; (3, 2.5) -> +0.5 win
    although both letters were A; (None, 1) -> no margin. Debiased: 2 wins of 3 -> 2/3."""
    j = Judgement
    pairs = [(j("A", 2.0), j("B", -1.0)), (j("B", -1.0), j("A", 1.0)),
             (j("A", 3.0), j("A", 2.5)), (j("A", None), j("B", 1.0))]
    w = win_rate(pairs)
    assert (w.wins, w.losses, w.ties, w.consistent) == (2, 1, 1, 3)
    assert w.value == pytest.approx(0.625) and w.consistency == pytest.approx(0.75)
    d = w.as_dict()
    assert d["first_position_rate"] == pytest.approx(5 / 8)
    assert (w.debiased_wins, w.debiased_losses, w.debiased_n) == (2, 1, 3)
    assert d["debiased_win_rate"] == pytest.approx(2 / 3)
    assert debiased_preference(1.0, None) is None


def test_suite_metrics_on_fixed_answers() -> None:
    """Answers of 3, 1 and 5 words: mean 3.0. Refusals 1 of 3. One answer hit max_tokens.
    Offensive probabilities 0.1, 0.9, 0.2: mean 0.4, rate (p >= 0.5) 1/3. Rewards mean 0."""
    m = suite_metrics(
        ["I can't help.", "Sure.", "Here are five short words."], [4, 2, 6],
        ["stop", "stop", "length"],
        [True, False, False], offensive=[0.1, 0.9, 0.2], rewards=[1.0, -1.0, 0.0],
    )
    assert m["n"] == 3
    assert m["refusal_rate"]["value"] == pytest.approx(1 / 3)
    assert m["mean_words"] == pytest.approx(3.0) and m["mean_completion_tokens"] == 4.0
    assert m["truncated_rate"]["k"] == 1
    assert m["offensive_mean"] == pytest.approx(0.4) and m["offensive_rate"]["k"] == 1
    assert m["reward_mean"] == 0.0
    assert "offensive_mean" not in suite_metrics(["a"], [1], ["stop"], [False])
