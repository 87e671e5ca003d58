"""Metric arithmetic: plain values in, plain values out (definitions: docs/evaluation.md)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

Verdict = Literal["A", "B"] | None
Outcome = Literal["win", "loss", "tie"]


@dataclass(frozen=True)
class Judgement:
    """One judge reply: the letter it wrote and log p(A) - log p(B) of its first token."""

    verdict: Verdict
    margin: float | None = None


@dataclass(frozen=True)
class Rate:
    """k of n, with the Wilson score 95% interval (sensible at k = 0 or k = n)."""

    k: int
    n: int

    @property
    def value(self) -> float:
        return self.k / self.n if self.n else float("nan")

    def interval(self, z: float = 1.96) -> tuple[float, float]:
        if self.n == 0:
            return (float("nan"), float("nan"))
        p, n = self.value, self.n
        centre = (p + z * z / (2 * n)) / (1 + z * z / n)
        half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
        return (max(0.0, centre - half), min(1.0, centre + half))

    def as_dict(self) -> dict[str, Any]:
        low, high = self.interval()
        return {"value": self.value, "k": self.k, "n": self.n, "ci95": [low, high]}


def rate(flags: Sequence[bool]) -> Rate:
    return Rate(sum(bool(f) for f in flags), len(flags))


def mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


def word_count(text: str) -> int:
    return len(text.split())


@dataclass(frozen=True)
class BinaryScores:
    tp: int
    fp: int
    fn: int
    tn: int

    @property
    def precision(self) -> float:
        return self.tp / (self.tp + self.fp) if self.tp + self.fp else float("nan")

    @property
    def recall(self) -> float:
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else float("nan")

    @property
    def accuracy(self) -> float:
        total = self.tp + self.fp + self.fn + self.tn
        return (self.tp + self.tn) / total if total else float("nan")

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "precision": self.precision, "recall": self.recall,
                "accuracy": self.accuracy}


def binary_scores(predicted: Sequence[bool], actual: Sequence[bool]) -> BinaryScores:
    pairs = list(zip(predicted, actual, strict=True))
    return BinaryScores(
        tp=sum(p and a for p, a in pairs), fp=sum(p and not a for p, a in pairs),
        fn=sum(a and not p for p, a in pairs), tn=sum(not p and not a for p, a in pairs),
    )


def swap_outcome(first: Verdict, second: Verdict) -> tuple[Outcome, bool]:
    """Outcome for candidate X from two judgements: (X as A, Y as B), then (Y as A, X as B).

    Consistent when the judge picks the same answer in both orders: "A" then "B" means X won,
    "B" then "A" means Y won. Anything else (same letter twice: position bias; or an
    unparseable reply) is a tie and inconsistent.
    """
    if first == "A" and second == "B":
        return "win", True
    if first == "B" and second == "A":
        return "loss", True
    return "tie", False


@dataclass(frozen=True)
class WinRate:
    wins: int
    losses: int
    ties: int
    consistent: int
    first_position_picks: int  # how often the judge chose answer A (position bias)
    verdicts: int  # parseable judge replies
    debiased_wins: int = 0  # from logprob margins summed over both orders
    debiased_losses: int = 0
    debiased_n: int = 0  # pairs with a margin in both orders

    @property
    def n(self) -> int:
        return self.wins + self.losses + self.ties

    @property
    def value(self) -> float:
        """(wins + ties / 2) / n: 0.5 means no preference."""
        return (self.wins + 0.5 * self.ties) / self.n if self.n else float("nan")

    @property
    def consistency(self) -> float:
        return self.consistent / self.n if self.n else float("nan")

    @property
    def debiased_value(self) -> float:
        if not self.debiased_n:
            return float("nan")
        ties = self.debiased_n - self.debiased_wins - self.debiased_losses
        return (self.debiased_wins + 0.5 * ties) / self.debiased_n

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "n": self.n, "win_rate": self.value,
                "debiased_win_rate": self.debiased_value,
                "consistency": self.consistency,
                "first_position_rate": (self.first_position_picks / self.verdicts
                                        if self.verdicts else float("nan"))}


def debiased_preference(first: float | None, second: float | None) -> float | None:
    """X's preference from margins log p(A) - log p(B): ``first`` with X as A, ``second`` with
    Y as A. A constant pull towards one position adds to both margins and cancels here."""
    if first is None or second is None:
        return None
    return first - second


def win_rate(pairs: Sequence[tuple[Judgement, Judgement]]) -> WinRate:
    """Aggregate position-swapped judgements (X first, Y first) for candidate X vs baseline Y."""
    outcomes = [swap_outcome(a.verdict, b.verdict) for a, b in pairs]
    letters = [j.verdict for pair in pairs for j in pair if j.verdict is not None]
    prefs = [p for a, b in pairs if (p := debiased_preference(a.margin, b.margin)) is not None]
    return WinRate(
        wins=sum(o == "win" for o, _ in outcomes), losses=sum(o == "loss" for o, _ in outcomes),
        ties=sum(o == "tie" for o, _ in outcomes), consistent=sum(c for _, c in outcomes),
        first_position_picks=sum(v == "A" for v in letters), verdicts=len(letters),
        debiased_wins=sum(p > 0 for p in prefs), debiased_losses=sum(p < 0 for p in prefs),
        debiased_n=len(prefs),
    )
