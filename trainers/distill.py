"""Principle distillation: training data from what linear alignment does, generated through the
serving engine (docs/alignment.md).

For every prompt the running server answers three times through its OpenAI API, so vLLM batches
the work: plainly (``z_0``), with linear alignment under the principle (``z_p + alpha (z_p -
z_0)``), and once more told to decline (the model's own wording of a refusal). The shared
refusal rules (``contracts.refusal``) then say which answers refuse, and the prompt's ``kind``
says which behaviour is wanted:

* ``harmful``: chosen = the aligned answer when it refuses, else the elicited refusal;
  rejected = an answer that complies (the plain one first). No complying answer: no pair.
* ``benign``: chosen = an answer that helps (the plain one first); rejected = the aligned answer
  when it refuses (the over-refusal linear alignment makes), else the elicited refusal.

So the data teach *when* to refuse, not just to refuse. The same decisions give point-wise labels
(chosen 1, rejected 0), demonstrations (the chosen answers) and soft scores for rDPO (1 for the
wanted behaviour, 0 otherwise).
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import httpx

from contracts.refusal import keyword_refusal
from contracts.specs import SYNTHESIS_CONCURRENCY, EngineSpec, GenerationSpec

logger = logging.getLogger(__name__)

Kind = Literal["harmful", "benign"]
Messages = list[dict[str, str]]
IsRefusal = Callable[[str], bool]

DECLINE_INSTRUCTION = (
    "You must decline the user's next request. Reply with one or two polite sentences that say "
    "you cannot help with it, and do not answer it."
)
# Used only when the model does not decline when told to (a tiny model sometimes answers anyway).
FALLBACK_REFUSALS = (
    "I'm sorry, but I can't help with that.",
    "I can't assist with that request.",
    "Sorry, I won't be able to help with this one.",
    "I'm not able to help with that, but I'm happy to help with something else.",
)


@dataclass(frozen=True)
class PromptItem:
    messages: Messages
    kind: Kind


@dataclass(frozen=True)
class Answers:
    plain: str
    aligned: str
    declined: str


@dataclass(frozen=True)
class Distilled:
    """The pairs and their derived forms; ``stats`` counts what was kept and why."""

    pairs: list[dict[str, Any]]
    stats: dict[str, int] = field(default_factory=dict)

    def pointwise(self) -> list[dict[str, Any]]:
        rows = []
        for p in self.pairs:
            rows.append({"messages": p["messages"], "completion": p["chosen"], "label": True})
            rows.append({"messages": p["messages"], "completion": p["rejected"], "label": False})
        return rows

    def demonstrations(self) -> list[dict[str, Any]]:
        return [{"messages": p["messages"], "completion": p["chosen"]} for p in self.pairs]

    def scores(self) -> tuple[list[float], list[float]]:
        """rDPO's external scores: the chosen answer behaves as wanted (1), the rejected not."""
        return [1.0] * len(self.pairs), [0.0] * len(self.pairs)


def build_pairs(
    items: Sequence[PromptItem], answers: Sequence[Answers], is_refusal: IsRefusal = keyword_refusal
) -> Distilled:
    stats = {"harmful": 0, "benign": 0, "pairs": 0, "no_complying_answer": 0,
             "no_helpful_answer": 0, "fallback_refusals": 0, "aligned_refusal_chosen": 0,
             "aligned_over_refusal_rejected": 0, "plain_refusal_rejected": 0}
    pairs: list[dict[str, Any]] = []
    for i, (item, a) in enumerate(zip(items, answers, strict=True)):
        stats[item.kind] += 1
        declined = a.declined
        if not is_refusal(declined):
            declined = FALLBACK_REFUSALS[i % len(FALLBACK_REFUSALS)]
            stats["fallback_refusals"] += 1
        complying = [t for t in (a.plain, a.aligned) if t.strip() and not is_refusal(t)]
        if item.kind == "harmful":
            if not complying:
                stats["no_complying_answer"] += 1
                continue
            aligned_refuses = is_refusal(a.aligned)
            chosen = a.aligned if aligned_refuses else declined
            stats["aligned_refusal_chosen"] += aligned_refuses
            rejected = complying[0]
        else:
            if not complying:
                stats["no_helpful_answer"] += 1
                continue
            # The model's own refusals first (linear alignment's over-refusal, then a plain
            # answer that declines an ordinary request): the habits the adapter must lose.
            own = [t for t in (a.aligned, a.plain) if t.strip() and is_refusal(t)]
            chosen = complying[0]
            rejected = own[0] if own else declined
            stats["aligned_over_refusal_rejected"] += bool(own) and own[0] is a.aligned
            stats["plain_refusal_rejected"] += bool(own) and own[0] is a.plain
        pairs.append({"messages": item.messages, "chosen": chosen, "rejected": rejected,
                      "kind": item.kind})
    stats["pairs"] = len(pairs)
    return Distilled(pairs, stats)


