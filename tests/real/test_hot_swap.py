"""Hot-swap under load: 10 deployments while 16 streaming clients run, no failed request, and
every response's tokens come from exactly the one version it names."""

from __future__ import annotations

import asyncio
import shutil
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from server.engine.renderer import HFChatRenderer
from server.evaluation.configs import EvalConfig, SamplingParams
from server.evaluation.runner import OpenAIGenerator, ServedVersion
from tests.real.conftest import ADMIN_KEY, USER_KEY, own_store
from tests.real.server_process import ServerProcess
from tests.real.swap_checkpoints import expected_greedy, make_adapter, make_full

BASE = "smollm2-135m-instruct"
MESSAGES = [{"role": "user", "content": "Write a short poem about the sea."}]
MAX_TOKENS = 16
ADAPTERS = {"swap-a1": 11, "swap-a2": 12, "swap-a3": 13}
FULLS = {"swap-f1": 21, "swap-f2": 22}
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}


@pytest.fixture(scope="module")
def swap_env(
    alignserve_home: Path, default_model: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[ServerProcess, dict[str, str]]]:
    from transformers import AutoTokenizer

    renderer = HFChatRenderer(AutoTokenizer.from_pretrained(default_model))
    prompt = renderer.encode(renderer.render_chat(MESSAGES, True))
    adapters = {c: make_adapter(default_model, alignserve_home, c, s) for c, s in ADAPTERS.items()}
    fulls = {c: make_full(default_model, alignserve_home, c, s) for c, s in FULLS.items()}
    # Expected greedy text of every (base weights, adapter) combination the swaps can produce.
    expected: dict[str, str] = {}
    for weights_name, weights in [(BASE, default_model), *fulls.items()]:
        expected[weights_name] = expected_greedy(weights, None, prompt, MAX_TOKENS)
        for adapter_name, adapter in adapters.items():
            key = adapter_name if weights_name == BASE else f"{adapter_name}+{weights_name}"
            expected[key] = expected_greedy(weights, adapter, prompt, MAX_TOKENS)
    primary = [expected[k] for k in (BASE, *ADAPTERS, *FULLS)]
    assert len(set(primary)) == len(primary), "test versions must answer differently"
    server = ServerProcess(
        alignserve_home,
        env={
            "ALIGNSERVE_API_KEYS": USER_KEY,
            "ALIGNSERVE_ADMIN_KEYS": ADMIN_KEY,
            "ALIGNSERVE_KV_CACHE_GIB": "1",
            "ALIGNSERVE_STORE_URL": own_store(tmp_path_factory.mktemp("swap-store")),
        },
    ).start()
    yield server, expected
    server.stop()


def _deploy(base_url: str, checkpoint: str, name: str, mode: str) -> dict[str, Any]:
    r = httpx.post(
        f"{base_url}/admin/v1/deployments",
        headers=ADMIN,
        timeout=300,
        json={"checkpoint": checkpoint, "name": name, "mode": mode},
    )
    assert r.status_code == 201, r.text
    return r.json()


def _rollback(base_url: str, name: str) -> dict[str, Any]:
    r = httpx.post(f"{base_url}/admin/v1/deployments/{name}/rollback", headers=ADMIN, timeout=300)
    assert r.status_code == 200, r.text
    return r.json()


