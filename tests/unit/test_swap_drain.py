"""A full-weight swap waits for the requests in flight only until its deadline; then it is
abandoned before anything was loaded (admission reopens, the previous weights keep serving),
and the admin API answers 503 with the number of requests and the deadline."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from contracts.store import open_store
from server.api.app import create_app
from server.auth import KeyRing
from server.engine.admission import AdmissionGate
from server.engine.deployer import SwapDrainTimeout, SwapResult, VLLMDeployer
from server.engine.deployments import DeploymentTable, ModelVersion
from tests.unit.test_reconciler import DeployingEngine, FakeDeployer, checkpoint

ADMIN = "admin-key"


class StubLLM:
    """Records the engine calls a swap makes (a drain timeout must make none)."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    async def pause_generation(self, **_: Any) -> None:
        self.calls.append("pause")

    async def collective_rpc(self, method: str, kwargs: dict[str, Any]) -> None:
        self.calls.append(method)

    async def reset_prefix_cache(self) -> None:
        self.calls.append("reset")

    async def resume_generation(self) -> None:
        self.calls.append("resume")


class StubEngine:
    def __init__(self) -> None:
        self.gate = AdmissionGate()
        self.table = DeploymentTable(ModelVersion("base", 0, "base", Path("/base"), state="live"))
        self.llm = StubLLM()
        self.ready = True


def test_a_swap_that_cannot_drain_is_abandoned_cleanly() -> None:
    async def scenario() -> None:
        engine = StubEngine()
        deployer = VLLMDeployer(engine, drain_timeout_s=0.2)  # type: ignore[arg-type]
        await engine.gate.enter()  # a long request that outlives the deadline
        with pytest.raises(SwapDrainTimeout) as caught:
            await deployer.deploy("fw", Path("/fw"), "full", 1, [1, 2])
        message = caught.value.message
        assert "1 request(s) still in flight after the 0.2 s drain deadline" in message
        assert "base keeps serving" in message and caught.value.status_code == 503
        assert engine.llm.calls == []  # nothing paused, nothing loaded
        assert engine.table.weights is engine.table.base and "fw" not in engine.table.aliases
        assert engine.table.versions["fw@1"].state == "failed"
        await asyncio.wait_for(engine.gate.enter(), 0.5)  # admission is open again
        engine.gate.leave()
        engine.gate.leave()

    asyncio.run(scenario())


def test_an_undeploy_that_cannot_drain_keeps_the_full_weights() -> None:
    async def scenario() -> None:
        engine = StubEngine()
        live = engine.table.new_version("fw", "full", Path("/fw"), 0, 1)
        engine.table.make_live(live)
        engine.table.weights = live
        deployer = VLLMDeployer(engine, drain_timeout_s=0.2)  # type: ignore[arg-type]
        await engine.gate.enter()
        with pytest.raises(SwapDrainTimeout, match="fw@1 keeps serving"):
            await deployer.undeploy("fw")
        assert engine.table.aliases["fw"] is live and engine.table.weights is live
        assert live.state == "live" and engine.llm.calls == []
        await asyncio.wait_for(engine.gate.enter(), 0.5)

    asyncio.run(scenario())


class DrainingDeployer(FakeDeployer):
    """Full weights never drain here: every full deploy and undeploy times out."""

    async def deploy(
        self, name: str, path: Path, mode: str, number: int, smoke_prompt: list[int],
        check: object = None, created: float | None = None,
    ) -> SwapResult:
        if mode == "full":
            raise SwapDrainTimeout(f"{name}@{number}", 3, 120.0, "base")
        return await super().deploy(name, path, mode, number, smoke_prompt)

    async def undeploy(self, name: str) -> None:
        raise SwapDrainTimeout("base", 2, 120.0, f"{name}@1")


def test_the_admin_api_answers_503_with_the_reason(tmp_path: Path) -> None:
    home = tmp_path / "home"
    (home / "models" / "base").mkdir(parents=True)
    (home / "models" / "base" / "config.json").write_text('{"model_type": "llama"}')
    checkpoint(home, "ck-full", fmt="hf-full")
    checkpoint(home, "ck-ad")
    store = open_store(home / "jobs.db")
    engine = DeployingEngine(home / "models" / "base")
    engine._deployer = DrainingDeployer()
    app = create_app(engine, KeyRing.build([], [ADMIN]), home=home, store=store)
    with TestClient(app, headers={"Authorization": f"Bearer {ADMIN}"}) as client:
        r = client.post("/admin/v1/deployments",
                        json={"checkpoint": "ck-full", "name": "fw", "mode": "full"})
        assert r.status_code == 503 and r.headers["Retry-After"] == "30"
        error = r.json()["error"]
        assert error["code"] == "swap_drain_timeout"
        assert "3 request(s) still in flight after the 120 s drain deadline" in error["message"]
        listed = client.get("/admin/v1/deployments").json()["data"]
        assert [(d["name"], d["status"]) for d in listed] == [("fw", "failed")]
        assert "still in flight" in listed[0]["reason"]
        assert "fw" not in store.desired()
        # A delete that cannot drain leaves the deployment live, here and in the store.
        assert client.post("/admin/v1/deployments",
                           json={"checkpoint": "ck-ad", "name": "ad"}).status_code == 201
        r = client.delete("/admin/v1/deployments/ad")
        assert r.status_code == 503 and "still in flight" in r.json()["error"]["message"]
        assert "ad" in store.desired()