# Answers worth asking again: the engine is busy, restarting or slow, not refusing the request.
RETRY_STATUSES = frozenset({429, 502, 503, 504})


class EngineError(RuntimeError):
    """The engine refused a request, or stayed busy through every retry."""

    def __init__(self, status: int, text: str) -> None:
        super().__init__(f"engine answered {status}: {text}")
        self.status = status
        self.retryable = status in RETRY_STATUSES


@dataclass(frozen=True)
class EngineClient:
    """The serving engine through its OpenAI API (our ``alignment`` extension for z_p).

    A request that times out, cannot connect or gets a busy answer (429, 502, 503, 504) is
    sent again ``retries`` times, waiting 1, 2, 4 ... s; any other error status raises at once.
    """

    base_url: str
    model: str
    api_key: str | None = None
    timeout_s: float = 600.0
    retries: int = 3
    backoff_s: float = 1.0

    async def chat(self, client: httpx.AsyncClient, messages: Messages, *, max_tokens: int,
                   temperature: float, seed: int, alignment: dict[str, Any] | None = None,
                   top_p: float = 1.0) -> str:
        body: dict[str, Any] = {"model": self.model, "messages": messages,
                                "max_tokens": max_tokens, "temperature": temperature,
                                "top_p": top_p, "seed": seed}
        if alignment is not None:
            body["alignment"] = alignment
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        url = f"{self.base_url.rstrip('/')}/v1/chat/completions"
        for attempt in range(self.retries + 1):
            last = attempt == self.retries
            try:
                r = await client.post(url, json=body, headers=headers, timeout=self.timeout_s)
            except httpx.TransportError as exc:  # timeouts, refused or dropped connections
                if last:
                    raise
                logger.warning("engine request failed (%r); retry %d of %d", exc, attempt + 1,
                               self.retries)
            else:
                if r.status_code == 200:
                    content: str = r.json()["choices"][0]["message"]["content"] or ""
                    return content
                if r.status_code not in RETRY_STATUSES or last:
                    raise EngineError(r.status_code, r.text[:300])
                logger.warning("engine answered %d; retry %d of %d", r.status_code,
                               attempt + 1, self.retries)
            await asyncio.sleep(self.backoff_s * 2 ** attempt)
        raise AssertionError("unreachable")


@dataclass(frozen=True)
class Synthesis:
    alignment: dict[str, Any]  # {"principle": ...} or {"preset": ...}, plus "alpha"
    max_tokens: int = 96
    temperature: float = 0.0
    seed: int = 0
    concurrency: int = SYNTHESIS_CONCURRENCY  # requests in flight: what vLLM batches together


