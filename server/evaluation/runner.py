"""Ask the server for answers, concurrently, keeping every finished answer on disk at once.

The results file is append-only JSONL, one line per finished (item, configuration) pair, keyed
by ``item_id`` and the configuration key. A rerun reads the file and only asks for the missing
pairs, so an interrupted run (Ctrl-C, a dead server) continues where it stopped. A torn last
line from a crash is ignored. Answers are written as they arrive; texts never reach the log.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol

from server.assets import ProgressFn
from server.evaluation.configs import EvalConfig, SamplingParams
from server.evaluation.suites import EvalItem

logger = logging.getLogger(__name__)

RESULTS_FILE = "results.jsonl"


@dataclass(frozen=True)
class Completion:
    text: str
    completion_tokens: int
    finish_reason: str
    first_token_logprobs: tuple[tuple[str, float], ...] = ()  # (token, logprob) alternatives


@dataclass(frozen=True)
class ServedVersion:
    model: str  # the pinned name, "helpful@3"
    created: int


class Generator(Protocol):
    """Turns one chat request into one answer (the OpenAI client, or a fake in tests)."""

    async def generate(
        self, config: EvalConfig, messages: list[dict[str, str]], sampling: SamplingParams
    ) -> Completion: ...

    async def served_versions(self) -> dict[str, ServedVersion]:
        """Every served name that has versions -> the version it names now. Names without
        versions (the base model, another server's models) are left out."""
        ...


async def pin_versions(
    configs: Sequence[EvalConfig], generator: Generator, say: ProgressFn
) -> tuple[EvalConfig, ...]:
    """Each configuration on the version its deployment name serves now. Answers are stored by
    configuration key, and a name alone would hand a retrained adapter its predecessor's
    answers; pinned, the key changes with the version, and a redeploy during the run cannot
    mix two versions' answers."""
    versions = await generator.served_versions()
    pinned: list[EvalConfig] = []
    for config in configs:
        served = versions.get(config.model)
        if served is None:
            pinned.append(config)
            continue
        if served.model != config.model:
            say(f"{config.name}: {config.model} serves {served.model}")
        pinned.append(replace(config, model=served.model, revision=served.created))
    return tuple(pinned)


class OpenAIGenerator:
    """Chat completions through the ``openai`` client: exactly what a user's client sends."""

    def __init__(self, client: Any) -> None:
        self.client = client  # openai.AsyncOpenAI, or any object with chat.completions.create

    @classmethod
    def connect(cls, base_url: str, api_key: str, timeout: float = 600.0) -> OpenAIGenerator:
        import openai

        return cls(openai.AsyncOpenAI(base_url=base_url, api_key=api_key, timeout=timeout,
                                      max_retries=2))

    async def generate(
        self, config: EvalConfig, messages: list[dict[str, str]], sampling: SamplingParams
    ) -> Completion:
        logprobs: dict[str, Any] = {}
        if sampling.top_logprobs:
            logprobs = {"logprobs": True, "top_logprobs": sampling.top_logprobs}
        response = await self.client.chat.completions.create(
            model=config.model,
            messages=messages,
            max_tokens=sampling.max_tokens,
            temperature=(
                config.temperature if config.temperature is not None else sampling.temperature
            ),
            top_p=sampling.top_p,
            seed=sampling.seed,
            extra_body=config.extra_body(),
            **logprobs,
        )
        choice = response.choices[0]
        tokens = response.usage.completion_tokens if response.usage is not None else 0
        first: tuple[tuple[str, float], ...] = ()
        if choice.logprobs is not None and choice.logprobs.content:
            first = tuple((t.token, float(t.logprob))
                          for t in choice.logprobs.content[0].top_logprobs)
        return Completion(choice.message.content or "", int(tokens), str(choice.finish_reason),
                          first)

    async def close(self) -> None:
        """Inside the event loop that used the client: closed later, by the garbage collector,
        its connections would be torn down on a loop asyncio.run has already closed."""
        await self.client.close()

    async def served_versions(self) -> dict[str, ServedVersion]:
        # The list (plain vLLM serves no GET /v1/models/{id}), once per run.
        page = await self.client.models.list()
        versions: dict[str, ServedVersion] = {}
        for card in page.data:
            version = (card.model_extra or {}).get("version")
            if version is not None:
                pinned = card.id if "@" in card.id else f"{card.id}@{version}"
                versions[card.id] = ServedVersion(pinned, int(card.created))
        return versions


@dataclass(frozen=True)
class Result:
    item_id: str
    suite: str
    config_key: str
    config_name: str
    text: str
    completion_tokens: int
    finish_reason: str
    latency_s: float

    @property
    def key(self) -> tuple[str, str]:
        return (self.item_id, self.config_key)


class ResultStore:
    """Append-only JSONL of finished answers; the in-memory index is rebuilt from the file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._results: dict[tuple[str, str], Result] = {}
        if path.is_file():
            self._load()

    def _load(self) -> None:
        data = self.path.read_bytes()
        lines = data.decode("utf-8", errors="replace").splitlines()
        for n, line in enumerate(lines, 1):
            try:
                result = Result(**json.loads(line))
            except (ValueError, TypeError):
                # A crash mid-write leaves at most a torn last line; anything else is corruption.
                if n == len(lines):
                    logger.warning("%s: dropping a torn last line", self.path)
                    os.truncate(self.path, data.rstrip(b"\n").rfind(b"\n") + 1)
                    return
                raise ValueError(f"{self.path}:{n}: not a result record") from None
            self._results[result.key] = result
        if data and not data.endswith(b"\n"):
            with self.path.open("a") as f:  # the next record must start on its own line
                f.write("\n")

    def __contains__(self, key: object) -> bool:
        return key in self._results

    def __len__(self) -> int:
        return len(self._results)

    def get(self, item_id: str, config_key: str) -> Result | None:
        return self._results.get((item_id, config_key))

    def append(self, result: Result) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(result.__dict__, ensure_ascii=False) + "\n")
            f.flush()
        self._results[result.key] = result


class Progress:
    """Counts finished requests and reports at most every ``every_s`` seconds (and at the end)."""

    def __init__(self, label: str, total: int, say: ProgressFn, every_s: float = 5.0) -> None:
        self.label, self.total, self.say, self.every_s = label, total, say, every_s
        self.done = 0
        self.start = self.last = time.monotonic()

    def step(self) -> None:
        self.done += 1
        now = time.monotonic()
        if self.done == self.total or now - self.last >= self.every_s:
            self.last = now
            rate = self.done / max(now - self.start, 1e-9)
            eta = (self.total - self.done) / rate if rate > 0 else float("inf")
            self.say(f"{self.label}: {self.done}/{self.total} ({rate:.2f}/s, eta {eta:.0f}s)")


async def run_generation(
    generator: Generator,
    store: ResultStore,
    configs: Sequence[EvalConfig],
    items: Iterable[EvalItem],
    sampling: SamplingParams,
    concurrency: int,
    say: ProgressFn,
) -> int:
    """Fill ``store`` with an answer for every (item, config) pair; return how many were new.

    On a failure the other in-flight requests are cancelled (TaskGroup); what finished is kept.
    """
    items = list(items)
    todo = [(c, i) for c in configs for i in items if (i.item_id, c.key(sampling)) not in store]
    skipped = len(configs) * len(items) - len(todo)
    if skipped:
        say(f"resuming: {skipped} answers already in {store.path.name}, {len(todo)} to go")
    if not todo:
        return 0
    progress = Progress("answers", len(todo), say)
    gate = asyncio.Semaphore(concurrency)

    async def one(config: EvalConfig, item: EvalItem) -> None:
        async with gate:
            start = time.monotonic()
            completion = await generator.generate(config, config.messages(item.prompt), sampling)
            latency = time.monotonic() - start
        store.append(Result(
            item.item_id, item.suite, config.key(sampling), config.name, completion.text,
            completion.completion_tokens, completion.finish_reason, round(latency, 3),
        ))
        progress.step()

    async with asyncio.TaskGroup() as group:
        for config, item in todo:
            group.create_task(one(config, item))
    return len(todo)
