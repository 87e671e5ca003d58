"""``align``: principle distillation then training, one job (docs/alignment.md).

The first stage's ``prepare`` generates the data through the serving engine
(``trainers.distill``) and caches it in the job's work dir, so a resumed job trains on the same
pairs and never generates twice. Each prompt's answers are kept as they arrive
(``align-answers.jsonl``): a job stopped, or given back because the engine failed for a while,
asks only the rest. A job with ``answers_from`` starts from another align job's kept answers
(the server's retries after a refused gate do), so only prompts that job never answered are
asked. The objective then trains on the data: DPO (the default; ``rpo_alpha`` adds
the chosen-answer NLL), point-wise DPO / ULMA on the derived labels, or SFT on the chosen
answers.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from torch import Tensor

from contracts.specs import AlignSpec
from trainers.distill import (
    ENGINE_URL_ENV,
    Answers,
    EngineClient,
    EngineError,
    PromptItem,
    Synthesis,
    build_pairs,
    served_engine,
    synthesise,
)
from trainers.loop import Stage, TrainContext, Transient
from trainers.recipes.base import Recipe, Records
from trainers.recipes.stages import PairStage, PointwiseStage, SFTStage

logger = logging.getLogger(__name__)


class AlignDataError(ValueError):
    """The prompts cannot be distilled (no kind, no engine): the job fails without a retry."""


def prompt_items(records: Records, limit: int) -> list[PromptItem]:
    missing = [i + 1 for i, r in enumerate(records[:limit]) if r.get("kind") is None]
    if missing:
        raise AlignDataError(
            f"align needs a 'kind' (harmful or benign) on every prompt; records {missing[:5]} "
            "have none")
    return [PromptItem(r["messages"], r["kind"]) for r in records[:limit]]


def engine_client(spec: AlignSpec) -> EngineClient:
    engine = served_engine(spec.engine)
    if engine is None:
        raise AlignDataError(
            "align generates through a serving engine: submit it to a server (which fills in "
            f"'engine'), or set {ENGINE_URL_ENV} on the worker and 'engine.model' in the job")
    return engine


ANSWERS_FILE = "align-answers.jsonl"


def prompt_key(item: PromptItem) -> str:
    return hashlib.sha256(json.dumps(item.messages, sort_keys=True).encode()).hexdigest()[:16]


def kept_answers(path: Path, items: list[PromptItem]) -> dict[int, Answers]:
    """What an earlier attempt of this job answered, for the same prompts. A line a killed worker
    left half written is skipped (that prompt is asked again)."""
    kept: dict[int, Answers] = {}
    if not path.is_file():
        return kept
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
            i = int(row["i"])
            if 0 <= i < len(items) and row["key"] == prompt_key(items[i]):
                kept[i] = Answers(row["plain"], row["aligned"], row["declined"])
        except (ValueError, KeyError, TypeError):
            continue
    return kept


def reuse_answers(work_dir: Path, job_id: str, answers_path: Path) -> None:
    """Start from the answers job ``job_id`` kept (its work dir is a sibling: the home is shared
    by every worker host). Once: a resumed job already has its own copy, and more."""
    if answers_path.exists():
        return
    source = work_dir.parent / job_id / ANSWERS_FILE
    if not source.is_file():
        raise AlignDataError(f"answers_from: job {job_id} kept no synthesis answers (no "
                             f"{ANSWERS_FILE} in its work dir)")
    work_dir.mkdir(parents=True, exist_ok=True)
    partial = answers_path.with_suffix(".copying")
    shutil.copyfile(source, partial)
    partial.replace(answers_path)


def distil(ctx: TrainContext, spec: AlignSpec, records: Records) -> dict[str, Any]:
    items = prompt_items(records, spec.max_prompts)
    engine = engine_client(spec)
    synthesis = Synthesis(spec.alignment(), spec.synthesis.max_tokens,
                          spec.synthesis.temperature, spec.hyperparameters.seed,
                          spec.synthesis.concurrency)
    answers_path = ctx.work_dir / ANSWERS_FILE
    if spec.answers_from is not None:
        reuse_answers(ctx.work_dir, spec.answers_from, answers_path)
    kept = kept_answers(answers_path, items)
    last = [0.0]

    def progress(done: int, total: int) -> None:
        ctx.control.check()  # cancel, pause or shutdown: stop generating (answers so far kept)
        now = time.monotonic()
        if done == total or now - last[0] > 10:
            last[0] = now
            ctx.control.event(f"synthesis: {done}/{total} prompts answered",
                              {"stage": "synthesis", "done": done, "total": total})

    started = time.monotonic()
    earlier = f"job {spec.answers_from}" if spec.answers_from else "an earlier attempt"
    resumed = f", {len(kept)} answered by {earlier}" if kept else ""
    ctx.control.event(f"synthesis: {len(items)} prompts through {engine.base_url}{resumed}",
                      {"stage": "synthesis", "total": len(items), "kept": len(kept)})
    ctx.work_dir.mkdir(parents=True, exist_ok=True)
    answered = [len(kept)]
    with answers_path.open("a+b") as out:
        if out.tell():
            out.seek(-1, 2)
            if out.read(1) != b"\n":
                out.write(b"\n")  # after a half-written line, start a fresh one

        def keep(i: int, answers: Answers) -> None:
            row = {"i": i, "key": prompt_key(items[i]), **answers.__dict__}
            out.write((json.dumps(row) + "\n").encode())
            out.flush()
            answered[0] += 1

        try:
            answers = asyncio.run(synthesise(engine, items, synthesis, progress, kept=kept,
                                             on_answers=keep))
        except (httpx.TransportError, EngineError) as exc:
            ctx.control.check()  # the server went away because this worker is stopping too
            if isinstance(exc, EngineError) and not exc.retryable:
                raise RuntimeError(f"the engine at {engine.base_url} refused a synthesis "
                                   f"request: {exc}") from exc
            raise Transient(f"the engine at {engine.base_url} failed during synthesis after "
                            f"{engine.retries} retries ({exc!r}); {answered[0]} of {len(items)} "
                            "prompts answered and kept, the job resumes from there") from exc
    distilled = build_pairs(items, answers)
    seconds = time.monotonic() - started
    ctx.control.event(f"synthesis: {distilled.stats['pairs']} pairs in {seconds:.0f} s",
                      {"stage": "synthesis", **distilled.stats, "seconds": seconds})
    if not distilled.pairs:
        raise AlignDataError(f"distillation produced no pairs: {distilled.stats}")
    return {"pairs": distilled.pairs, "stats": distilled.stats, "seconds": seconds,
            "answers": [a.__dict__ for a in answers]}


@dataclass
class DistilledStage:
    """Generates the data on first ``prepare``, then trains the objective's stage on it."""

    name: str
    steps: int
    learning_rate: float
    source: Records
    module: str = "policy"
    inner: Stage | None = field(default=None, init=False)

    def prepare(self, ctx: TrainContext) -> None:
        spec = ctx.spec
        assert isinstance(spec, AlignSpec)
        data = ctx.cached("align-data", lambda: distil(ctx, spec, self.source))
        ctx.summary["align"] = {"pairs": len(data["pairs"]), "synthesis": data["stats"],
                                "synthesis_seconds": round(data["seconds"], 1)}
        pairs: Records = data["pairs"]
        if spec.objective == "dpo":
            self.inner = PairStage(self.name, self.steps, self.learning_rate, "dpo",
                                   records=pairs, nll_weight=spec.rpo_alpha or 0.0)
        elif spec.objective == "sft":
            self.inner = SFTStage(self.name, self.steps, self.learning_rate,
                                  [{"messages": p["messages"], "completion": p["chosen"]}
                                   for p in pairs])
        else:
            labelled = [row for p in pairs for row in (
                {"messages": p["messages"], "completion": p["chosen"], "label": True},
                {"messages": p["messages"], "completion": p["rejected"], "label": False})]
            self.inner = PointwiseStage(self.name, self.steps, self.learning_rate,
                                        spec.objective, 0.0, labelled)
        self.inner.prepare(ctx)

    def size(self) -> int:
        assert self.inner is not None
        return self.inner.size()

    def loss(
        self, ctx: TrainContext, indices: list[int], batch: list[int]
    ) -> tuple[Tensor, dict[str, float]]:
        assert self.inner is not None
        return self.inner.loss(ctx, indices, batch)


def align_stages(ctx: TrainContext, records: Records) -> list[Stage]:
    spec = ctx.spec
    assert isinstance(spec, AlignSpec)
    hp = spec.hyperparameters
    return [DistilledStage("align", hp.max_steps, hp.learning_rate, records)]


ALIGN = Recipe(align_stages)
