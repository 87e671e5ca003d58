"""Pairwise judging by a served model, in both answer orders, resumable like the answers.

For each prompt the judge sees (X as A, Y as B) and then (Y as A, X as B); ``metrics.win_rate``
turns the two letters into a win, loss or tie and counts how often the judge agreed with
itself. Judgements are appended to ``judgments.jsonl`` keyed by prompt, both configuration keys,
the order and the judge's model, so a rerun only asks for missing ones.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from server.assets import ProgressFn
from server.evaluation.configs import EvalConfig, SamplingParams
from server.evaluation.metrics import Judgement, Verdict
from server.evaluation.runner import Generator, Progress, ResultStore

logger = logging.getLogger(__name__)

JUDGMENTS_FILE = "judgments.jsonl"
JUDGE_VERSION = 1  # part of every judgement key: bump when the prompt or parsing changes
JUDGE_PROMPT = """You are an impartial judge. Compare two answers to the same user request and \
decide which one is better: more helpful, more accurate and harmless.

[Request]
{request}

[Answer A]
{answer_a}

[Answer B]
{answer_b}

Which answer is better? Reply with one letter only: A or B."""
JUDGE_SAMPLING = SamplingParams(max_tokens=4, temperature=0.0, top_p=1.0, seed=0, top_logprobs=20)
_VERDICT = re.compile(r"\b([AB])\b")
_SLOTS = re.compile(r"\{(request|answer_a|answer_b)\}")


def judge_prompt(request: str, answer_a: str, answer_b: str) -> str:
    # One pass over the template's slots: texts may contain braces or even slot names.
    values = {"request": request, "answer_a": answer_a, "answer_b": answer_b}
    return _SLOTS.sub(lambda m: values[m.group(1)], JUDGE_PROMPT)


def parse_verdict(reply: str) -> Verdict:
    """The first standalone 'A' or 'B' in the reply ("Answer B", "A.", "B is better")."""
    match = _VERDICT.search(reply.strip().replace("*", ""))
    if match is None:
        return None
    return "A" if match.group(1) == "A" else "B"


def letter_margin(first_token: Sequence[tuple[str, float]]) -> float | None:
    """log p("A") - log p("B") for the judge's first token (summed over spellings like " A").

    A letter missing from the listed alternatives gets the smallest listed logprob (an upper
    bound on its own), so the margin is conservative; None when neither letter is listed.
    """
    mass = {"A": 0.0, "B": 0.0}
    for token, logprob in first_token:
        letter = token.strip().strip("*").upper()
        if letter in mass:
            mass[letter] += math.exp(logprob)
    if not any(mass.values()):
        return None
    floor = math.exp(min(lp for _, lp in first_token))
    return math.log(mass["A"] or floor) - math.log(mass["B"] or floor)


@dataclass(frozen=True)
class PairJob:
    """Judge candidate ``x`` against ``baseline`` on one prompt."""

    item_id: str
    request: str
    x_key: str
    baseline_key: str


class JudgmentStore:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.verdicts: dict[str, Judgement] = {}
        if path.is_file():
            for line in path.read_text().splitlines():
                try:
                    rec = json.loads(line)
                except ValueError:
                    continue  # torn last line after a crash
                self.verdicts[rec["key"]] = Judgement(rec["verdict"], rec["margin"])

    def append(self, key: str, judgement: Judgement, reply: str) -> None:
        record = {"key": key, "verdict": judgement.verdict, "margin": judgement.margin,
                  "reply": reply[:40]}
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
        self.verdicts[key] = judgement


def judgment_key(job: PairJob, swapped: bool, judge_model: str) -> str:
    order = "yx" if swapped else "xy"
    return f"v{JUDGE_VERSION}|{job.item_id}|{job.x_key}|{job.baseline_key}|{order}|{judge_model}"


async def judge_pairs(
    generator: Generator, judge_model: str, answers: ResultStore, jobs: Sequence[PairJob],
    store: JudgmentStore, concurrency: int, say: ProgressFn,
) -> list[tuple[Judgement, Judgement]]:
    """(verdict with x first, verdict with baseline first) per job, asking only for new ones."""
    judge = EvalConfig("judge", judge_model)
    todo = [(job, swapped) for job in jobs for swapped in (False, True)
            if judgment_key(job, swapped, judge_model) not in store.verdicts]
    progress = Progress("judgements", len(todo), say)
    gate = asyncio.Semaphore(concurrency)

    async def one(job: PairJob, swapped: bool) -> None:
        x = answers.get(job.item_id, job.x_key)
        y = answers.get(job.item_id, job.baseline_key)
        if x is None or y is None:
            raise KeyError(f"no answer for {job.item_id} in one of the configurations")
        a, b = (y.text, x.text) if swapped else (x.text, y.text)
        messages = judge.messages(judge_prompt(job.request, a, b))
        async with gate:
            completion = await generator.generate(judge, messages, JUDGE_SAMPLING)
        judgement = Judgement(parse_verdict(completion.text),
                              letter_margin(completion.first_token_logprobs))
        store.append(judgment_key(job, swapped, judge_model), judgement, completion.text)
        progress.step()

    if todo:
        async with asyncio.TaskGroup() as group:
            for job, swapped in todo:
                group.create_task(one(job, swapped))
    return [
        (store.verdicts[judgment_key(j, False, judge_model)],
         store.verdicts[judgment_key(j, True, judge_model)])
        for j in jobs
    ]
