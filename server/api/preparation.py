"""Validated requests -> engine requests: prompts, sampling options, and what shapes the answer
(tool calls, echoed prompts). Everything refused is refused here, before the engine sees it."""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

from align_core.registry import Registry
from server.alignment import Preset, aligned_conversations, resolve_principle
from server.api.protocol import ChatCompletionRequest, CompletionRequest
from server.api.structured import checked_logit_bias, response_grammar
from server.api.tools import ToolPlan, conversation, plan_tools
from server.best_of_n import RewardModels
from server.engine.base import Engine, ToolCallParser
from server.engine.types import AlignmentParams, GenerationRequest, SamplingOptions
from server.errors import InvalidRequestError, ServiceError, ServiceUnavailableError


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
    tools: ToolPlan | None = None  # read the output for tool calls when ``tools.calls``
    tool_parser: Callable[[], ToolCallParser] | None = None  # a fresh one per choice (auto)
    echo: tuple[str, ...] | None = None  # completions: each prompt's text, sent before its output

    def parser(self) -> ToolCallParser | None:
        return self.tool_parser() if self.tool_parser is not None else None


class RequestPreparer:
    def __init__(
        self,
        engine: Engine,
        presets: Registry[Preset],
        rewards: RewardModels | None = None,
        tool_parser: str | None = None,
    ):
        self.engine = engine
        self.presets = presets
        self.rewards = rewards
        self.tool_parser = tool_parser  # vLLM tool parser for tool_choice "auto"; None: refused

    def _check_ready(self) -> None:
        if not self.engine.ready:
            raise ServiceUnavailableError("the model is still loading; retry shortly")

    def prepare_chat(self, req: ChatCompletionRequest) -> Prepared:
        self._check_ready()
        model = self.engine.resolve_model(req.model)
        renderer = self.engine.renderer
        plan = plan_tools(req, self.tool_parser)
        messages, template_tools = conversation(
            req.messages, plan, renderer.supports_tools, renderer.default_system_prompt
        )

        def encode(conv: list[dict[str, Any]]) -> list[int]:
            try:
                text = renderer.render_chat(conv, req.add_generation_prompt, template_tools,
                                            continue_final_message=req.continue_final_message)
            except ValueError as exc:
                if not req.continue_final_message:
                    raise
                # transformers refuses a final message its template does not render verbatim
                raise InvalidRequestError(f"continue_final_message: {exc}",
                                          param="messages") from None
            return renderer.encode(text)

        alignment = None
        n = req.n
        if req.best_of_n is not None:
            n = self._check_best_of_n(req)
        if req.alignment is not None and req.alignment.contrast is not None:
            a = req.alignment
            against = self._contrast_target(model, req.alignment.contrast.against)
            prompt_ids = encode(messages)
            alignment = AlignmentParams(
                (), a.alpha, a.nucleus_top_p, a.nucleus_temperature, contrast_against=against
            )
            longest = len(prompt_ids)
        elif req.alignment is not None:
            a = req.alignment
            principle = resolve_principle(self.presets, a.principle, a.preset, a.preference)
            # Only the system message's text changes; tool-call entries are carried as they are.
            plain, principled = aligned_conversations(
                cast(list[dict[str, str]], messages), principle, renderer.default_system_prompt
            )
            prompt_ids = encode(cast(list[dict[str, Any]], plain))
            principled_ids = encode(cast(list[dict[str, Any]], principled))
            alignment = AlignmentParams(
                tuple(principled_ids), a.alpha, a.nucleus_top_p, a.nucleus_temperature
            )
            longest = max(len(prompt_ids), len(principled_ids))
        else:
            prompt_ids = encode(messages)
            longest = len(prompt_ids)
        top = (req.top_logprobs or 0) if req.logprobs else None
        options = self._options(req, req.requested_max_tokens(), longest, top, "max_tokens")
        grammar = plan.structured() if plan is not None else None
        options = dataclasses.replace(
            options, n=n, structured=grammar or response_grammar(req.response_format)
        )
        rid = f"chatcmpl-{uuid.uuid4().hex}"
        request = GenerationRequest(rid, model, tuple(prompt_ids), options, alignment)
        best_of = None
        if req.best_of_n is not None:
            best_of = (req.best_of_n.reward_model,
                       [{"role": m.role, "content": m.text()} for m in req.messages])
        parser = None
        if plan is not None and plan.mode == "auto":
            name, tools = self.tool_parser, plan.tools
            assert name is not None  # plan_tools refuses auto without a parser

            def parser() -> ToolCallParser:
                return renderer.tool_parser(name, tools)

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
            plan if plan is not None and plan.calls else None,
            parser,
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
        texts: list[str] | None = None
        if isinstance(req.prompt, str):
            prompts, texts = [renderer.encode(req.prompt)], [req.prompt]
        elif all(isinstance(p, int) for p in req.prompt):
            prompts = [list(req.prompt)]  # type: ignore[arg-type]
        elif all(isinstance(p, str) for p in req.prompt):
            texts = list(req.prompt)  # type: ignore[arg-type]
            prompts = [renderer.encode(p) for p in texts]
        else:
            prompts = [list(p) for p in req.prompt]  # type: ignore[arg-type]
        if any(not p for p in prompts):
            raise InvalidRequestError("prompt must not be empty", param="prompt")
        if texts is None:  # token ids: the tokenizer would raise on them while decoding the echo
            vocab = renderer.vocab_size
            bad = next((t for p in prompts for t in p if not 0 <= t < vocab), None)
            if bad is not None:
                raise InvalidRequestError(
                    f"token id {bad} is outside the vocabulary (0..{vocab - 1})", param="prompt")
        if req.echo and req.logprobs is not None:
            self._check_prompt_logprobs(model)
        echo = None
        if req.echo:  # the prompt as sent; token prompts as their text
            echo = tuple(texts) if texts is not None else tuple(renderer.decode(p) for p in prompts)
        rid = f"cmpl-{uuid.uuid4().hex}"
        requests = []
        for i, ids in enumerate(prompts):
            options = self._options(req, req.max_tokens, len(ids), req.logprobs, "max_tokens")
            if req.echo and req.logprobs is not None:  # the prompt's own log-probabilities
                options = dataclasses.replace(options, prompt_logprobs=req.logprobs)
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
            echo=echo,
        )

    def _check_prompt_logprobs(self, model: str) -> None:
        """Prompt log-probabilities are served on the base model only: vLLM's LoRA logits path
        cannot tell which adapter a request's prompt rows belong to (the CPU ops then treat
        them as the base model's, server/engine/cpu_lora_ops.py)."""
        card = next((c for c in self.engine.model_cards() if c.id == model), None)
        if card is None or card.parent is not None:
            raise InvalidRequestError(
                "echo with logprobs (prompt log-probabilities) is served on the base model "
                "only: vLLM cannot apply a deployed adapter to the prompt's rows. Send echo "
                "without logprobs, or use the base model.",
                param="echo",
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
            logit_bias=checked_logit_bias(req.logit_bias_items(), self.engine.renderer.vocab_size),
        )
