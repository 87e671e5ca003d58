"""Chat and text completions: requests in, engine requests out, responses or SSE back."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any

from align_core.registry import Registry
from server.alignment import Preset, aligned_conversations, resolve_principle
from server.api import responses as R
from server.api.protocol import ChatCompletionRequest, CompletionRequest
from server.best_of_n import RewardModels, pick_best
from server.engine.base import Engine
from server.engine.types import AlignmentParams, GenerationDelta, GenerationRequest, SamplingOptions
from server.errors import InvalidRequestError, ServiceError, ServiceUnavailableError
from server.metrics import Metrics
from server.streams import merged

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Prepared:
    """A validated request, ready for the engine."""

    kind: str  # "chat" | "completion"
    response_id: str
    model: str
    requests: tuple[GenerationRequest, ...]  # one per prompt
    n: int
    prompt_tokens: int
    want_logprobs: bool
    include_usage: bool
    aligned: bool
    best_of: tuple[str, list[dict[str, str]]] | None = None  # (reward model, conversation)


class GenerationService:
    def __init__(
        self,
        engine: Engine,
        presets: Registry[Preset],
        metrics: Metrics,
        rewards: RewardModels | None = None,
    ):
        self.engine = engine
        self.presets = presets
        self.metrics = metrics
        self.rewards = rewards

    # -- preparation -----------------------------------------------------------------------
    def _check_ready(self) -> None:
        if not self.engine.ready:
            raise ServiceUnavailableError("the model is still loading; retry shortly")

    def prepare_chat(self, req: ChatCompletionRequest) -> Prepared:
        self._check_ready()
        model = self.engine.resolve_model(req.model)
        renderer = self.engine.renderer
        messages = [{"role": m.role, "content": m.text()} for m in req.messages]
        alignment = None
        n = req.n
        if req.best_of_n is not None:
            n = self._check_best_of_n(req)
        if req.alignment is not None and req.alignment.contrast is not None:
            a = req.alignment
            against = self._contrast_target(model, req.alignment.contrast.against)
            prompt_ids = renderer.encode(renderer.render_chat(messages, True))
            alignment = AlignmentParams(
                (), a.alpha, a.nucleus_top_p, a.nucleus_temperature, contrast_against=against
            )
            longest = len(prompt_ids)
        elif req.alignment is not None:
            a = req.alignment
            principle = resolve_principle(self.presets, a.principle, a.preset, a.preference)
            plain, principled = aligned_conversations(
                messages, principle, renderer.default_system_prompt
            )
            prompt_ids = renderer.encode(renderer.render_chat(plain, True))
            principled_ids = renderer.encode(renderer.render_chat(principled, True))
            alignment = AlignmentParams(
                tuple(principled_ids), a.alpha, a.nucleus_top_p, a.nucleus_temperature
            )
            longest = max(len(prompt_ids), len(principled_ids))
        else:
            prompt_ids = renderer.encode(renderer.render_chat(messages, True))
            longest = len(prompt_ids)
        top = (req.top_logprobs or 0) if req.logprobs else None
        options = self._options(req, req.requested_max_tokens(), longest, top, "max_tokens")
        options = dataclasses.replace(options, n=n)
        rid = f"chatcmpl-{uuid.uuid4().hex}"
        request = GenerationRequest(rid, model, tuple(prompt_ids), options, alignment)
        best_of = (req.best_of_n.reward_model, messages) if req.best_of_n is not None else None
        return Prepared(
            "chat",
            rid,
            model,
            (request,),
            n,
            len(prompt_ids),
            req.logprobs,
            bool(req.stream_options and req.stream_options.include_usage),
            alignment is not None,
            best_of,
        )

    def _contrast_target(self, model: str, against: str) -> str:
        """The model z_ref comes from; it must be served here and differ from ``model``."""
        try:
            resolved = self.engine.resolve_model(against)
        except ServiceError as exc:
            raise InvalidRequestError(
                f"alignment.contrast.against: {exc.message}", param="alignment.contrast.against"
            ) from None
        if resolved == model:
            raise InvalidRequestError(
                "alignment.contrast.against must name another model than 'model'",
                param="alignment.contrast.against",
            )
        return resolved

    def _check_best_of_n(self, req: ChatCompletionRequest) -> int:
        assert req.best_of_n is not None
        if self.rewards is None:
            raise InvalidRequestError("best_of_n is not available here", param="best_of_n")
        if req.n != 1:
            raise InvalidRequestError("best_of_n returns one choice: use n=1", param="n")
        if req.temperature == 0:
            raise InvalidRequestError(
                "best_of_n needs sampling (temperature > 0): greedy samples are all the same",
                param="temperature",
            )
        if req.logprobs:
            raise InvalidRequestError("best_of_n does not support logprobs", param="logprobs")
        self.rewards.check(req.best_of_n.reward_model)
        return req.best_of_n.n

    def prepare_completion(self, req: CompletionRequest) -> Prepared:
        self._check_ready()
        model = self.engine.resolve_model(req.model)
        renderer = self.engine.renderer
        prompts: list[list[int]]
        if isinstance(req.prompt, str):
            prompts = [renderer.encode(req.prompt)]
        elif all(isinstance(p, int) for p in req.prompt):
            prompts = [list(req.prompt)]  # type: ignore[arg-type]
        elif all(isinstance(p, str) for p in req.prompt):
            prompts = [renderer.encode(p) for p in req.prompt]  # type: ignore[arg-type]
        else:
            prompts = [list(p) for p in req.prompt]  # type: ignore[arg-type]
        if any(not p for p in prompts):
            raise InvalidRequestError("prompt must not be empty", param="prompt")
        rid = f"cmpl-{uuid.uuid4().hex}"
        requests = []
        for i, ids in enumerate(prompts):
            options = self._options(req, req.max_tokens, len(ids), req.logprobs, "max_tokens")
            requests.append(GenerationRequest(f"{rid}-{i}", model, tuple(ids), options))
        return Prepared(
            "completion",
            rid,
            model,
            tuple(requests),
            req.n,
            sum(len(p) for p in prompts),
            req.logprobs is not None,
            bool(req.stream_options and req.stream_options.include_usage),
            False,
        )

    def _options(
        self, req: Any, max_tokens: int | None, prompt_len: int, logprobs: int | None, param: str
    ) -> SamplingOptions:
        limit = self.engine.max_model_len
        if prompt_len >= limit:
            raise InvalidRequestError(
                f"This model's maximum context length is {limit} tokens, but the prompt has "
                f"{prompt_len} tokens.",
                param="messages" if param == "max_tokens" else param,
                code="context_length_exceeded",
            )
        if max_tokens is None:
            max_tokens = limit - prompt_len
        elif prompt_len + max_tokens > limit:
            raise InvalidRequestError(
                f"This model's maximum context length is {limit} tokens. However, you requested "
                f"{prompt_len + max_tokens} tokens ({prompt_len} in the prompt, {max_tokens} for "
                "the completion). Please reduce the prompt or max_tokens.",
                param=param,
                code="context_length_exceeded",
            )
        return SamplingOptions(
            max_tokens=max_tokens,
            temperature=req.temperature,
            top_p=req.top_p,
            n=req.n,
            seed=req.seed,
            stop=req.stop_list(),
            logprobs=logprobs,
            presence_penalty=req.presence_penalty,
            frequency_penalty=req.frequency_penalty,
        )

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
        build = R.chat_response if prepared.kind == "chat" else R.completion_response
        body = build(
            prepared.response_id,
            int(time.time()),
            prepared.model,
            fingerprint(version),
            choices,
            prepared.want_logprobs,
            prepared.prompt_tokens,
        )
        return body, version

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
                prepared, first, deltas, fingerprint(version), counter
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
