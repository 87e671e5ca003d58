"""Start-up in the background: the app answers while the engine loads (/health 503 with
Retry-After, /v1 503 "still loading"), deployments are restored only once the engine is ready,
a failed start is reported and ends the server, and a shutdown during start-up cancels it."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from contracts.deployments import DeploymentVersion
from contracts.store import open_store
from server.api import lifecycle
from server.api.app import create_app
from server.auth import KeyRing
from tests.fakes import FakeEngine
from tests.unit.test_reconciler import DeployingEngine, checkpoint

CHAT = {"model": "fake-model", "messages": [{"role": "user", "content": "hi"}]}


class SlowStart:
    """An engine start that waits for the test (``release``) or fails (``error``)."""

    def __init__(self, engine: FakeEngine, error: Exception | None = None) -> None:
        self.engine, self.error = engine, error
        self.release = threading.Event()
        self.cancelled = False
        engine.ready_flag = False
        engine.start = self.start  # type: ignore[method-assign]

    async def start(self) -> None:
        try:
            while not self.release.is_set():
                await asyncio.sleep(0.01)
        except asyncio.CancelledError:
            self.cancelled = True
            raise
        if self.error is not None:
            raise self.error
        self.engine.ready_flag = True


def wait_for(predicate: object, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        time.sleep(0.02)


def test_the_app_answers_while_the_model_loads() -> None:
    engine = FakeEngine()
    slow = SlowStart(engine)
    with TestClient(create_app(engine, KeyRing.build([], []))) as client:
        r = client.get("/health")
        assert r.status_code == 503 and r.headers["Retry-After"] == "5"
        assert r.json()["error"]["code"] == "model_loading" and r.json()["status"] == "starting"
        r = client.post("/v1/chat/completions", json=CHAT)
        assert r.status_code == 503 and "still loading" in r.json()["error"]["message"]
        assert 'alignserve_engine_state{state="starting"} 1.0' in client.get("/metrics").text
        slow.release.set()
        wait_for(lambda: client.get("/health").status_code == 200)
        assert client.post("/v1/chat/completions", json=CHAT).status_code == 200


def test_a_failed_start_is_reported_then_ends_the_server(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(lifecycle, "FAILURE_GRACE_S", 0.3)
    engine = FakeEngine()
    slow = SlowStart(engine, error=RuntimeError("not enough memory for the KV cache"))
    app = create_app(engine, KeyRing.build([], []))
    exits: list[float] = []
    app.state.startup.on_failure = lambda: exits.append(time.monotonic())
    with TestClient(app) as client:
        slow.release.set()
        wait_for(lambda: client.get("/health").json()["status"] == "failed")
        failed_at = time.monotonic()
        body = client.get("/health").json()
        assert body["error"]["code"] == "engine_failed"
        assert "failed to start: not enough memory for the KV cache" in body["error"]["message"]
        assert not exits  # a health check gets to read the reason first
        wait_for(lambda: bool(exits))
        assert exits[0] >= failed_at
    assert app.state.startup.error.endswith("not enough memory for the KV cache")


def test_deployments_are_restored_only_once_the_engine_is_ready(tmp_path: Path) -> None:
    home = tmp_path / "home"
    (home / "models" / "base").mkdir(parents=True)
    (home / "models" / "base" / "config.json").write_text('{"model_type": "llama"}')
    store = open_store(home / "jobs.db")
    folder = checkpoint(home, "ck-1")
    number = store.propose_version("live-one", str(folder), "adapter", "ck-1")
    store.set_live("live-one", number)
    engine = DeployingEngine(home / "models" / "base")
    slow = SlowStart(engine)
    live_when_opened: list[dict[str, str]] = []
    engine.open = lambda: live_when_opened.append(engine.deployer.live())  # type: ignore
    app = create_app(engine, KeyRing.build([], []), home=home, store=store)
    with TestClient(app) as client:
        time.sleep(0.3)
        assert engine.deployer.calls == [] and client.get("/health").status_code == 503
        slow.release.set()
        wait_for(lambda: client.get("/health").status_code == 200)
        # requests are admitted, and /health says ready, only once the deployment is back
        assert live_when_opened == [{"live-one": "live-one@1"}]
    assert isinstance(store.desired()["live-one"], DeploymentVersion)


def test_a_shutdown_during_start_up_cancels_it() -> None:
    engine = FakeEngine()
    slow = SlowStart(engine)
    shutdowns: list[bool] = []

    async def shutdown() -> None:
        shutdowns.append(True)

    engine.shutdown = shutdown  # type: ignore[method-assign]
    with TestClient(create_app(engine, KeyRing.build([], []))) as client:
        assert client.get("/health").status_code == 503
    assert slow.cancelled and shutdowns == [True]