def test_ten_deployments_under_16_streaming_clients(
    swap_env: tuple[ServerProcess, dict[str, str]],
) -> None:
    server, expected = swap_env
    url = server.base_url
    checkpoint_of: dict[str, str] = {BASE: BASE}
    results: list[tuple[str, str]] = []  # (version, text)
    failures: list[str] = []

    async def client_loop(model: str, stop: asyncio.Event) -> None:
        client = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key=USER_KEY, max_retries=0)
        while not stop.is_set():
            try:
                stream = await client.chat.completions.create(
                    model=model,
                    messages=MESSAGES,
                    max_tokens=MAX_TOKENS,  # type: ignore[arg-type]
                    temperature=0,
                    stream=True,
                )
                text, versions = [], set()
                async for chunk in stream:
                    versions.add(chunk.system_fingerprint)
                    if chunk.choices:
                        text.append(chunk.choices[0].delta.content or "")
                assert len(versions) == 1, versions
                results.append((versions.pop().removeprefix("alignserve:"), "".join(text)))
            except Exception as exc:  # every failure is a test failure, reported below
                failures.append(f"{model}: {type(exc).__name__}: {exc}")

    async def scenario() -> None:
        first = _deploy(url, "swap-a1", "ad", "adapter")  # the adapter clients need it live
        checkpoint_of[first["label"]] = "swap-a1"
        stop = asyncio.Event()
        clients = [
            asyncio.create_task(client_loop("ad" if i % 2 else BASE, stop)) for i in range(16)
        ]
        steps: list[tuple[str, ...]] = [
            ("deploy", "swap-a2", "ad", "adapter"),
            ("deploy", "swap-f1", "fw", "full"),
            ("deploy", "swap-a3", "ad", "adapter"),
            ("rollback", "ad"),
            ("deploy", "swap-f2", "fw", "full"),
            ("rollback", "fw"),
            ("deploy", "swap-a1", "ad", "adapter"),
            ("deploy", "swap-f2", "fw", "full"),
            ("rollback", "ad"),
        ]
        for step in steps:
            await asyncio.sleep(2.0)
            if step[0] == "deploy":
                record = await asyncio.to_thread(_deploy, url, *step[1:])
                checkpoint_of[record["label"]] = step[1]
            else:
                await asyncio.to_thread(_rollback, url, step[1])
        await asyncio.sleep(2.0)
        stop.set()
        await asyncio.gather(*clients)

    asyncio.run(scenario())
    assert not failures, failures[:5]
    seen = Counter(version for version, _ in results)
    assert len(seen) >= 5, seen  # the load really spanned the swaps
    for version, text in results:
        key = "+".join(checkpoint_of[part] for part in version.split("+"))
        assert text == expected[key], (version, text)
    metrics = httpx.get(f"{url}/metrics").text
    assert "alignserve_requests_aborted_by_swap_total 0.0" in metrics
    assert 'alignserve_swaps_total{mode="full",outcome="ok"}' in metrics
    models = httpx.get(f"{url}/v1/models", headers=ADMIN).json()["data"]
    ad = next(m for m in models if m["id"] == "ad")
    assert ad["parent"] == BASE and ad["version"] >= 1

    # An evaluation pins "ad" to the version it serves, and the pinned name answers as that one.
    async def pinned() -> tuple[ServedVersion | None, ServedVersion | None, str]:
        generator = OpenAIGenerator.connect(f"{url}/v1", USER_KEY)
        try:
            versions = await generator.served_versions()
            served = versions.get("ad")
            assert served is not None
            answer = await generator.generate(EvalConfig("ad", served.model), MESSAGES,
                                              SamplingParams(max_tokens=MAX_TOKENS))
            return served, versions.get(BASE), answer.text
        finally:
            await generator.close()

    served, base, text = asyncio.run(pinned())
    assert served == ServedVersion(f"ad@{ad['version']}", ad["created"]) and base is None
    # The adapter runs on the full weights live under "fw" (the last step deployed some).
    fw = next(m for m in models if m["id"] == "fw")
    weights = checkpoint_of[f"fw@{fw['version']}"]
    assert text == expected[f"{checkpoint_of[served.model]}+{weights}"]


def test_corrupted_checkpoint_is_refused(
    swap_env: tuple[ServerProcess, dict[str, str]], alignserve_home: Path
) -> None:
    server, _ = swap_env
    url = server.base_url
    bad = alignserve_home / "checkpoints" / "swap-bad"
    shutil.rmtree(bad, ignore_errors=True)
    shutil.copytree(alignserve_home / "checkpoints" / "swap-a2", bad)
    weights = bad / "adapter_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF
    weights.write_bytes(bytes(data))
    client = openai.OpenAI(base_url=f"{url}/v1", api_key=USER_KEY, max_retries=0)
    before = client.chat.completions.create(
        model="ad", messages=MESSAGES, max_tokens=MAX_TOKENS, temperature=0
    )  # type: ignore[arg-type]
    r = httpx.post(
        f"{url}/admin/v1/deployments",
        headers=ADMIN,
        timeout=120,
        json={"checkpoint": "swap-bad", "name": "ad", "mode": "adapter"},
    )
    assert r.status_code == 422
    assert r.json()["status"] == "failed" and "checksum" in r.json()["reason"]
    after = client.chat.completions.create(
        model="ad", messages=MESSAGES, max_tokens=MAX_TOKENS, temperature=0
    )  # type: ignore[arg-type]
    assert after.system_fingerprint == before.system_fingerprint
    assert after.choices[0].message.content == before.choices[0].message.content


def test_deployment_errors(swap_env: tuple[ServerProcess, dict[str, str]]) -> None:
    server, _ = swap_env
    url = server.base_url
    r = httpx.post(
        f"{url}/admin/v1/deployments",
        headers=ADMIN,
        json={"checkpoint": "nope", "name": "x", "mode": "adapter"},
    )
    assert r.status_code == 404
    r = httpx.post(
        f"{url}/admin/v1/deployments",
        headers={"Authorization": f"Bearer {USER_KEY}"},
        json={"checkpoint": "swap-a1", "name": "x", "mode": "adapter"},
    )
    assert r.status_code == 403
    r = httpx.post(
        f"{url}/admin/v1/deployments",
        headers=ADMIN,
        json={"checkpoint": "swap-f1", "name": "x", "mode": "adapter"},
    )
    assert r.status_code == 422 and "LoRA" in r.json()["reason"]
    r = httpx.post(f"{url}/admin/v1/deployments/none/rollback", headers=ADMIN)
    assert r.status_code == 404
    # Removing a full deployment restores the base weights.
    httpx.delete(f"{url}/admin/v1/deployments/fw", headers=ADMIN, timeout=120)
    client = openai.OpenAI(base_url=f"{url}/v1", api_key=USER_KEY, max_retries=0)
    r2 = client.chat.completions.create(
        model=BASE, messages=MESSAGES, max_tokens=MAX_TOKENS, temperature=0
    )  # type: ignore[arg-type]
    assert r2.system_fingerprint == f"alignserve:{BASE}"
