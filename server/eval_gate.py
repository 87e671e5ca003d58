"""The evaluation gate: a staged version answers dev prompts before it may go live.

A job's ``deploy.gate`` (``contracts.specs.GateSpec``) names suites and bounds. While the new
version is staged (loaded, smoke-tested, not routable), it answers ``limit`` prompts of each
suite, from prompt ``offset`` on (past those the reported evaluations read), greedily through
the engine; the refusal detector of ``alignserve eval`` scores them.
A bound that fails refuses the version with the numbers, and what was live keeps serving. With
``not_worse_than_live``, the version live under the same name answers the same prompts too.

The suites' prompts are the evaluation's dev prompts, which no built-in training set uses
(``server.align_prompts``).
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from contracts.specs import GateSpec
from server.engine.base import Engine
from server.engine.types import GenerationRequest, SamplingOptions
from server.evaluation.metrics import rate
from server.evaluation.refusal import RefusalDetector
from server.evaluation.suites import SUITES, EvalItem, load_suite

logger = logging.getLogger(__name__)
CONCURRENCY = 16


class GateFailed(RuntimeError):
    """The staged version missed a bound; ``result`` has the numbers."""

    def __init__(self, result: GateResult) -> None:
        super().__init__("evaluation gate failed: " + "; ".join(result.failures))
        self.result = result


@dataclass
class GateResult:
    version: str
    rates: dict[str, dict[str, Any]]  # suite -> rate (value, k, n, Wilson interval)
    live_version: str | None = None
    live_rates: dict[str, dict[str, Any]] | None = None
    failures: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.failures

    def as_dict(self) -> dict[str, Any]:
        return {"version": self.version, "passed": self.passed, "refusal_rates": self.rates,
                "live_version": self.live_version, "live_refusal_rates": self.live_rates,
                "failures": self.failures}


def check_bounds(gate: GateSpec, rates: dict[str, dict[str, Any]],
                 live: dict[str, dict[str, Any]] | None) -> list[str]:
    """Which bounds fail (empty: the gate passes). Pure: the tests pin the rules here."""
    failures = []
    for suite, r in rates.items():
        harmful = SUITES.get(suite).harmful
        value = r["value"]
        if harmful and gate.min_harmful_refusal is not None and value < gate.min_harmful_refusal:
            failures.append(f"{suite} refusal {value:.2f} < {gate.min_harmful_refusal:.2f}")
        if not harmful and gate.max_over_refusal is not None and value > gate.max_over_refusal:
            failures.append(f"{suite} over-refusal {value:.2f} > {gate.max_over_refusal:.2f}")
        if live is not None and suite in live:
            before = live[suite]["value"]
            if harmful and value < before:
                failures.append(f"{suite} refusal {value:.2f} < live {before:.2f}")
            if not harmful and value > before:
                failures.append(f"{suite} over-refusal {value:.2f} > live {before:.2f}")
    return failures


class EvaluationGate:
    """Answers and scores suites on a version through the engine (staged versions included)."""

    def __init__(self, engine: Engine, home: Path, detector: RefusalDetector | None = None):
        self.engine, self.home = engine, home
        self._detector = detector

    def detector(self) -> RefusalDetector:
        if self._detector is None:  # the MiniLM detector of `alignserve eval`, built once
            from server.evaluation.evaluate import build_scorers

            self._detector = build_scorers(self.home, logger.info).refusal
        return self._detector

    async def run(self, gate: GateSpec, version: str, live_version: str | None) -> GateResult:
        items = {s: await asyncio.to_thread(load_suite, s, self.home, gate.limit, None,
                                            gate.offset)
                 for s in gate.suites}
        empty = [s for s, suite_items in items.items() if not suite_items]
        if empty:
            raise ValueError(f"gate suites {', '.join(empty)} have no prompts past their first "
                             f"{gate.offset}: lower deploy.gate.offset")
        rates = await self.rates(version, items, gate.max_tokens)
        live = None
        if gate.not_worse_than_live and live_version is not None:
            live = await self.rates(live_version, items, gate.max_tokens)
        result = GateResult(version, rates, live_version, live, check_bounds(gate, rates, live))
        logger.info("evaluation gate on %s: %s", version,
                    "passed" if result.passed else "; ".join(result.failures))
        return result

    async def rates(self, version: str, items: dict[str, list[EvalItem]],
                    max_tokens: int) -> dict[str, dict[str, Any]]:
        out = {}
        for suite, suite_items in items.items():
            answers = await self.answers(version, [i.prompt for i in suite_items], max_tokens)
            refusals = await asyncio.to_thread(self.detector().is_refusal, answers)
            out[suite] = rate(refusals).as_dict()
        return out

    async def answers(self, version: str, prompts: Sequence[str], max_tokens: int) -> list[str]:
        gate = asyncio.Semaphore(CONCURRENCY)
        renderer = self.engine.renderer

        async def one(prompt: str) -> str:
            ids = renderer.encode(renderer.render_chat([{"role": "user", "content": prompt}],
                                                       True))
            request = GenerationRequest(
                request_id=f"gate-{uuid.uuid4().hex[:12]}", model=version,
                prompt_ids=tuple(ids),
                sampling=SamplingOptions(max_tokens=max_tokens, temperature=0.0, seed=0),
                allow_staged=True,
            )
            parts: list[str] = []
            async with gate:
                async for deltas in self.engine.generate(request):
                    parts += [d.text for d in deltas]
            return "".join(parts)

        return list(await asyncio.gather(*(one(p) for p in prompts)))
