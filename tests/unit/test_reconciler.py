"""Deployments across replicas, fast tier: two (or three) DeploymentServices with reconcilers on
one real SQLite store, each driving a small in-memory Deployer. The checkpoints are real files
verified by the real gate; only the engine's switch is faked (tests/real/test_replicas.py runs
the real engine)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient
from safetensors.torch import save_file

from contracts.checkpoints import base_model_identity, write_final_checkpoint
from contracts.store import Store, open_store
from server.api.app import create_app
from server.auth import KeyRing
from server.deploy_service import DeploymentService
from server.engine.deployer import StagedCheck, SwapResult
from server.errors import ConflictError, NotFoundError
from server.metrics import Metrics
from server.reconciler import Reconciler
from tests.fakes import FakeEngine

ADMIN = "admin-key"


class FakeDeployer:
    """The Deployer protocol in memory. Like the real one, a full deployment leaves the alias of
    the full one it replaced in place (it just stops being the weights)."""

    def __init__(self) -> None:
        self.aliases: dict[str, str] = {}
        self.calls: list[str] = []
        self.fail: set[str] = set()  # checkpoint folder names whose smoke test fails
        self.created: dict[str, float | None] = {}  # label -> the creation time it was given

    async def deploy(
        self, name: str, path: Path, mode: str, number: int, smoke_prompt: list[int],
        check: StagedCheck | None = None, created: float | None = None,
    ) -> SwapResult:
        label = f"{name}@{number}"
        self.calls.append(label)
        self.created[label] = created
        assert smoke_prompt, "the gate smoke-tests on a real prompt"
        if path.name in self.fail:
            raise RuntimeError(f"smoke generation on {label} produced no tokens")
        if check is not None:
            await check(label)
        previous = self.aliases.get(name)
        self.aliases[name] = label
        return SwapResult(label, previous, 0.01, {"load_s": 0.005, "smoke_s": 0.005})

    async def undeploy(self, name: str) -> None:
        self.calls.append(f"-{name}")
        self.aliases.pop(name, None)

    def live(self) -> dict[str, str]:
        return dict(self.aliases)


class DeployingEngine(FakeEngine):
    def __init__(self, base: Path) -> None:
        super().__init__()
        self.base = base
        self._deployer = FakeDeployer()

    @property
    def model_path(self) -> Path:
        return self.base

    @property
    def max_lora_rank(self) -> int:
        return 16

    @property
    def deployer(self) -> FakeDeployer:  # type: ignore[override]
        return self._deployer


@pytest.fixture
def home(tmp_path: Path) -> Path:
    base = tmp_path / "home" / "models" / "base"
    base.mkdir(parents=True)
    (base / "config.json").write_text(json.dumps({"model_type": "llama", "hidden_size": 8}))
    return tmp_path / "home"


@pytest.fixture
def store(home: Path) -> Store:
    return open_store(home / "jobs.db")


def checkpoint(home: Path, cid: str, fmt: str = "peft-lora", value: float = 0.5) -> Path:
    base = home / "models" / "base"

    def fill(folder: Path) -> None:
        if fmt == "peft-lora":
            (folder / "adapter_config.json").write_text(json.dumps({"r": 4}))
            save_file({"lora_A": torch.full((4, 8), value)}, folder / "adapter_model.safetensors")
        else:
            (folder / "config.json").write_text((base / "config.json").read_text())
            save_file({"w": torch.full((8, 8), value)}, folder / "model.safetensors")

    manifest = {"checkpoint_id": cid, "format": fmt, "base_model": base_model_identity(str(base))}
    write_final_checkpoint(home / "checkpoints" / cid, fill, lambda: manifest)
    return home / "checkpoints" / cid


class Replica:
    def __init__(self, home: Path, store: Store, replica_id: str) -> None:
        self.engine = DeployingEngine(home / "models" / "base")
        self.deployer = self.engine.deployer
        self.service = DeploymentService(
            self.engine, self.deployer, home, Metrics(), store, replica_id
        )
        self.reconciler = Reconciler(self.service, store, interval_s=0.05)


def states(store: Store, name: str) -> dict[str, tuple[int | None, str]]:
    return {s.replica_id: (s.version, s.state) for s in store.replica_statuses(name)}


def test_deploy_rollback_delete_through_either_replica_reach_the_other(
    home: Path, store: Store
) -> None:
    for cid, value in (("ck1", 0.1), ("ck2", 0.2)):
        checkpoint(home, cid, value=value)
    a, b = Replica(home, store, "a"), Replica(home, store, "b")

    async def scenario() -> None:
        assert await a.reconciler.poll() and await b.reconciler.poll()  # both start empty
        first = await a.service.deploy("ck1", "ad", "adapter")
        assert first["status"] == "live" and first["label"] == "ad@1", first
        assert "verify_s" in first["phases"]
        assert store.desired()["ad"].version == 1
        assert await b.reconciler.poll()
        assert b.deployer.live() == {"ad": "ad@1"}
        assert states(store, "ad") == {"a": (1, "live"), "b": (1, "live")}
        # Both engines (and the API's record) date ad@1 by the store, not by their own clocks.
        created = store.history("ad")[0].created_at
        assert a.deployer.created["ad@1"] == b.deployer.created["ad@1"] == created
        assert first["created_at"] == created
        assert not await b.reconciler.poll()  # nothing changed: no pass
        await a.reconciler.poll()
        assert a.deployer.calls == ["ad@1"]  # its own change is not applied twice

        assert (await a.service.deploy("ck2", "ad", "adapter"))["label"] == "ad@2"
        await b.reconciler.poll()
        assert b.deployer.live() == {"ad": "ad@2"}

        back = await b.service.rollback("ad")  # through the other replica
        assert back["label"] == "ad@1" and back["checkpoint"] == "ck1"
        await a.reconciler.poll()
        assert a.deployer.live() == b.deployer.live() == {"ad": "ad@1"}
        with pytest.raises(ConflictError):
            await a.service.rollback("ad")  # nothing older than version 1
        assert (await a.service.rollback("ad", version=2))["label"] == "ad@2"
        await b.reconciler.poll()
        assert b.deployer.live() == {"ad": "ad@2"}

        await b.service.delete("ad")
        await a.reconciler.poll()
        assert a.deployer.live() == b.deployer.live() == {}
        assert states(store, "ad") == {"a": (None, "removed"), "b": (None, "removed")}
        with pytest.raises(NotFoundError):
            await a.service.delete("ad")
        with pytest.raises(NotFoundError):
            await a.service.rollback("ad")
        # The history stays, and numbering continues after a removal.
        assert (await b.service.deploy("ck1", "ad", "adapter"))["label"] == "ad@3"

    asyncio.run(scenario())


def test_a_broken_checkpoint_never_becomes_desired_state(home: Path, store: Store) -> None:
    checkpoint(home, "good")
    bad = checkpoint(home, "bad", value=0.3)
    data = bytearray((bad / "adapter_model.safetensors").read_bytes())
    data[-1] ^= 0xFF
    (bad / "adapter_model.safetensors").write_bytes(bytes(data))
    checkpoint(home, "nosmoke", value=0.4)
    a, b = Replica(home, store, "a"), Replica(home, store, "b")
    a.deployer.fail.add("nosmoke")

    async def scenario() -> None:
        await a.service.deploy("good", "ad", "adapter")
        await b.reconciler.poll()
        refused = await a.service.deploy("bad", "ad", "adapter")
        assert refused["status"] == "failed" and "checksum" in refused["reason"]
        assert refused["version"] is None and refused["label"] is None
        assert len(store.history("ad")) == 1  # refused before a version was allocated
        smoke = await a.service.deploy("nosmoke", "ad", "adapter")
        assert smoke["status"] == "failed" and "no tokens" in smoke["reason"]
        assert smoke["version"] == 2 and smoke["label"] is None
        assert store.desired()["ad"].version == 1
        assert a.deployer.live() == {"ad": "ad@1"}
        await b.reconciler.poll()
        assert b.deployer.calls == ["ad@1"]  # the failed version never reached it
        view = await a.service.overview()
        by_version = {r["version"]: r for r in view["data"]}
        assert by_version[1]["status"] == "live" and by_version[2]["status"] == "failed"
        assert {r["replica_id"] for r in by_version[1]["replicas"]} == {"a", "b"}
        # A later deploy, then a rollback, skips the version that failed here.
        await a.service.deploy("good", "ad", "adapter")
        assert (await a.service.rollback("ad"))["label"] == "ad@1"

    asyncio.run(scenario())


def test_failure_on_one_replica_is_reported_and_retried_on_the_next_change(
    home: Path, store: Store
) -> None:
    for cid in ("ck1", "ck2", "other"):
        checkpoint(home, cid)
    a, b = Replica(home, store, "a"), Replica(home, store, "b")
    b.deployer.fail.add("ck2")

    async def scenario() -> None:
        await a.service.deploy("ck1", "ad", "adapter")
        await b.reconciler.poll()
        await a.service.deploy("ck2", "ad", "adapter")
        await b.reconciler.poll()
        status = store.replica_statuses("ad")
        failed = next(s for s in status if s.replica_id == "b")
        assert (failed.version, failed.state) == (2, "failed") and "no tokens" in str(failed.error)
        assert b.deployer.live() == {"ad": "ad@1"}  # the previous version keeps serving
        for _ in range(3):
            assert not await b.reconciler.poll()
        assert b.deployer.calls == ["ad@1", "ad@2"]  # no retry without a change
        b.deployer.fail.clear()
        await a.service.deploy("other", "other", "adapter")  # any change: the retry
        await b.reconciler.poll()
        assert b.deployer.live() == {"ad": "ad@2", "other": "other@1"}
        assert states(store, "ad")["b"] == (2, "live")

    asyncio.run(scenario())


def test_a_restarted_replica_comes_back_serving_what_is_live(home: Path, store: Store) -> None:
    checkpoint(home, "ck1")
    checkpoint(home, "full1", fmt="hf-full")
    a = Replica(home, store, "a")

    async def scenario() -> None:
        await a.service.deploy("ck1", "ad", "adapter")
        await a.service.deploy("full1", "fw", "full")
        restarted = Replica(home, store, "b")  # a fresh engine: nothing live
        assert await restarted.reconciler.poll()
        assert restarted.deployer.live() == {"ad": "ad@1", "fw": "fw@1"}
        assert restarted.deployer.calls[0] == "fw@1"  # full weights first

    asyncio.run(scenario())


def test_one_full_deployment_at_a_time(home: Path, store: Store) -> None:
    checkpoint(home, "full1", fmt="hf-full", value=0.1)
    checkpoint(home, "full2", fmt="hf-full", value=0.2)
    a, b = Replica(home, store, "a"), Replica(home, store, "b")

    async def scenario() -> None:
        await a.service.deploy("full1", "fw1", "full")
        await b.reconciler.poll()
        await a.service.deploy("full2", "fw2", "full")
        assert set(store.desired()) == {"fw2"}  # the replaced full name stopped being desired
        assert a.deployer.live() == {"fw2": "fw2@1"}
        await b.reconciler.poll()
        assert b.deployer.live() == {"fw2": "fw2@1"}
        assert b.deployer.calls == ["fw1@1", "fw2@1", "-fw1"]  # switched, then dropped the alias
        # Two full names desired at once (a removal that did not happen): the newest wins.
        store.set_live("fw1", 1)
        fresh = Replica(home, store, "c")
        await fresh.reconciler.poll()
        assert fresh.deployer.live() == {"fw1": "fw1@1"}
        assert states(store, "fw1")["c"] == (1, "live")

    asyncio.run(scenario())


def test_auto_deploy_proposes_a_checkpoint_once_across_replicas(home: Path, store: Store) -> None:
    checkpoint(home, "job-ck")
    a, b = Replica(home, store, "a"), Replica(home, store, "b")

    async def scenario() -> None:
        assert (await a.service.deploy_once("job-ck", "auto", "adapter")) is not None
        assert (await b.service.deploy_once("job-ck", "auto", "adapter")) is None
        assert [v.version for v in store.history("auto")] == [1]
        assert await b.service.proposed_checkpoints() == {"job-ck"}

    asyncio.run(scenario())


def test_the_poll_loop_follows_changes(home: Path, store: Store) -> None:
    checkpoint(home, "ck1")
    a, b = Replica(home, store, "a"), Replica(home, store, "b")

    async def scenario() -> None:
        loop = asyncio.create_task(b.reconciler.run())
        try:
            await a.service.deploy("ck1", "ad", "adapter")
            for _ in range(200):
                if b.deployer.live() == {"ad": "ad@1"}:
                    break
                await asyncio.sleep(0.02)
            assert b.deployer.live() == {"ad": "ad@1"}
        finally:
            loop.cancel()

    asyncio.run(scenario())


@pytest.fixture
def client(home: Path, store: Store) -> Iterator[tuple[TestClient, DeployingEngine]]:
    engine = DeployingEngine(home / "models" / "base")
    app = create_app(engine, KeyRing.build([], [ADMIN]), home=home, store=store,
                     replica_id="http", reconcile_interval_s=0.05)
    with TestClient(app) as c:
        c.headers["Authorization"] = f"Bearer {ADMIN}"
        yield c, engine


def test_http_routes_show_replicas_and_the_app_reconciles_at_start(
    client: tuple[TestClient, DeployingEngine], home: Path, store: Store
) -> None:
    c, engine = client
    checkpoint(home, "ck1")
    checkpoint(home, "ck2")
    r = c.post("/admin/v1/deployments", json={"checkpoint": "ck1", "name": "ad"})
    assert r.status_code == 201 and r.json()["label"] == "ad@1", r.text
    assert c.post("/admin/v1/deployments", json={"checkpoint": "nope", "name": "x"}
                  ).status_code == 404
    other = Replica(home, store, "other")
    asyncio.run(other.service.deploy("ck2", "ad", "adapter"))  # through another replica
    for _ in range(200):  # the app's own reconciler follows
        if engine.deployer.live() == {"ad": "ad@2"}:
            break
        time.sleep(0.02)
    assert engine.deployer.live() == {"ad": "ad@2"}
    listing = c.get("/admin/v1/deployments").json()
    assert listing["object"] == "list"
    assert [(d["label"], d["status"]) for d in listing["data"]] == [
        ("ad@1", "retired"), ("ad@2", "live")]
    assert {s["replica_id"] for s in listing["replicas"]} == {"http", "other"}
    assert {s["replica_id"] for s in listing["data"][1]["replicas"]} == {"http", "other"}
    r = c.post("/admin/v1/deployments/ad/rollback", params={"version": 1})
    assert r.status_code == 200 and r.json()["label"] == "ad@1"
    assert c.post("/admin/v1/deployments/ad/rollback", params={"version": 9}).status_code == 404
    assert c.delete("/admin/v1/deployments/ad").json() == {"name": "ad", "deleted": True}
    assert c.post("/admin/v1/deployments/ad/rollback").status_code == 404
