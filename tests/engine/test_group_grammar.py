"""Structured outputs in a guidance group: both members start together once both grammars
compiled (real vLLM scheduler, no model; tests/engine/sched_harness.py plays the runner), and a
group that lost lockstep mid-grammar is not resumed with a fresh grammar."""

from __future__ import annotations

import asyncio
import dataclasses
from concurrent.futures import Future
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from vllm.sampling_params import StructuredOutputsParams
from vllm.v1.request import Request, RequestStatus

from server.engine.group_run import _run_choice
from server.engine.guidance.groups import REGROUP
from server.engine.guidance.scheduler import GroupScheduler
from server.engine.types import (
    AlignmentParams,
    GenerationRequest,
    SamplingOptions,
    StructuredOutput,
)
from server.errors import EngineError
from tests.engine.sched_harness import group, make_scheduler, step, tiny_config_folder


class _AnyGrammar:
    """Accepts every token: the harness's members always sample the same one."""

    def accept_tokens(self, request_id: str, tokens: list[int]) -> bool:
        return True

    def is_terminated(self) -> bool:
        return False


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_config_folder(tmp_path_factory.mktemp("tiny-config"))


def _with_grammar(r: Request) -> Future[_AnyGrammar]:
    """Give ``r`` a grammar that is still compiling, as EngineCore.add_request leaves it."""
    from vllm.v1.structured_output.request import StructuredOutputRequest

    r.sampling_params.structured_outputs = StructuredOutputsParams(json_object=True)
    r.structured_output_request = StructuredOutputRequest(r.sampling_params.structured_outputs)
    compiling: Future[_AnyGrammar] = Future()
    r.structured_output_request.grammar = compiling  # type: ignore[assignment]
    r.status = RequestStatus.WAITING_FOR_STRUCTURED_OUTPUT_GRAMMAR
    return compiling


def test_members_wait_for_both_grammars(model_dir: Path) -> None:
    s: GroupScheduler = make_scheduler(model_dir)
    visible, partner = group("g", 12, 20, 3)
    v_grammar, p_grammar = _with_grammar(visible), _with_grammar(partner)
    s.add_request(visible)
    s.add_request(partner)
    v_grammar.set_result(_AnyGrammar())  # vLLM alone would now start the visible member
    for _ in range(3):
        log = step(s)
        assert log.sampled == {}
        assert visible.num_computed_tokens == partner.num_computed_tokens == 0
    p_grammar.set_result(_AnyGrammar())
    sampled = [set(step(s).sampled) for _ in range(6)]
    assert sampled[0] == {"g-v", "g-p"}  # the first tokens, in the same step
    assert all(x in ({"g-v", "g-p"}, set()) for x in sampled)
    assert s.regroups == 0


class _Collector:
    def __init__(self, outputs: list[Any]):
        self._outputs = outputs

    async def get(self) -> Any:
        return self._outputs.pop(0)


class _GroupEngine:
    """What ``group_run`` asks of the engine: each visible member emits one token, then its
    group loses lockstep (the scheduler's REGROUP signal); after a restart it finishes."""

    def __init__(self) -> None:
        self.prompts: list[list[int]] = []
        self.renderer = SimpleNamespace(decode=lambda ids: "x" * len(ids))
        self.llm = SimpleNamespace(abort=self._abort)
        self.regroups = 0

    async def _abort(self, ids: Any) -> None:
        return None

    def spawn(self, work: Any) -> None:
        work.close()

    async def add(self, rid: str, prompt: list[int], params: Any, lora: Any) -> _Collector:
        if rid.endswith("-p"):
            return _Collector([])
        self.prompts.append(prompt)
        if len(self.prompts) == 1:
            outs = [_out([5], None, None), _out([], "abort", REGROUP)]
        else:
            outs = [_out([6], "stop", None)]
        return _Collector(outs)


def _out(tokens: list[int], finish: str | None, stop: str | None) -> Any:
    co = SimpleNamespace(index=0, text="x" * len(tokens), token_ids=tokens, logprobs=None,
                         finish_reason=finish, stop_reason=stop)
    return SimpleNamespace(outputs=[co], finished=finish is not None)


async def _drain(request: GenerationRequest) -> list[int]:
    engine = _GroupEngine()
    version = SimpleNamespace(mode="base")
    tokens: list[int] = []
    async for delta in _run_choice(engine, request, 0, 1, version, None, "m"):  # type: ignore[arg-type]
        tokens.extend(delta.token_ids)
    return tokens


def test_a_grammar_group_is_not_resumed_mid_output() -> None:
    """A restart prompts with the tokens so far; a grammar would start over: refuse instead."""
    alignment = AlignmentParams((1, 2, 3), 1.0, 0.8, 0.5)
    plain = GenerationRequest("r", "m", (1, 2), SamplingOptions(max_tokens=4), alignment)
    assert asyncio.run(_drain(plain)) == [5, 6]  # an ordinary group resumes after its token
    structured = dataclasses.replace(plain, sampling=SamplingOptions(
        max_tokens=4, structured=StructuredOutput("json_object")))
    with pytest.raises(EngineError, match="cannot be resumed mid-grammar"):
        asyncio.run(_drain(structured))