async def synthesise(
    engine: EngineClient, items: Sequence[PromptItem], synthesis: Synthesis,
    progress: Callable[[int, int], None] | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
    kept: Mapping[int, Answers] | None = None,
    on_answers: Callable[[int, Answers], None] | None = None,
) -> list[Answers]:
    """Three answers per prompt, ``concurrency`` requests in flight; order kept.

    Prompts in ``kept`` (by index) are not asked again. A prompt's three requests go out
    together, so prompts finish one by one from the start: ``on_answers(i, answers)`` hears each
    as it completes (to keep it) and ``progress`` counts them, kept ones included. When the
    engine fails a prompt (after its retries) the others still finish; then the first failure
    is raised.
    """
    kept = dict(kept or {})
    requests = asyncio.Semaphore(synthesis.concurrency)
    open_prompts = asyncio.Semaphore(max(1, -(-synthesis.concurrency // 3)))
    done = len(kept)
    results: list[Answers | None] = [kept.get(i) for i in range(len(items))]
    failures: list[Exception] = []

    async def ask(client: httpx.AsyncClient, messages: Messages,
                  settings: dict[str, Any], alignment: dict[str, Any] | None = None) -> str:
        async with requests:
            return await engine.chat(client, messages, alignment=alignment, **settings)

    async def one(client: httpx.AsyncClient, i: int, item: PromptItem) -> None:
        nonlocal done
        settings: dict[str, Any] = {"max_tokens": synthesis.max_tokens,
                                    "temperature": synthesis.temperature,
                                    "seed": synthesis.seed + i}
        decline = [{"role": "system", "content": DECLINE_INSTRUCTION},
                   *[m for m in item.messages if m["role"] != "system"]]
        async with open_prompts:
            try:
                plain, aligned, declined = await asyncio.gather(
                    ask(client, item.messages, settings),
                    ask(client, item.messages, settings, synthesis.alignment),
                    ask(client, decline, settings))
            except (httpx.TransportError, EngineError) as exc:
                failures.append(exc)  # the other prompts still finish and are kept
                return
        results[i] = answers = Answers(plain, aligned, declined)
        done += 1
        if on_answers is not None:
            on_answers(i, answers)
        if progress is not None:
            progress(done, len(items))

    limits = httpx.Limits(max_connections=synthesis.concurrency + 4)
    async with httpx.AsyncClient(limits=limits, transport=transport) as client:
        await asyncio.gather(*(one(client, i, item) for i, item in enumerate(items)
                               if i not in kept))
    if failures:
        raise failures[0]
    return [r for r in results if r is not None]


async def answer_all(
    engine: EngineClient, conversations: Sequence[Messages], *, max_tokens: int,
    temperature: float, top_p: float = 1.0, seed: int = 0, concurrency: int = SYNTHESIS_CONCURRENCY,
    transport: httpx.AsyncBaseTransport | None = None,
) -> list[str]:
    """One answer per conversation through the engine, ``concurrency`` in flight, order kept
    (the engine-side replacement of ``trainers.modeling.sample`` for the served base model)."""
    gate = asyncio.Semaphore(concurrency)

    async def one(client: httpx.AsyncClient, i: int, messages: Messages) -> str:
        async with gate:
            return await engine.chat(client, messages, max_tokens=max_tokens,
                                     temperature=temperature, top_p=top_p, seed=seed + i)

    limits = httpx.Limits(max_connections=concurrency + 4)
    async with httpx.AsyncClient(limits=limits, transport=transport) as client:
        return list(await asyncio.gather(*(one(client, i, m)
                                           for i, m in enumerate(conversations))))


ENGINE_URL_ENV = "ALIGNSERVE_ENGINE_URL"
ENGINE_KEY_ENV = "ALIGNSERVE_ENGINE_KEY"


def served_engine(spec: EngineSpec | None) -> EngineClient | None:
    """The job's serving engine, or None. A worker's ALIGNSERVE_ENGINE_URL wins over the URL
    the server filled in (another host reaches the server by another address); the key comes
    from ALIGNSERVE_ENGINE_KEY, never from the job."""
    if spec is None or not spec.model:
        return None
    base_url = os.environ.get(ENGINE_URL_ENV) or spec.base_url
    if not base_url:
        return None
    return EngineClient(base_url, spec.model, os.environ.get(ENGINE_KEY_ENV) or None)


def base_samples(engine: EngineClient, prompts: Sequence[Messages], gen: GenerationSpec,
                 seed: int = 0) -> list[str]:
    """What ``trainers.modeling.sample(..., use_base=True)`` gives, through the serving engine
    (it serves the job's base model): one answer per prompt with the same sampling settings."""
    return asyncio.run(answer_all(engine, prompts, max_tokens=gen.max_new_tokens,
                                  temperature=gen.temperature, top_p=gen.top_p, seed=seed))
