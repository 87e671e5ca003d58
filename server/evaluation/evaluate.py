"""One evaluation: answers for every (configuration, suite item), scores, judgements, report.

Generation and judging go through a ``Generator`` (the OpenAI client against a live server in
the CLI, a fake in tests) and are resumable; scoring is recomputed from the stored texts on
every run, so a better detector never needs new answers.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from server.assets import ProgressFn
from server.evaluation.configs import EvalConfig, SamplingParams, check_unique
from server.evaluation.judge import JUDGMENTS_FILE, JudgmentStore, PairJob, judge_pairs
from server.evaluation.metrics import win_rate
from server.evaluation.packaged import OffensiveScorer, SentenceEncoder
from server.evaluation.refusal import RefusalDetector, cross_validated_scores
from server.evaluation.refusal_examples import EXAMPLES, split
from server.evaluation.report import suite_metrics, write_report
from server.evaluation.reward import RewardScorer
from server.evaluation.runner import (
    RESULTS_FILE,
    Generator,
    OpenAIGenerator,
    ResultStore,
    pin_versions,
    run_generation,
)
from server.evaluation.suites import SUITES, EvalItem

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class JudgeSpec:
    model: str
    baseline: str  # a configuration name
    suites: tuple[str, ...] = ("helpful",)


@dataclass(frozen=True)
class EvalPlan:
    configs: tuple[EvalConfig, ...]
    suites: Mapping[str, list[EvalItem]]
    sampling: SamplingParams
    output: Path
    concurrency: int = 8
    judge: JudgeSpec | None = None
    meta: Mapping[str, Any] = field(default_factory=dict)  # command line, base URL: for the record


@dataclass
class Scorers:
    refusal: RefusalDetector
    offensive: OffensiveScorer
    reward: RewardScorer | None = None
    notes: dict[str, str] = field(default_factory=dict)


def build_scorers(home: Path, say: ProgressFn, reward: RewardScorer | None = None) -> Scorers:
    """Refusal detector on the packaged MiniLM (keywords only if it cannot load), profanity."""
    notes: dict[str, str] = {}
    try:
        encoder = SentenceEncoder.packaged(home, say)
        detector = RefusalDetector.trained(encoder.encode)
    except Exception as exc:  # the keyword path still gives a refusal rate
        logger.warning("MiniLM unavailable, refusal detector uses keywords only: %s", exc)
        notes["refusal_detector"] = f"keywords only: MiniLM failed to load ({exc})"
        detector = RefusalDetector(None)
    offensive = OffensiveScorer.packaged(home, say)
    if not offensive.available:
        notes["offensive"] = str(offensive.unavailable_reason)
    return Scorers(detector, offensive, reward, notes)


def detector_report(detector: RefusalDetector) -> dict[str, Any]:
    train, held = split()
    report: dict[str, Any] = {
        "train_examples": len(train), "held_out_examples": len(held),
        "threshold": detector.threshold,
        "held_out": {k: v.as_dict() for k, v in detector.held_out_scores().items()},
    }
    if detector.classifier is not None:  # every labelled example, scored out of fold
        scores = cross_validated_scores(detector.classifier.encode)
        report["cross_validated"] = {
            "folds": 3, "examples": len(EXAMPLES), **{k: v.as_dict() for k, v in scores.items()}
        }
    return report


async def _score(plan: EvalPlan, store: ResultStore, scorers: Scorers) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for config in plan.configs:
        key = config.key(plan.sampling)
        per_suite: dict[str, Any] = {}
        for suite, items in plan.suites.items():
            done = [(i, r) for i in items if (r := store.get(i.item_id, key)) is not None]
            texts = [r.text for _, r in done]
            offensive = scorers.offensive.score(texts) if scorers.offensive.available else None
            rewards = None
            if scorers.reward is not None:
                rewards = await scorers.reward.score([i.prompt for i, _ in done], texts)
            detections = scorers.refusal.detect(texts)
            per_suite[suite] = suite_metrics(
                texts, [r.completion_tokens for _, r in done], [r.finish_reason for _, r in done],
                [d.refusal for d in detections], offensive, rewards,
                keyword_refusals=[d.keyword for d in detections],
            )
            logger.info("%s / %s: n=%d refusal=%.3f words=%.1f", config.name, suite,
                        per_suite[suite]["n"], per_suite[suite]["refusal_rate"]["value"],
                        per_suite[suite]["mean_words"])
        results[config.name] = per_suite
    return results


async def _judge(
    plan: EvalPlan, generator: Generator, store: ResultStore, say: ProgressFn
) -> dict[str, Any]:
    spec = plan.judge
    if spec is None:
        return {}
    by_name = {c.name: c for c in plan.configs}
    if spec.baseline not in by_name:
        raise ValueError(f"judge baseline {spec.baseline!r} is not one of {list(by_name)}")
    base_key = by_name[spec.baseline].key(plan.sampling)
    judgments = JudgmentStore(plan.output / JUDGMENTS_FILE)
    out: dict[str, Any] = {}
    for config in plan.configs:
        if config.name == spec.baseline:
            continue
        x_key = config.key(plan.sampling)
        for suite in spec.suites:
            if suite not in plan.suites:
                continue
            jobs = [PairJob(i.item_id, i.prompt, x_key, base_key) for i in plan.suites[suite]]
            say(f"judging {config.name} vs {spec.baseline} on {suite} ({len(jobs)} prompts)")
            pairs = await judge_pairs(generator, spec.model, store, jobs, judgments,
                                      plan.concurrency, say)
            out.setdefault(config.name, {})[suite] = win_rate(pairs).as_dict()
    return out


async def evaluate_and_close(
    plan: EvalPlan, generator: OpenAIGenerator, scorers: Scorers, say: ProgressFn
) -> dict[str, Any]:
    """``evaluate`` with a client that belongs to this run alone."""
    try:
        return await evaluate(plan, generator, scorers, say)
    finally:
        await generator.close()


async def evaluate(
    plan: EvalPlan, generator: Generator, scorers: Scorers, say: ProgressFn
) -> dict[str, Any]:
    """Run the plan, write report.json, results.md and charts into ``plan.output``."""
    check_unique(plan.configs)
    start = time.monotonic()
    plan = replace(plan, configs=await pin_versions(plan.configs, generator, say))
    plan.output.mkdir(parents=True, exist_ok=True)
    store = ResultStore(plan.output / RESULTS_FILE)
    items: Sequence[EvalItem] = [i for items in plan.suites.values() for i in items]
    say(f"{len(plan.configs)} configurations x {len(items)} prompts "
        f"({', '.join(f'{s}={len(v)}' for s, v in plan.suites.items())})")
    new = await run_generation(generator, store, plan.configs, items, plan.sampling,
                               plan.concurrency, say)
    generation_s = time.monotonic() - start
    win_rates = await _judge(plan, generator, store, say)
    say("scoring answers")
    results = await _score(plan, store, scorers)
    report: dict[str, Any] = {
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        **dict(plan.meta),
        "sampling": plan.sampling.__dict__,
        "suites": {s: {"n": len(v), "harmful": SUITES.get(s).harmful,
                       "description": SUITES.get(s).description} for s, v in plan.suites.items()},
        "configs": [{**c.describe(), "key": c.key(plan.sampling)} for c in plan.configs],
        "results": results,
        "judge": None if plan.judge is None else plan.judge.__dict__,
        "win_rates": win_rates,
        "refusal_detector": detector_report(scorers.refusal),
        "offensive_classifier": {"available": scorers.offensive.available,
                                 "reason": scorers.offensive.unavailable_reason},
        "notes": scorers.notes,
        "new_answers": new,
        "generation_s": round(generation_s, 1),
        "elapsed_s": round(time.monotonic() - start, 1),
    }
    for path in write_report(report, plan.output):
        say(f"wrote {path}")
    return report
