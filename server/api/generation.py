"""Chat and text completions: requests in, engine requests out, responses or SSE back."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import aclosing
from typing import Any

from align_core.registry import Registry
from server.alignment import Preset
from server.api import responses as R
from server.api.preparation import Prepared, RequestPreparer
from server.api.protocol import ChatCompletionRequest, CompletionRequest
from server.api.tool_output import whole_calls
from server.best_of_n import RewardModels, pick_best
from server.engine.base import Engine
from server.engine.types import GenerationDelta, GenerationRequest, TokenLogprob
from server.errors import ServiceError
from server.metrics import Metrics
from server.streams import merged

logger = logging.getLogger(__name__)


class GenerationService:
    def __init__(
        self,
        engine: Engine,
        presets: Registry[Preset],
        metrics: Metrics,
        rewards: RewardModels | None = None,
        tool_parser: str | None = None,
    ):
        self.engine = engine
        self.presets = presets
        self.metrics = metrics
        self._preparer = RequestPreparer(engine, presets, rewards, tool_parser)

    @property
    def rewards(self) -> RewardModels | None:
        """The reward models of Best-of-N; the preparer owns them (it checks requests)."""
        return self._preparer.rewards

    @rewards.setter
    def rewards(self, value: RewardModels | None) -> None:
        self._preparer.rewards = value

    # -- preparation (server/api/preparation.py) ---------------------------------------------
    def prepare_chat(self, req: ChatCompletionRequest) -> Prepared:
        return self._preparer.prepare_chat(req)

    def prepare_completion(self, req: CompletionRequest) -> Prepared:
        return self._preparer.prepare_completion(req)

    # -- execution -------------------------------------------------------------------------
    async def _deltas(self, prepared: Prepared) -> AsyncIterator[tuple[int, GenerationDelta]]:
        """Deltas of every prompt's request, with choice indices made global."""
        if len(prepared.requests) == 1:
            async for batch in self.engine.generate(prepared.requests[0]):
                for delta in batch:
                    yield delta.index, delta
            return
        async def numbered(
            offset: int, request: GenerationRequest
        ) -> AsyncIterator[tuple[int, GenerationDelta]]:
            async for batch in self.engine.generate(request):
                for delta in batch:
                    yield offset + delta.index, delta

        sources = [numbered(i * prepared.n, r) for i, r in enumerate(prepared.requests)]
        async with aclosing(merged(sources)) as stream:
            async for item in stream:
                yield item

    async def complete(self, prepared: Prepared) -> tuple[dict[str, Any], str]:
        """The whole response, and the version (``name@k``) that produced it."""
        started = time.monotonic()
        choices = {i: R.ChoiceState() for i in range(prepared.n * len(prepared.requests))}
        status, version = "error", prepared.model
        try:
            first = True
            async for index, delta in self._deltas(prepared):
                if first:
                    first, version = False, delta.model_version or prepared.model
                    self.metrics.ttft.labels(prepared.model).observe(time.monotonic() - started)
                choices[index].add(delta)
            status = "ok"
        finally:
            self._record(
                prepared, started, status, sum(c.tokens for c in choices.values()), version
            )
        if prepared.best_of is not None:
            choices = await self._select_best(prepared, choices)
        head = (prepared.response_id, int(time.time()), prepared.model, fingerprint(version))
        if prepared.kind == "chat":
            for choice in choices.values():
                _read_tool_calls(prepared, choice)
            body = R.chat_response(
                *head, choices, prepared.want_logprobs, prepared.prompt_tokens
            )
        else:
            body = R.completion_response(
                *head, choices, prepared.want_logprobs, prepared.prompt_tokens,
                self._echoes(prepared, choices),
            )
        return body, version

    def _echoes(
        self, prepared: Prepared, choices: dict[int, R.ChoiceState]
    ) -> dict[int, R.Echo] | None:
        """Each choice's echoed prompt (``echo``), with the prompt's log-probabilities."""
        if prepared.echo is None:
            return None
        shared: dict[int, list[TokenLogprob | None]] = {}  # any choice's, per prompt
        for i, choice in choices.items():
            if choice.prompt_logprobs:
                shared.setdefault(i // prepared.n, choice.prompt_logprobs)
        return {
            i: echo_of(prepared, i // prepared.n,
                       choice.prompt_logprobs or shared.get(i // prepared.n, []),
                       self.engine.renderer.decode)
            for i, choice in choices.items()
        }

    async def _select_best(
        self, prepared: Prepared, choices: dict[int, R.ChoiceState]
    ) -> dict[int, R.ChoiceState]:
        """Keep the highest-reward sample as choice 0; usage still counts every sample."""
        assert prepared.best_of is not None and self.rewards is not None
        reward_model, messages = prepared.best_of
        texts = ["".join(choices[i].text) for i in sorted(choices)]
        rewards = await self.rewards.score(reward_model, messages, texts)
        best = choices[pick_best(rewards)]
        best.tokens = sum(c.tokens for c in choices.values())
        best.rewards = rewards
        return {0: best}

    async def open_stream(self, prepared: Prepared) -> tuple[AsyncIterator[str], str]:
        """Start the request; errors before its first token still become HTTP errors.

        Returns the SSE events and the version that serves the request (known at admission,
        so it can go in a response header).
        """
        if prepared.best_of is not None:  # the winner is known only at the end: one chunk
            body, version = await self.complete(prepared)
            return _events_of(body, prepared.include_usage), version
        started = time.monotonic()
        deltas = self._deltas(prepared)
        try:
            first = await anext(deltas)
        except StopAsyncIteration:
            first = None
        except BaseException:
            self._record(prepared, started, "error", 0, prepared.model)
            raise
        version = (first[1].model_version if first else "") or prepared.model
        self.metrics.ttft.labels(prepared.model).observe(time.monotonic() - started)
        return self._stream(prepared, first, deltas, started, version), version

    async def _stream(
        self,
        prepared: Prepared,
        first: tuple[int, GenerationDelta] | None,
        deltas: AsyncIterator[tuple[int, GenerationDelta]],
        started: float,
        version: str,
    ) -> AsyncIterator[str]:
        from server.api.streaming import stream_events

        counter = {"tokens": 0}
        status = "error"
        try:
            async for event in stream_events(
                prepared, first, deltas, fingerprint(version), counter, self.engine.renderer.decode
            ):
                yield event
            status = "ok"
        except ServiceError as exc:
            yield R.sse({"error": _error_body(exc)})
            yield R.sse("[DONE]")
        except asyncio.CancelledError:
            status = "cancelled"
            raise
        except Exception:
            logger.exception("stream %s failed", prepared.response_id)
            yield R.sse({"error": _error_body(ServiceError("internal error while streaming"))})
            yield R.sse("[DONE]")
        finally:
            self._record(prepared, started, status, counter["tokens"], version)

    def _record(
        self, prepared: Prepared, started: float, status: str, tokens: int, version: str
    ) -> None:
        endpoint = "chat" if prepared.kind == "chat" else "completions"
        self.metrics.requests.labels(
            prepared.model, endpoint, status, "true" if prepared.aligned else "false"
        ).inc()
        self.metrics.latency.labels(prepared.model, endpoint).observe(time.monotonic() - started)
        self.metrics.prompt_tokens.labels(prepared.model).inc(prepared.prompt_tokens)
        self.metrics.completion_tokens.labels(prepared.model).inc(tokens)
        self.metrics.version_requests.labels(prepared.model, version).inc()


def _read_tool_calls(prepared: Prepared, choice: R.ChoiceState) -> None:
    """A tool request's output -> the message's content and tool_calls."""
    if prepared.tools is None:
        return
    content, calls = whole_calls(prepared.tools, "".join(choice.text), prepared.parser())
    choice.tool_content, choice.tool_calls = content, calls
    if calls and choice.finish_reason == "stop":
        choice.finish_reason = "tool_calls"


def echo_of(
    prepared: Prepared,
    prompt: int,
    logprobs: list[TokenLogprob | None],
    decode: Callable[[Sequence[int]], str],
) -> R.Echo:
    """What ``echo`` sends before the output of a choice of prompt ``prompt``."""
    assert prepared.echo is not None
    if not prepared.want_logprobs:
        return R.Echo(prepared.echo[prompt])
    ids = prepared.requests[prompt].prompt_ids
    entries = R.prompt_entries(ids, logprobs or [None] * len(ids), decode)
    return R.Echo(prepared.echo[prompt], tuple(entries))


def fingerprint(version: str) -> str:
    """``system_fingerprint``: which deployed version's weights produced the response."""
    return f"alignserve:{version}"


async def _events_of(body: dict[str, Any], include_usage: bool) -> AsyncIterator[str]:
    """A finished chat response as the stream chunks OpenAI would have sent."""
    choice = body["choices"][0]
    rid, created, model, fp = body["id"], body["created"], body["model"], body["system_fingerprint"]
    content = choice["message"]["content"]
    role = {"role": "assistant", "content": ""}
    yield R.sse(R.chat_chunk(rid, created, model, fp, 0, role, None, None, include_usage))
    if content:
        delta = {"content": content}
        yield R.sse(R.chat_chunk(rid, created, model, fp, 0, delta, None, None, include_usage))
    reason = choice["finish_reason"]
    yield R.sse(R.chat_chunk(rid, created, model, fp, 0, {}, None, reason, include_usage))
    if include_usage:
        usage = body["usage"]
        obj = "chat.completion.chunk"
        prompt, completion = usage["prompt_tokens"], usage["completion_tokens"]
        yield R.sse(R.usage_chunk(rid, created, model, fp, obj, prompt, completion))
    yield R.sse("[DONE]")


def _error_body(exc: ServiceError) -> dict[str, Any]:
    return {"message": exc.message, "type": exc.error_type, "param": exc.param, "code": exc.code}
