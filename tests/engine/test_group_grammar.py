"""Structured outputs in a guidance group: both members start together once both grammars
compiled (real vLLM scheduler, no model; tests/engine/sched_harness.py plays the runner)."""

from __future__ import annotations

from concurrent.futures import Future
from pathlib import Path

import pytest
from vllm.sampling_params import StructuredOutputsParams
from vllm.v1.request import Request, RequestStatus

from server.engine.guidance.scheduler import GroupScheduler
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
