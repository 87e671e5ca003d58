"""Requests vLLM refuses get a 400 and leave nothing behind in the engine."""

from __future__ import annotations

from pathlib import Path

import httpx

from tests.real.conftest import USER_KEY
from tests.real.server_process import ServerProcess

MODEL = "smollm2-135m-instruct"
AUTH = {"Authorization": f"Bearer {USER_KEY}"}


def test_refused_requests_are_400_and_the_engine_stays_clean(server: ServerProcess) -> None:
    url = server.base_url
    refused = [
        ("/v1/chat/completions", {"model": MODEL, "messages": [{"role": "user", "content": "hi"}],
                                  "n": 2, "temperature": 0}),
        ("/v1/chat/completions", {"model": MODEL, "messages": [{"role": "user", "content": "hi"}],
                                  "n": 2, "temperature": 0,
                                  "alignment": {"preset": "concise", "alpha": 1}}),
        ("/v1/completions", {"model": MODEL, "prompt": [1, 2, 10_000_000], "max_tokens": 4}),
    ]
    for path, body in refused:
        r = httpx.post(f"{url}{path}", json=body, headers=AUTH, timeout=120)
        assert r.status_code == 400, (body, r.text)
        assert r.json()["error"]["type"] == "invalid_request_error"
    health = httpx.get(f"{url}/health", timeout=30).json()
    assert health["running"] == 0 and health["waiting"] == 0
    ok = httpx.post(f"{url}/v1/chat/completions", headers=AUTH, timeout=120, json={
        "model": MODEL, "messages": [{"role": "user", "content": "Say hello."}],
        "max_tokens": 4, "temperature": 0})
    assert ok.status_code == 200 and ok.json()["choices"][0]["message"]["content"]


def _end_tokens(model: Path) -> set[int]:
    from transformers import AutoTokenizer, GenerationConfig

    ends = GenerationConfig.from_pretrained(model).eos_token_id
    ids = {ends} if isinstance(ends, int) else set(ends or [])
    return ids | {AutoTokenizer.from_pretrained(model).eos_token_id}


def test_a_client_that_gives_up_stops_costing(server: ServerProcess, default_model: Path) -> None:
    """A non-streaming request whose client went away is aborted in the engine."""
    import time

    url = server.base_url
    # The end tokens are banned, so the answers run to max_tokens: a sampled story that ended
    # within the client's 3 s once made this test fail.
    never_end = {str(t): -100 for t in _end_tokens(default_model)}
    try:
        httpx.post(f"{url}/v1/chat/completions", headers=AUTH, timeout=3, json={
            "model": MODEL, "messages": [{"role": "user", "content": "Write a long story."}],
            "max_tokens": 1500, "temperature": 0.8, "n": 2, "logit_bias": never_end,
            "alignment": {"preset": "concise", "alpha": 1}})
        raise AssertionError("the request should have outlived the client's timeout")
    except httpx.TimeoutException:
        pass
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if httpx.get(f"{url}/health", timeout=10).json()["running"] == 0:
            return
        time.sleep(0.5)
    raise AssertionError("the abandoned request is still running")
