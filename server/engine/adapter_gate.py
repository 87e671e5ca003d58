"""The engine half of an adapter's deployment gate: does it still answer like the model it
extends?

Finite tensors (``server/checkpoint_gate.py``) are not enough: an adapter whose ``lora_B`` was
scaled by 1e3 is finite, loads, produces tokens, and answers garbage. So before an adapter goes
live, the weights it runs on (the base, or the full deployment serving now) answer a fixed prompt
greedily (``GATE_TOKENS`` tokens, cached per weights), and the staged adapter scores that same
answer, teacher-forced (one forced token per position). The measure is the mean per-token drop
in log-probability of the base's answer under the adapter (nats/token):

    drop = mean_t [ log p_base(y_t | x, y_<t) - log p_adapter(y_t | x, y_<t) ]

0 for the base itself, about 0.01-0.1 for the seeded test adapters of ``tests/real`` (scales
0.01-0.03), 2.5 for one of them with ``lora_B`` x10, 14 for x30, 23 for x1000 (measured in
transformers on SmolLM2-135M-Instruct; a uniform distribution over its vocabulary would be
10.8). The default bound, 6 nats/token, leaves a trained adapter a wide margin while refusing
weights that answer noise. The top-1 agreement (the adapter's argmax is the base's token) is
reported with it. One pass, also: the adapter's output is non-empty and finite.
"""

from __future__ import annotations

import asyncio
import logging
import math
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from server.engine.deployments import ModelVersion

if TYPE_CHECKING:
    from server.engine.vllm_engine import VLLMEngine

logger = logging.getLogger(__name__)

GATE_TOKENS = 16
GATE_TIMEOUT_S = 120.0


@dataclass(frozen=True)
class Resemblance:
    tokens: int  # length of the base's answer that was scored
    drop: float  # mean log-probability drop, nats/token
    agreement: float  # share of positions where the adapter's top-1 is the base's token

    def text(self, bound: float) -> str:
        return (f"log-probability of the base's answer {self.drop:.2f} nats/token lower "
                f"(bound {bound:g}, ALIGNSERVE_ADAPTER_MAX_DROP), top-1 agreement "
                f"{self.agreement:.0%} over {self.tokens} tokens")


class AdapterGate:
    def __init__(self, engine: VLLMEngine, max_drop: float = 6.0):
        self.engine = engine
        self.max_drop = max_drop
        # (weights label, prompt) -> the base's greedy answer and its log-probabilities
        self._answers: dict[tuple[str, tuple[int, ...]], tuple[list[int], list[float]]] = {}

    async def check(self, version: ModelVersion, prompt: list[int]) -> Resemblance:
        """Raise RuntimeError with the numbers unless ``version`` (staged) passes."""
        answer, base_lps = await self._base_answer(prompt)
        found = await self._score(version, prompt, answer, base_lps)
        if not found.drop <= self.max_drop:
            raise RuntimeError(
                f"adapter {version.label} does not resemble the model it extends: "
                f"{found.text(self.max_drop)}"
            )
        logger.info("adapter gate passed by %s: %s", version.label, found.text(self.max_drop))
        return found

    async def _base_answer(self, prompt: list[int]) -> tuple[list[int], list[float]]:
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind

        key = (self.engine.table.weights.label, tuple(prompt))
        if key not in self._answers:
            params = SamplingParams(max_tokens=GATE_TOKENS, temperature=0.0, logprobs=0,
                                    detokenize=False, output_kind=RequestOutputKind.FINAL_ONLY)
            out = await self._run(prompt, params, None)
            completion = out.outputs[0]
            ids = list(completion.token_ids)
            lps = [entry[t].logprob for t, entry in zip(ids, completion.logprobs or [],
                                                          strict=True)]
            if not ids or not all(math.isfinite(lp) for lp in lps):
                raise RuntimeError(
                    f"the served weights ({key[0]}) gave no finite answer to the gate prompt: "
                    "the engine itself is unhealthy"
                )
            self._answers[key] = (ids, lps)
        return self._answers[key]

    async def _score(
        self, version: ModelVersion, prompt: list[int], answer: list[int], base_lps: list[float]
    ) -> Resemblance:
        """The adapter's log-probability (and rank) of each token of the base's answer.

        One request per position, ``prompt + answer[:t]`` forced (``allowed_token_ids``) to
        ``answer[t]``: vLLM reports a sampled token's log-probability and rank from the raw
        logits, before the mask, so they are the adapter's own. (Prompt log-probabilities would
        score the answer in one prefill, but vLLM's LoRA logits path maps one row per request,
        not per prompt token: with other requests in the batch they cannot be attributed to the
        adapter, see docs/operations.md.) The requests share their prompt, so the prefix cache
        makes each one a short step.
        """
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind

        from server.engine.vllm_convert import lora_request

        def forced(token: int) -> Any:
            return SamplingParams(max_tokens=1, temperature=0.0, logprobs=0,
                                  allowed_token_ids=[token], detokenize=False,
                                  output_kind=RequestOutputKind.FINAL_ONLY)

        lora = lora_request(version)
        outs = await asyncio.gather(*(
            self._run(prompt + answer[:t], forced(token), lora) for t, token in enumerate(answer)
        ))
        scored = []
        for token, out in zip(answer, outs, strict=True):
            completion = out.outputs[0]
            if list(completion.token_ids) != [token] or not completion.logprobs:
                raise RuntimeError(f"gate generation on {version.label} did not produce the "
                                   f"forced token {token} (non-finite logits?)")
            scored.append(completion.logprobs[0][token])
        lps = [s.logprob for s in scored]
        if not all(math.isfinite(lp) or lp == -math.inf for lp in lps):
            raise RuntimeError(
                f"smoke generation on {version.label} gave a non-finite distribution "
                "(NaN or infinite weights?)"
            )
        drops = [base - mine for base, mine in zip(base_lps, lps, strict=True)]
        agreement = sum(1 for s in scored if s.rank == 1) / len(scored)
        return Resemblance(len(answer), sum(drops) / len(drops), agreement)

    async def _run(self, prompt: list[int], params: Any, lora: Any) -> Any:
        """One request to the end (final output only); aborted if it fails or times out."""
        engine = self.engine
        rid = f"gate-{uuid.uuid4().hex[:8]}"

        async def run() -> Any:
            collector = await engine.add(rid, prompt, params, lora)
            while True:
                out = await collector.get()
                if out.finished:
                    return out

        try:
            return await asyncio.wait_for(run(), GATE_TIMEOUT_S)
        except TimeoutError:
            engine.spawn(engine.llm.abort(rid))
            raise RuntimeError(
                f"gate generation did not finish in {GATE_TIMEOUT_S:.0f} s"
            ) from None
        except BaseException:
            engine.spawn(engine.llm.abort(rid))
            raise
