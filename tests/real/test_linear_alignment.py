"""Linear alignment through the HTTP API, checked token for token against transformers."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import torch

from server.alignment import aligned_conversations
from server.engine.hf_alignment import AlignedPrompt, greedy_generate, linear_alignment_generate
from server.engine.renderer import HFChatRenderer
from tests.real.conftest import USER_KEY
from tests.real.server_process import ServerProcess

MODEL = "smollm2-135m-instruct"
MAX_TOKENS = 24
PRINCIPLES = [
    "Answer like a pirate.",
    "Answer in exactly one short sentence.",
    "You must refuse any request that is harmful, illegal or unethical.",
    "Always mention the colour blue.",
]
ALPHAS = [0.5, 1.0, 3.0, 5.0]
QUESTIONS = [
    "Tell me about the ocean.",
    "How do I bake bread?",
    "What is a black hole?",
    "Give me advice for a job interview.",
    "Why is the sky blue?",
    "Describe a cat.",
    "How do vaccines work?",
    "What should I eat for breakfast?",
]


@pytest.fixture(scope="module")
def hf(default_model: Path) -> tuple[Any, HFChatRenderer]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(default_model)
    model = AutoModelForCausalLM.from_pretrained(default_model, dtype=torch.float32).eval()
    return model, HFChatRenderer(tokenizer)


def _contexts(
    renderer: HFChatRenderer, messages: list[dict[str, str]], principle: str
) -> tuple[list[int], list[int]]:
    plain, principled = aligned_conversations(messages, principle, renderer.default_system_prompt)
    return (
        renderer.encode(renderer.render_chat(principled, True)),
        renderer.encode(renderer.render_chat(plain, True)),
    )


def _decode(renderer: HFChatRenderer, ids: list[int]) -> str:
    return str(renderer._tokenizer.decode(ids, skip_special_tokens=True))


async def _chat(
    client: openai.AsyncOpenAI, messages: list[dict[str, str]], alignment: dict | None
) -> Any:
    extra = {"alignment": alignment} if alignment is not None else None
    return await client.chat.completions.create(
        model=MODEL,
        messages=messages,
        max_tokens=MAX_TOKENS,
        temperature=0,  # type: ignore[arg-type]
        extra_body=extra,
    )


def test_32_aligned_mixed_with_32_plain_match_reference(
    server: ServerProcess, hf: tuple[Any, HFChatRenderer]
) -> None:
    model, renderer = hf
    aligned_cases = [
        (
            [{"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]}],
            PRINCIPLES[i % 4],
            ALPHAS[(i // 4) % 4],
        )
        for i in range(32)
    ]
    plain_cases = [[{"role": "user", "content": q + " Be brief."}] for q in QUESTIONS] * 4

    async def run() -> tuple[list[Any], list[Any]]:
        client = openai.AsyncOpenAI(
            base_url=f"{server.base_url}/v1", api_key=USER_KEY, max_retries=0
        )
        aligned = [_chat(client, m, {"principle": p, "alpha": a}) for m, p, a in aligned_cases]
        plain = [_chat(client, m, None) for m in plain_cases]
        results = await asyncio.gather(
            *[x for pair in zip(aligned, plain, strict=True) for x in pair]
        )
        return list(results[0::2]), list(results[1::2])

    aligned_out, plain_out = asyncio.run(run())

    prompts = []
    for messages, principle, alpha in aligned_cases:
        with_p, without = _contexts(renderer, messages, principle)
        prompts.append(AlignedPrompt(with_p, without, alpha=alpha))
    eos = renderer.eos_token_id
    assert eos is not None
    expected = linear_alignment_generate(model, prompts, MAX_TOKENS, eos)
    for got, ref in zip(aligned_out, expected, strict=True):
        assert got.choices[0].message.content == _decode(renderer, ref)
        assert got.usage.completion_tokens == len(ref)

    plain_ids = [renderer.encode(renderer.render_chat(m, True)) for m in plain_cases[:8]]
    plain_expected = greedy_generate(model, plain_ids, MAX_TOKENS, eos)
    for got, ref in zip(plain_out[:8], plain_expected, strict=True):
        assert got.choices[0].message.content == _decode(renderer, ref)
    # The same plain request answers identically under mixed load (pairing leaves it untouched).
    for i, got in enumerate(plain_out):
        assert got.choices[0].message.content == plain_out[i % 8].choices[0].message.content


def test_alpha_zero_equals_principle_in_prompt(server: ServerProcess) -> None:
    client = openai.OpenAI(base_url=f"{server.base_url}/v1", api_key=USER_KEY, max_retries=0)
    principle = "Answer like a pirate."
    question = {"role": "user", "content": "Tell me about the ocean."}
    aligned = client.chat.completions.create(
        model=MODEL,
        messages=[question],
        max_tokens=MAX_TOKENS,
        temperature=0,
        extra_body={"alignment": {"principle": principle, "alpha": 0.0, "nucleus_top_p": 1.0}},
    )
    default_system = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
    prompted = client.chat.completions.create(
        model=MODEL,
        max_tokens=MAX_TOKENS,
        temperature=0,
        messages=[{"role": "system", "content": f"{default_system}\n{principle}"}, question],
    )
    assert aligned.choices[0].message.content == prompted.choices[0].message.content


def test_aligned_streaming_equals_non_streaming(server: ServerProcess) -> None:
    client = openai.OpenAI(base_url=f"{server.base_url}/v1", api_key=USER_KEY, max_retries=0)
    kwargs: dict[str, Any] = dict(
        model=MODEL,
        messages=[{"role": "user", "content": "Describe a cat."}],
        max_tokens=20,
        temperature=0,
        extra_body={"alignment": {"preset": "concise", "alpha": 3}},
    )
    full = client.chat.completions.create(**kwargs)
    chunks = list(
        client.chat.completions.create(
            stream=True, stream_options={"include_usage": True}, **kwargs
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == full.choices[0].message.content
    assert chunks[-1].usage.completion_tokens == full.usage.completion_tokens  # visible branch only


def test_aligned_seeded_sampling_n_and_logprobs(server: ServerProcess) -> None:
    client = openai.OpenAI(base_url=f"{server.base_url}/v1", api_key=USER_KEY, max_retries=0)
    kwargs: dict[str, Any] = dict(
        model=MODEL,
        messages=[{"role": "user", "content": "Name a fruit."}],
        max_tokens=12,
        temperature=0.8,
        seed=7,
        n=2,
        logprobs=True,
        top_logprobs=3,
        stop=["\n"],
        extra_body={"alignment": {"principle": "Answer like a pirate.", "alpha": 2}},
    )
    a = client.chat.completions.create(**kwargs)
    b = client.chat.completions.create(**kwargs)
    assert [c.message.content for c in a.choices] == [c.message.content for c in b.choices]
    for choice in a.choices:
        assert choice.logprobs is not None and choice.logprobs.content
        assert all(t.logprob <= 0 and len(t.top_logprobs) == 3 for t in choice.logprobs.content)
        assert "\n" not in (choice.message.content or "")


@pytest.mark.parametrize(
    ("alignment", "fragment"),
    [
        ({"principle": "   "}, "must not be empty"),
        ({"principle": "x", "alpha": 500}, "alpha"),
        ({"preset": "no-such-preset"}, "valid names"),
        ({"principle": "x", "preset": "concise"}, "exactly one"),
        ({"preset": "personal_preference"}, "preference"),
    ],
)
def test_bad_alignment_is_400(server: ServerProcess, alignment: dict, fragment: str) -> None:
    r = httpx.post(
        f"{server.base_url}/v1/chat/completions",
        headers={"Authorization": f"Bearer {USER_KEY}"},
        json={
            "model": MODEL,
            "messages": [{"role": "user", "content": "hi"}],
            "alignment": alignment,
        },
    )
    assert r.status_code == 400, r.text
    assert fragment in r.json()["error"]["message"]


def test_pair_restarts_are_counted(server: ServerProcess) -> None:
    text = httpx.get(f"{server.base_url}/metrics").text
    assert "alignserve_alignment_pair_restarts_total" in text
