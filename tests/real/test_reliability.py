"""Reliability of the real server: it answers /health while the model loads, refuses an adapter
that does not resemble the base (and removing one that got in restores the engine), abandons a
full swap that cannot drain in time, and /health reports an engine core that stalls or dies.
A failed start exits non-zero; a SIGTERM during start-up leaves no process behind."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from tests.real.conftest import ADMIN_KEY, USER_KEY, own_store
from tests.real.server_process import ServerProcess, free_port
from tests.real.swap_checkpoints import make_adapter, make_full

BASE = "smollm2-135m-instruct"
USER = {"Authorization": f"Bearer {USER_KEY}"}
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
HELLO = [{"role": "user", "content": "Hello"}]
NO_EOS = {"2": -100}  # <|im_end|>: a stream that runs to max_tokens, as long as a test needs


@pytest.fixture(scope="module")
def served(
    alignserve_home: Path, default_model: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[ServerProcess, list[tuple[int, str, str | None]]]]:
    """One server (stall limit 3 s, drain deadline 3 s) and what /health said while it started."""
    make_adapter(default_model, alignserve_home, "rel-good", seed=11, scale=0.02)
    make_adapter(default_model, alignserve_home, "rel-x10", seed=11, scale=0.2)  # lora_B x10
    make_adapter(default_model, alignserve_home, "rel-x1000", seed=11, scale=20.0)  # x1000
    make_full(default_model, alignserve_home, "rel-full", seed=21)
    server = ServerProcess(alignserve_home, env={
        "ALIGNSERVE_API_KEYS": USER_KEY, "ALIGNSERVE_ADMIN_KEYS": ADMIN_KEY,
        "ALIGNSERVE_KV_CACHE_GIB": "1", "ALIGNSERVE_ENGINE_STALL_S": "3",
        "ALIGNSERVE_SWAP_DRAIN_TIMEOUT_S": "3",
        "ALIGNSERVE_STORE_URL": own_store(tmp_path_factory.mktemp("rel-store")),
    })
    seen: list[tuple[int, str, str | None]] = []

    def watch() -> None:  # /health and /v1 from the moment the port opens until it says ready
        deadline = time.monotonic() + 900
        while time.monotonic() < deadline:
            try:
                r = httpx.get(f"{server.base_url}/health", timeout=5)
                status = r.json().get("status", "")
                seen.append((r.status_code, status, r.headers.get("retry-after")))
                if r.status_code == 200:
                    return
                chat = httpx.post(f"{server.base_url}/v1/chat/completions", headers=USER,
                                  json={"model": BASE, "messages": HELLO, "max_tokens": 1},
                                  timeout=5)
                error = chat.json().get("error") or {}  # ready in between: a 200 answer
                seen.append((chat.status_code, str(error.get("message", "")), None))
            except (httpx.HTTPError, ValueError):
                pass  # the port is not open yet
            time.sleep(0.5)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    server.start()
    watcher.join(60)  # it stops at its own first 200, which server.start() has just seen
    yield server, seen
    server.stop()


def _chat(url: str, model: str, **extra: Any) -> httpx.Response:
    return httpx.post(f"{url}/v1/chat/completions", headers=USER, timeout=120, json={
        "model": model, "messages": HELLO, "max_tokens": 12, "temperature": 0, **extra})


def _deploy(url: str, checkpoint: str, name: str, mode: str = "adapter") -> httpx.Response:
    return httpx.post(f"{url}/admin/v1/deployments", headers=ADMIN, timeout=300,
                      json={"checkpoint": checkpoint, "name": name, "mode": mode})


class LongStream:
    """A streaming request that keeps the engine busy until closed (EOS banned)."""

    def __init__(self, url: str) -> None:
        self.client = httpx.Client(timeout=120)
        self.ctx = self.client.stream("POST", f"{url}/v1/chat/completions", headers=USER, json={
            "model": BASE, "messages": [{"role": "user", "content": "Tell me a long story."}],
            "max_tokens": 1800, "temperature": 0, "stream": True, "logit_bias": NO_EOS})
        self.response = self.ctx.__enter__()
        assert self.response.status_code == 200
        self.lines = self.response.iter_lines()
        self.chunks = 0

    def read(self, n: int) -> None:
        for line in self.lines:
            if line.startswith("data: {"):
                self.chunks += 1
                n -= 1
                if n <= 0:
                    return
        raise AssertionError("the stream ended early")

    def close(self) -> None:
        self.ctx.__exit__(None, None, None)
        self.client.close()


def _is_engine_core(p: psutil.Process) -> bool:
    try:
        return "EngineCore" in " ".join(p.cmdline())  # vLLM's process title
    except psutil.Error:
        return False


def _engine_core(server: ServerProcess) -> psutil.Process:
    assert server.proc is not None
    for p in psutil.Process(server.proc.pid).children(recursive=True):
        if _is_engine_core(p):
            return p
    raise AssertionError("no engine-core process")


def _health_until(url: str, status: str, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        body: dict[str, Any] = httpx.get(f"{url}/health", timeout=10).json()
        if body.get("status") == status:
            return body
        time.sleep(0.3)
    raise AssertionError(f"/health never said {status!r}")


def test_health_answers_while_the_model_loads(served: tuple[ServerProcess, list[Any]]) -> None:
    _, seen = served
    assert (503, "starting", "5") in seen, seen  # the port was open before the engine
    assert any(code == 503 and "still loading" in text for code, text, _ in seen), seen
    assert seen[-1][0] == 200


def test_an_adapter_unlike_the_base_is_refused_with_the_numbers(
    served: tuple[ServerProcess, list[Any]],
) -> None:
    url = served[0].base_url
    assert _deploy(url, "rel-good", "gated").status_code == 201
    before = _chat(url, "gated").json()
    r = _deploy(url, "rel-x1000", "gated")
    assert r.status_code == 422, r.text
    reason = r.json()["reason"]
    assert "does not resemble" in reason and "nats/token" in reason and "bound 6" in reason
    after = _chat(url, "gated").json()  # the live version keeps serving
    assert after["system_fingerprint"] == before["system_fingerprint"]
    assert after["choices"][0]["message"] == before["choices"][0]["message"]


def test_removing_a_version_that_got_in_restores_the_engine(
    served: tuple[ServerProcess, list[Any]],
) -> None:
    """x10 passes the bound (far from the base, but not noise); while it is live and after it is
    removed, the base and the other deployment answer exactly as before."""
    url = served[0].base_url
    base_before, gated_before = _chat(url, BASE).json(), _chat(url, "gated").json()
    assert _deploy(url, "rel-x10", "loose").status_code == 201
    loose = _chat(url, "loose").json()["choices"][0]["message"]["content"]
    assert loose != base_before["choices"][0]["message"]["content"]
    r = httpx.delete(f"{url}/admin/v1/deployments/loose", headers=ADMIN, timeout=120)
    assert r.status_code == 200
    assert _chat(url, "loose").status_code == 404
    for model, before in ((BASE, base_before), ("gated", gated_before)):
        assert _chat(url, model).json()["choices"] == before["choices"], model


def test_a_full_swap_that_cannot_drain_is_abandoned(
    served: tuple[ServerProcess, list[Any]],
) -> None:
    url = served[0].base_url
    base_before = _chat(url, BASE).json()
    stream = LongStream(url)
    try:
        stream.read(1)
        r = _deploy(url, "rel-full", "rel-fw", mode="full")
        assert r.status_code == 503, r.text
        error = r.json()["error"]
        assert error["code"] == "swap_drain_timeout" and r.headers["Retry-After"]
        assert "1 request(s) still in flight after the 3 s drain deadline" in error["message"]
        stream.read(5)  # the request in flight never noticed
    finally:
        stream.close()
    after = _chat(url, BASE).json()
    assert after["system_fingerprint"] == base_before["system_fingerprint"]
    assert after["choices"] == base_before["choices"]
    listed = httpx.get(f"{url}/admin/v1/deployments", headers=ADMIN).json()["data"]
    fw = [d for d in listed if d["name"] == "rel-fw"]
    assert fw and fw[-1]["status"] == "failed" and "drain deadline" in fw[-1]["reason"]


def test_a_stalled_engine_core_makes_health_503(served: tuple[ServerProcess, list[Any]]) -> None:
    server = served[0]
    core = _engine_core(server)
    stream = LongStream(server.base_url)
    try:
        stream.read(1)
        core.suspend()  # SIGSTOP: alive, silent
        try:
            body = _health_until(server.base_url, "stalled", 30)
            assert body["error"]["code"] == "engine_stalled" and body["since"]
            metrics = httpx.get(f"{server.base_url}/metrics").text
            assert 'alignserve_engine_state{state="stalled"} 1.0' in metrics
        finally:
            core.resume()
        _health_until(server.base_url, "ok", 30)
        stream.read(5)
    finally:
        stream.close()


def test_a_dead_engine_core_makes_health_503(served: tuple[ServerProcess, list[Any]]) -> None:
    server = served[0]
    _engine_core(server).kill()
    body = _health_until(server.base_url, "dead", 30)
    assert body["error"]["code"] == "engine_dead"
    assert "restart the server" in body["error"]["message"]
    assert _chat(server.base_url, BASE).status_code == 503


def _serve(home: Path, tmp: Path, extra: dict[str, str]) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    env = {**os.environ, "ALIGNSERVE_HOME": str(home), "ALIGNSERVE_KV_CACHE_GIB": "1",
           "ALIGNSERVE_STORE_URL": own_store(tmp), **extra}
    log = open(tmp / "server.log", "wb")  # noqa: SIM115 - the process owns it
    proc = subprocess.Popen([sys.executable, "-m", "server.cli", "serve", "--port", str(port)],
                            env=env, stdout=log, stderr=subprocess.STDOUT)
    return proc, f"http://127.0.0.1:{port}"


def _first_health(proc: subprocess.Popen[bytes], url: str, timeout: float) -> httpx.Response:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            return httpx.get(f"{url}/health", timeout=5)
        except httpx.HTTPError:
            time.sleep(0.2)
    raise AssertionError("the port never opened")


def test_a_failed_start_is_reported_then_exits_non_zero(
    alignserve_home: Path, default_model: Path, tmp_path: Path
) -> None:
    proc, url = _serve(alignserve_home, tmp_path, {"ALIGNSERVE_MAX_MODEL_LEN": "10000000"})
    try:
        _first_health(proc, url, 120)
        reasons = []
        while proc.poll() is None:
            with contextlib.suppress(httpx.HTTPError):
                reasons.append(httpx.get(f"{url}/health", timeout=5).json())
            time.sleep(0.2)
        assert proc.wait(60) == 1
        failed = [b for b in reasons if b.get("status") == "failed"]
        assert failed and "failed to start" in failed[0]["error"]["message"], reasons[-3:]
        assert "max_model_len" in (tmp_path / "server.log").read_text()
    finally:
        if proc.poll() is None:
            proc.kill()


def test_sigterm_during_start_up_leaves_nothing_behind(
    alignserve_home: Path, default_model: Path, tmp_path: Path
) -> None:
    proc, url = _serve(alignserve_home, tmp_path, {})
    try:
        assert _first_health(proc, url, 120).json()["status"] == "starting"
        deadline = time.monotonic() + 120  # until the engine core is loading the model
        family: list[psutil.Process] = []
        while time.monotonic() < deadline and not any(_is_engine_core(p) for p in family):
            time.sleep(0.5)
            family = psutil.Process(proc.pid).children(recursive=True)
        assert family, "no engine process started"
        os.kill(proc.pid, signal.SIGTERM)
        proc.wait(60)
        _, alive = psutil.wait_procs(family, timeout=30)
        assert not alive, [p.cmdline()[:2] for p in alive]
    finally:
        if proc.poll() is None:
            proc.kill()
