"""The real server over real HTTP, driven by the unmodified ``openai`` client."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import httpx
import openai
import pytest

from tests.real.conftest import ADMIN_KEY, USER_KEY
from tests.real.server_process import ServerProcess

MODEL = "smollm2-135m-instruct"


@pytest.fixture(scope="module")
def client(server: ServerProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.base_url}/v1", api_key=USER_KEY, max_retries=0)


def test_models_lists_the_embedded_model(client: openai.OpenAI) -> None:
    ids = [m.id for m in client.models.list().data]
    assert MODEL in ids


def test_chat_non_stream_is_sensible(client: openai.OpenAI) -> None:
    r = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "What is the capital of France?"}],
        max_tokens=32,
        temperature=0,
    )
    answer = r.choices[0].message.content or ""
    assert "Paris" in answer
    assert r.usage is not None and r.usage.completion_tokens > 0
    assert r.choices[0].finish_reason in ("stop", "length")


def test_chat_stream(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Name three colours."}],
        max_tokens=24,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    finishes = [
        c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason
    ]
    assert text.strip() and finishes in (["stop"], ["length"])
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0


def test_stream_equals_non_stream_greedy(client: openai.OpenAI) -> None:
    messages = [{"role": "user", "content": "Write one sentence about the sea."}]
    full = client.chat.completions.create(
        model=MODEL, messages=messages, max_tokens=30, temperature=0
    )
    streamed = "".join(
        c.choices[0].delta.content or ""
        for c in client.chat.completions.create(
            model=MODEL, messages=messages, max_tokens=30, temperature=0, stream=True
        )
        if c.choices
    )
    assert streamed == full.choices[0].message.content


def test_completions_and_logprobs(client: openai.OpenAI) -> None:
    r = client.completions.create(
        model=MODEL, prompt="The capital of France is", max_tokens=5, temperature=0, logprobs=2
    )
    assert r.choices[0].text
    assert r.choices[0].logprobs is not None and len(r.choices[0].logprobs.tokens or []) == 5


def test_seeded_sampling_is_reproducible(client: openai.OpenAI) -> None:
    kwargs = dict(
        model=MODEL,
        messages=[{"role": "user", "content": "Tell me a fun fact."}],
        max_tokens=20,
        temperature=1.0,
        seed=1234,
        n=2,
    )
    a = client.chat.completions.create(**kwargs)  # type: ignore[call-overload]
    b = client.chat.completions.create(**kwargs)  # type: ignore[call-overload]
    assert [c.message.content for c in a.choices] == [c.message.content for c in b.choices]


def test_errors_are_openai_shaped(client: openai.OpenAI, server: ServerProcess) -> None:
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(
            model="missing", messages=[{"role": "user", "content": "x"}], max_tokens=2
        )
    with pytest.raises(openai.BadRequestError, match="maximum context length"):
        client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "x"}], max_tokens=100_000
        )
    bad = openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.models.list()
    r = httpx.get(f"{server.base_url}/v1/models", headers={"Authorization": f"Bearer {ADMIN_KEY}"})
    assert r.status_code == 200


def test_metrics_count_requests(server: ServerProcess, client: openai.OpenAI) -> None:
    client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=2
    )
    text = httpx.get(f"{server.base_url}/metrics").text
    assert f'model="{MODEL}"' in text and "alignserve_request_latency_seconds" in text


PARITY_PROMPTS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "user", "content": "Give me three tips for staying healthy."}],
    [{"role": "system", "content": "You are a pirate."}, {"role": "user", "content": "Hello!"}],
    [{"role": "user", "content": "Explain photosynthesis in one paragraph."}],
]


def test_greedy_matches_vllm_offline(client: openai.OpenAI, default_model: Path) -> None:
    max_tokens = 48
    proc = subprocess.run(
        [
            sys.executable,
            str(Path(__file__).with_name("offline_reference.py")),
            str(default_model),
            str(max_tokens),
        ],
        input=json.dumps(PARITY_PROMPTS),
        capture_output=True,
        text=True,
        timeout=600,
    )
    line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
    assert line is not None, proc.stderr[-3000:]
    expected = json.loads(line.removeprefix("RESULT "))
    for messages, ref in zip(PARITY_PROMPTS, expected, strict=True):
        r = client.chat.completions.create(
            model=MODEL,
            messages=messages,
            max_tokens=max_tokens,
            temperature=0,
            logprobs=True,
        )
        choice = r.choices[0]
        assert choice.message.content == ref["text"]
        assert r.usage is not None and r.usage.completion_tokens == len(ref["token_ids"])
