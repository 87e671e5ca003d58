"""Adapter contrast through the HTTP API, token for token against transformers.

A deployed adapter decoded against the base model: z = z_adapter + alpha (z_adapter - z_base)
under the adapter's nucleus, inside the vLLM batch next to ordinary requests.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import torch

from server.engine.hf_alignment import AlignedPrompt, contrast_generate
from server.engine.renderer import HFChatRenderer
from tests.real.conftest import ADMIN_KEY, USER_KEY
from tests.real.server_process import ServerProcess
from tests.real.swap_checkpoints import make_adapter

MODEL = "smollm2-135m-instruct"
DEPLOYMENT = "contrast-adapter"
MAX_TOKENS = 20
QUESTIONS = [
    "Tell me about the ocean.",
    "How do I bake bread?",
    "What is a black hole?",
    "Describe a cat.",
    "Why is the sky blue?",
    "Give me advice for a job interview.",
]
ALPHAS = [0.5, 1.0, 2.0]


@pytest.fixture(scope="module")
def deployed(
    server: ServerProcess, default_model: Path, alignserve_home: Path
) -> Iterator[Path]:
    adapter = make_adapter(default_model, alignserve_home, "contrast-test-adapter", seed=11,
                           scale=0.03)
    r = httpx.post(
        f"{server.base_url}/admin/v1/deployments",
        headers={"Authorization": f"Bearer {ADMIN_KEY}"},
        json={"checkpoint": "contrast-test-adapter", "name": DEPLOYMENT, "mode": "adapter"},
        timeout=300,
    )
    assert r.status_code in (200, 201) and r.json()["status"] == "live", r.text
    yield adapter
    # The home (and the deployments in its store) is shared with the other real tests.
    httpx.delete(f"{server.base_url}/admin/v1/deployments/{DEPLOYMENT}",
                 headers={"Authorization": f"Bearer {ADMIN_KEY}"}, timeout=300)


@pytest.fixture(scope="module")
def models(default_model: Path, deployed: Path) -> tuple[Any, Any, HFChatRenderer]:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base = AutoModelForCausalLM.from_pretrained(default_model, dtype=torch.float32).eval()
    tuned = AutoModelForCausalLM.from_pretrained(default_model, dtype=torch.float32)
    tuned = PeftModel.from_pretrained(tuned, deployed).merge_and_unload().eval()
    return tuned, base, HFChatRenderer(AutoTokenizer.from_pretrained(default_model))


def test_contrast_matches_the_transformers_reference(
    server: ServerProcess, models: tuple[Any, Any, HFChatRenderer]
) -> None:
    tuned, base, renderer = models
    cases = [(q, a) for q in QUESTIONS for a in ALPHAS]

    async def run() -> list[Any]:
        client = openai.AsyncOpenAI(base_url=f"{server.base_url}/v1", api_key=USER_KEY,
                                    max_retries=0)
        calls = [
            client.chat.completions.create(
                model=DEPLOYMENT,
                messages=[{"role": "user", "content": q}],
                max_tokens=MAX_TOKENS,
                temperature=0,
                extra_body={"alignment": {"contrast": {"against": MODEL}, "alpha": a}},
            )
            for q, a in cases
        ]
        # Ordinary requests in the same batches: contrast must leave them alone.
        calls += [
            client.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": q}], max_tokens=MAX_TOKENS,
                temperature=0,
            )
            for q in QUESTIONS
        ]
        return list(await asyncio.gather(*calls))

    results = asyncio.run(run())
    eos = renderer.eos_token_id
    assert eos is not None
    prompts = []
    for q, a in cases:
        ids = renderer.encode(renderer.render_chat([{"role": "user", "content": q}], True))
        prompts.append(AlignedPrompt(ids, ids, alpha=a))
    expected = contrast_generate(tuned, base, prompts, MAX_TOKENS, eos)
    decode = renderer._tokenizer.decode
    for got, want in zip(results[: len(cases)], expected, strict=True):
        assert got.choices[0].message.content == decode(want, skip_special_tokens=True)
        assert got.usage.completion_tokens == len(want)
        assert got.system_fingerprint.startswith(f"alignserve:{DEPLOYMENT}@")
    plain = contrast_generate(base, base, [AlignedPrompt(p.principled_ids, p.plain_ids, 0.0)
                                           for p in prompts[:: len(ALPHAS)]], MAX_TOKENS, eos)
    for got, want in zip(results[len(cases):], plain, strict=True):
        assert got.choices[0].message.content == decode(want, skip_special_tokens=True)
    # The contrast changes what the adapter says (else the test would prove nothing).
    differs = sum(
        got.choices[0].message.content != results[len(cases) + i // len(ALPHAS)]
        .choices[0].message.content
        for i, got in enumerate(results[: len(cases)])
    )
    assert differs >= len(cases) // 2


@pytest.mark.parametrize(
    ("model", "contrast", "fragment"),
    [
        (DEPLOYMENT, {"against": "no-such-model"}, "does not exist"),
        (DEPLOYMENT, {"against": DEPLOYMENT}, "another model"),
        (DEPLOYMENT, {"against": MODEL, "extra": 1}, "Extra inputs"),
    ],
)
def test_bad_contrast_is_400(
    server: ServerProcess, deployed: Path, model: str, contrast: dict, fragment: str
) -> None:
    r = httpx.post(
        f"{server.base_url}/v1/chat/completions",
        headers={"Authorization": f"Bearer {USER_KEY}"},
        json={"model": model, "messages": [{"role": "user", "content": "hi"}],
              "alignment": {"contrast": contrast, "alpha": 1.0}},
    )
    assert r.status_code == 400, r.text
    assert fragment in r.json()["error"]["message"]
