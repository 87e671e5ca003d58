"""The adapter gate's arithmetic and verdicts against a stub engine client (the real engine:
tests/real/test_reliability.py).

The base answers [5, 6, 7] with log-probabilities (-0.1, -0.2, -0.3). An adapter whose forced
tokens get (-0.2, -0.2, -0.6) drops (0.1 + 0 + 0.3) / 3 = 0.133 nats/token; one that gets
(-9.1, -10.2, -11.3) drops (9 + 10 + 11) / 3 = 10.
"""

from __future__ import annotations

import asyncio
import math
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from server.engine.adapter_gate import AdapterGate
from server.engine.deployments import DeploymentTable, ModelVersion

ANSWER = [5, 6, 7]
BASE_LPS = [-0.1, -0.2, -0.3]


def _output(token: int, logprob: float, rank: int) -> Any:
    entry = {token: SimpleNamespace(logprob=logprob, rank=rank)}
    return SimpleNamespace(finished=True,
                           outputs=[SimpleNamespace(token_ids=[token], logprobs=[entry])])


class StubEngine:
    """``add`` answers the base's greedy run, and each forced adapter step from ``adapter``."""

    def __init__(self, adapter: dict[int, tuple[float, int]]) -> None:
        self.table = DeploymentTable(ModelVersion("base", 0, "base", Path("/b"), state="live"))
        self.adapter = adapter
        self.prompts: list[list[int]] = []

    async def add(self, rid: str, prompt: list[int], params: Any, lora: Any) -> Any:
        self.prompts.append(prompt)
        if lora is None:  # the base's greedy answer
            entries = [{t: SimpleNamespace(logprob=lp, rank=1)}
                       for t, lp in zip(ANSWER, BASE_LPS, strict=True)]
            out = SimpleNamespace(finished=True, outputs=[
                SimpleNamespace(token_ids=ANSWER, logprobs=entries)])
        else:
            (token,) = params.allowed_token_ids
            out = _output(token, *self.adapter[token])
        queue: asyncio.Queue[Any] = asyncio.Queue()
        queue.put_nowait(out)
        return queue

    def spawn(self, work: Any) -> None:
        work.close()

    @property
    def llm(self) -> Any:
        async def abort(rid: str) -> None:
            return None

        return SimpleNamespace(abort=abort)


def _check(adapter: dict[int, tuple[float, int]], max_drop: float = 6.0) -> Any:
    engine = StubEngine(adapter)
    gate = AdapterGate(engine, max_drop)  # type: ignore[arg-type]
    version = engine.table.new_version("ad", "adapter", Path("/ad"), 0, 1)

    async def run() -> Any:
        return await gate.check(version, [1, 2])

    return asyncio.run(run()), engine


def test_a_close_adapter_passes_with_its_numbers() -> None:
    found, engine = _check({5: (-0.2, 1), 6: (-0.2, 1), 7: (-0.6, 2)})
    assert found.tokens == 3 and found.drop == pytest.approx(0.4 / 3)
    assert found.agreement == pytest.approx(2 / 3)
    # one base run, then one forced step per answer position, each on the answer so far
    assert engine.prompts == [[1, 2], [1, 2], [1, 2, 5], [1, 2, 5, 6]]


def test_an_adapter_unlike_the_base_is_refused_with_the_numbers() -> None:
    with pytest.raises(RuntimeError) as caught:
        _check({5: (-9.1, 40), 6: (-10.2, 900), 7: (-11.3, 7)})
    message = str(caught.value)
    assert "ad@1 does not resemble" in message
    assert "10.00 nats/token lower (bound 6" in message and "top-1 agreement 0%" in message


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_a_non_finite_distribution_is_refused(bad: float) -> None:
    with pytest.raises(RuntimeError, match="non-finite"):
        _check({5: (bad, 1), 6: (-0.2, 1), 7: (-0.3, 1)})


def test_an_impossible_base_token_is_an_infinite_drop() -> None:
    with pytest.raises(RuntimeError, match="inf nats/token"):
        _check({5: (-math.inf, 49152), 6: (-0.2, 1), 7: (-0.3, 1)})
