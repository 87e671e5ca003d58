"""Bookkeeping of requests in flight on the engine thread."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from server.engine.deployments import ModelVersion
from server.engine.types import GenerationDelta, GenerationRequest


def settle(future: asyncio.Future[Any], result: Any, exc: BaseException | None) -> None:
    """Resolve ``future`` once (event-loop side of a result handed over from the engine thread)."""
    if future.done():
        return
    if exc is not None:
        future.set_exception(exc)
    else:
        future.set_result(result)


class Stream:
    """Carries deltas from the engine thread to the request's coroutine."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self._loop = loop
        self.queue: asyncio.Queue[list[GenerationDelta] | BaseException | None] = asyncio.Queue()

    def push(self, item: list[GenerationDelta] | BaseException) -> None:
        self._loop.call_soon_threadsafe(self.queue.put_nowait, item)

    def close(self) -> None:
        self._loop.call_soon_threadsafe(self.queue.put_nowait, None)


@dataclass(eq=False)
class Job:
    """One API request: a plain engine request (vLLM fans out ``n``) or ``n`` aligned pairs."""

    request: GenerationRequest
    stream: Stream
    open_choices: int = 0
    seqs: int = 0  # engine sequences it occupies while admitted
    done: bool = False
    version: ModelVersion | None = None  # bound at admission, kept to the last token
    version_label: str = ""
    completion_tokens: int = 0
    on_finish: Callable[[Job], None] | None = None  # run on the engine thread when it ends

    @property
    def aligned(self) -> bool:
        return self.request.alignment is not None

    @property
    def seqs_needed(self) -> int:
        return self.request.sampling.n * (2 if self.aligned else 1)


@dataclass(eq=False)
class Pair:
    """One aligned choice: a visible engine request and its shadow, restartable."""

    job: Job
    index: int
    seed: int
    attempt: int = 0
    emitted: list[int] = field(default_factory=list)
    visible_rid: str = ""
    shadow_rid: str = ""

    @property
    def pair_id(self) -> str:
        return self.visible_rid
