"""Deployments: verify a checkpoint, put it live on every serving replica, roll it back.

What is live under each name, and every version it ever had, is desired state in the shared
store (``contracts/deployments.py``), not in this process: version numbers come from
``propose_version``, a deploy or rollback is ``set_live`` and a delete is ``remove``. Every
replica brings its own engine to that state (``server/reconciler.py``) through the same gate this
service uses for the routes, and reports what it serves with ``report_replica_status``.

The gate: the checkpoint's manifest and checksums verify, its base model is the served one, its
weights are finite, its format suits the mode, and a smoke generation on the staged version
succeeds. A deploy through this replica passes the gate here *before* ``set_live``, so a broken
checkpoint never becomes desired state for the other replicas; any failure leaves the previous
version serving and answers ``status: "failed"`` with the reason. A full-weight swap that could
not drain its requests in time (``SwapDrainTimeout``) is a 503 with the reason instead: the
checkpoint is fine, the moment was not.

Changes need a ready engine: while the model is still loading they are refused with a 503.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TypeVar

from contracts.deployments import (
    Deployment,
    DeploymentStore,
    DeploymentVersion,
    DeployMode,
    ReplicaStatus,
)
from server.checkpoint_gate import CheckpointChecks, check_finite
from server.engine.base import Engine
from server.engine.deployer import Deployer, StagedCheck, SwapResult
from server.errors import ConflictError, InvalidRequestError, NotFoundError, ServiceUnavailableError
from server.metrics import Metrics

logger = logging.getLogger(__name__)

__all__ = ["DeployMode", "DeploymentRecord", "DeploymentService", "check_finite"]
T = TypeVar("T")


@dataclass
class DeploymentRecord:
    """One version of a deployment as the API shows it."""

    name: str
    version: int | None  # None: refused before a version was allocated
    checkpoint: str
    mode: str
    status: str  # deploying | live | retired | failed
    reason: str | None
    created_at: float
    swap_seconds: float | None = None
    phases: dict[str, float] | None = None  # seconds per phase: verify, load/drain, smoke, ...

    @property
    def label(self) -> str | None:
        live_once = self.version is not None and self.status not in ("failed", "deploying")
        return f"{self.name}@{self.version}" if live_once else None

    def view(self) -> dict[str, Any]:
        return {**asdict(self), "label": self.label}


@dataclass
class LocalOutcome:
    """What happened to one version on this replica (phases and timings are not shared)."""

    status: str  # deploying | live | failed
    reason: str | None = None
    swap_seconds: float | None = None
    phases: dict[str, float] | None = None


class DeploymentService:
    def __init__(
        self, engine: Engine, deployer: Deployer, home: Path, metrics: Metrics,
        store: DeploymentStore, replica_id: str,
    ):
        self.engine = engine
        self.deployer = deployer
        self.home = home
        self.metrics = metrics
        self.store = store
        self.replica_id = replica_id
        self.checks = CheckpointChecks(engine, home)
        # One deployment change at a time on this replica: routes and the reconciler share it.
        self.lock = asyncio.Lock()
        self.outcomes: dict[tuple[str, int], LocalOutcome] = {}
        self._reported: dict[str, tuple[int | None, str, str | None]] = {}
        # Set when this engine may differ from the desired state without a revision change
        # (a local switch whose set_live failed): the reconciler then runs at its next poll.
        self.needs_reconcile = False
        if (home / "deployments.json").is_file():
            logger.warning(
                "%s is no longer read: deployments live in the job store now; deploy again "
                "what should be live", home / "deployments.json",
            )

    # -- API -------------------------------------------------------------------------------
    async def overview(self) -> dict[str, Any]:
        """Every version of every deployment (oldest first) and every replica's report."""
        deployments, versions, statuses = await _call(self._read_all)
        records = []
        for v in sorted(versions, key=lambda v: (v.created_at, v.name, v.version)):
            record = self._record(v, deployments[v.name], statuses).view()
            record["replicas"] = [
                _status_view(s) for s in statuses if s.name == v.name and s.version == v.version
            ]
            records.append(record)
        return {"data": records, "replicas": [_status_view(s) for s in statuses]}

    async def deploy(self, checkpoint: str, name: str, mode: DeployMode) -> dict[str, Any]:
        """Verify, allocate a version, switch this engine, then make it desired everywhere."""
        record = await self._deploy(checkpoint, name, mode, unique=False)
        assert record is not None
        return record

    async def deploy_once(
        self, checkpoint: str, name: str, mode: DeployMode, check: StagedCheck | None = None
    ) -> dict[str, Any] | None:
        """Like :meth:`deploy`, but None when ``checkpoint`` already has a version of ``name``
        (every replica auto-deploys finished jobs; only the lowest version number proceeds).
        ``check`` tests the staged version before it goes live (the evaluation gate)."""
        return await self._deploy(checkpoint, name, mode, unique=True, check=check)

    async def rollback(self, name: str, version: int | None = None) -> dict[str, Any]:
        """Make ``version`` live again (default: the newest version older than the live one
        that is not known to have failed)."""
        self._require_engine()
        async with self.lock:
            deployment = await _call(self.store.deployment, name)
            if deployment is None or deployment.live_version is None:
                raise NotFoundError(f"no live deployment named '{name}'", param="name")
            history = await _call(self.store.history, name)
            reports = await _call(self.store.replica_statuses, name)
            target = self._rollback_target(deployment, history, reports, version)
            try:
                result = await self.gate(target)
            except ServiceUnavailableError:
                raise  # could not drain in time: the reason is in the 503
            except Exception as exc:
                raise ConflictError(
                    f"rollback of '{name}' to version {target.version} failed: {exc}"
                ) from exc
            await self._publish(target)
            record = self._record(target, deployment, [], status="live")
            return {**record.view(), "swap_seconds": result.seconds, "phases": result.phases}

    async def delete(self, name: str) -> None:
        self._require_engine()
        async with self.lock:
            deployment = await _call(self.store.deployment, name)
            if deployment is None or deployment.live_version is None:
                raise NotFoundError(f"no live deployment named '{name}'", param="name")
            # This engine first, as for a deploy: an undeploy that cannot drain in time (full
            # weights) leaves the deployment live everywhere instead of desired nowhere.
            await self.deployer.undeploy(name)
            try:
                await _call(self.store.remove, name)
            except Exception:
                self.needs_reconcile = True  # back to what the store says
                raise
            await self.report(name, None, "removed")

    async def proposed_checkpoints(self) -> set[str]:
        """Checkpoint ids that have a version of some deployment (any replica proposed it)."""
        _, versions, _ = await _call(self._read_all)
        return {v.checkpoint_id for v in versions if v.checkpoint_id}

    # -- the gate (routes and reconciler) ---------------------------------------------------
    async def gate(self, version: DeploymentVersion) -> SwapResult:
        """Verify ``version``'s checkpoint and switch this engine to it (the caller holds
        :attr:`lock`); raises with the reason, the previous version still serving."""
        key = (version.name, version.version)
        self.outcomes[key] = LocalOutcome("deploying")
        try:
            weights, verify_s = await self._verify(Path(version.path), version.mode)
            return await self._switch(version.name, weights, version.mode, version.version,
                                      verify_s, created=version.created_at)
        except Exception as exc:
            self._failed(key, version.mode, exc)
            raise

    async def report(
        self, name: str, version: int | None, state: str, error: str | None = None
    ) -> None:
        """Tell the store what this replica serves under ``name`` (skipped when unchanged)."""
        entry = (version, state, error)
        if self._reported.get(name) == entry:
            return
        try:
            await _call(self.store.report_replica_status, self.replica_id, name, version, state,
                        error)
        except Exception as exc:  # a report describes; it must never undo a deployment
            logger.warning("could not report %s of %s to the store: %s", state, name, exc)
            return
        self._reported[name] = entry

    # -- internals -------------------------------------------------------------------------
    async def _deploy(
        self, checkpoint: str, name: str, mode: DeployMode, unique: bool,
        check: StagedCheck | None = None,
    ) -> dict[str, Any] | None:
        self._require_engine()
        if name in self._base_names() or "@" in name or not name.strip():
            raise InvalidRequestError(f"'{name}' cannot be a deployment name", param="name")
        folder = self.checks.folder(checkpoint)
        async with self.lock:
            if unique and await self._has_version(name, checkpoint):
                return None
            created = time.time()
            try:
                weights, verify_s = await self._verify(folder, mode)
            except Exception as exc:  # refused before a version exists: nothing in the store
                reason = _reason(exc)
                self._observe(mode, "failed", None)
                logger.warning("checkpoint %s refused for %s: %s", checkpoint, name, reason)
                return DeploymentRecord(
                    name, None, checkpoint, mode, "failed", reason, created
                ).view()
            number = await _call(self.store.propose_version, name, str(folder), mode, checkpoint)
            history = await _call(self.store.history, name)
            if unique and any(v.checkpoint_id == checkpoint and v.version < number
                              for v in history):
                logger.info("%s@%d not deployed: another replica proposed %s first",
                            name, number, checkpoint)
                return None
            # The store's creation time, not ours: every replica shows the same one.
            created = next((v.created_at for v in history if v.version == number), created)
            key = (name, number)
            self.outcomes[key] = LocalOutcome("deploying")
            try:
                result = await self._switch(name, weights, mode, number, verify_s, check, created)
            except Exception as exc:
                outcome = self._failed(key, mode, exc)
                if isinstance(exc, ServiceUnavailableError):
                    raise  # could not drain in time: a 503 with the reason, retry later
                return DeploymentRecord(
                    name, number, checkpoint, mode, "failed", outcome.reason, created
                ).view()
            version = DeploymentVersion(name, number, str(folder), mode, checkpoint, created)
            await self._publish(version)
            return DeploymentRecord(
                name, number, checkpoint, mode, "live", None, created, result.seconds,
                dict(result.phases),
            ).view()

    async def _has_version(self, name: str, checkpoint: str) -> bool:
        history = await _call(self.store.history, name)
        return any(v.checkpoint_id == checkpoint for v in history)

    async def _verify(self, folder: Path, mode: DeployMode) -> tuple[Path, float]:
        started = time.monotonic()
        weights = await asyncio.to_thread(self.checks.verified_weights, folder, mode)
        verify_s = time.monotonic() - started
        logger.info("checkpoint %s verified in %.2f s", folder.name, verify_s)
        return weights, verify_s

    async def _switch(
        self, name: str, weights: Path, mode: DeployMode, number: int, verify_s: float,
        check: StagedCheck | None = None, created: float | None = None,
    ) -> SwapResult:
        """Stage, smoke-test (and ``check``) and make live ``name@number`` in this engine."""
        result = await self.deployer.deploy(name, weights, mode, number, self._smoke(),
                                            check=check, created=created)
        seconds = result.seconds + verify_s
        phases = {"verify_s": verify_s, **result.phases}
        self.outcomes[(name, number)] = LocalOutcome("live", None, seconds, phases)
        self._observe(mode, "ok", seconds)
        logger.info("%s live on this replica (%s, %.2f s)", result.label, mode, seconds)
        return SwapResult(result.label, result.previous, seconds, phases)

    async def _publish(self, version: DeploymentVersion) -> None:
        """Make ``version`` (live here already) the desired state of every replica."""
        try:
            await _call(self.store.set_live, version.name, version.version)
            if version.mode == "full":
                # One set of full weights serves at a time: the others stop being desired.
                for other, live in (await _call(self.store.desired)).items():
                    if other != version.name and live.mode == "full":
                        await _call(self.store.remove, other)
                        await self.deployer.undeploy(other)
                        await self.report(other, None, "removed")
        except Exception as exc:
            self.needs_reconcile = True  # this engine returns to whatever the store says
            raise ServiceUnavailableError(
                f"{version.name}@{version.version} passed the gate here but the store did not "
                f"record it: {exc}"
            ) from exc
        await self.report(version.name, version.version, "live")

    def _rollback_target(
        self, deployment: Deployment, history: list[DeploymentVersion],
        reports: list[ReplicaStatus], version: int | None,
    ) -> DeploymentVersion:
        name = deployment.name
        if version is not None:
            found = [v for v in history if v.version == version]
            if not found:
                raise NotFoundError(f"deployment '{name}' has no version {version}",
                                    param="version")
            if version == deployment.live_version:
                raise ConflictError(f"version {version} of '{name}' is already live")
            return found[0]
        # Versions that failed the gate here or on another replica would only fail again.
        failed = {v for (n, v), o in self.outcomes.items() if n == name and o.status == "failed"}
        failed |= {s.version for s in reports if s.state == "failed" and s.version is not None}
        earlier = [
            v for v in history
            if v.version < (deployment.live_version or 0) and v.version not in failed
        ]
        if not earlier:
            raise ConflictError(f"deployment '{name}' has no earlier version to roll back to")
        return earlier[-1]

    def _record(
        self, v: DeploymentVersion, deployment: Deployment, statuses: list[ReplicaStatus],
        status: str | None = None,
    ) -> DeploymentRecord:
        outcome = self.outcomes.get((v.name, v.version))
        reason = None
        if status is None:
            status = "retired"
            failed_reports = [s.error for s in statuses
                           if s.name == v.name and s.version == v.version and s.state == "failed"]
            if v.version == deployment.live_version:
                status = "live"
            elif outcome is not None and outcome.status in ("failed", "deploying"):
                status, reason = outcome.status, outcome.reason
            elif failed_reports:
                status, reason = "failed", failed_reports[0]
        checkpoint = v.checkpoint_id or Path(v.path).name
        return DeploymentRecord(
            v.name, v.version, checkpoint, v.mode, status, reason, v.created_at,
            outcome.swap_seconds if outcome else None, outcome.phases if outcome else None,
        )

    def _read_all(
        self,
    ) -> tuple[dict[str, Deployment], list[DeploymentVersion], list[ReplicaStatus]]:
        deployments = {d.name: d for d in self.store.list_deployments()}
        versions = [v for name in deployments for v in self.store.history(name)]
        return deployments, versions, self.store.replica_statuses()

    def _failed(self, key: tuple[str, int], mode: str, exc: Exception) -> LocalOutcome:
        outcome = LocalOutcome("failed", _reason(exc))
        self.outcomes[key] = outcome
        self._observe(mode, "failed", None)
        logger.warning("%s@%d did not go live on this replica: %s", *key, outcome.reason)
        return outcome

    def _observe(self, mode: str, outcome: str, seconds: float | None) -> None:
        self.metrics.swaps.labels(mode, outcome).inc()
        if seconds is not None:
            self.metrics.swap_seconds.labels(mode).observe(seconds)

    def _require_engine(self) -> None:
        if not self.engine.ready:  # starting (most often), dead or shutting down
            why = self.engine.health().message or "the server is still starting"
            raise ServiceUnavailableError(f"deployment changes need a ready engine: {why}",
                                          retry_after_s=10)

    def _base_names(self) -> set[str]:
        return {card.id for card in self.engine.model_cards() if card.parent is None}

    def _smoke(self) -> list[int]:
        renderer = self.engine.renderer
        return renderer.encode(renderer.render_chat([{"role": "user", "content": "Hello"}], True))


async def _call(fn: Callable[..., T], *args: Any) -> T:
    """A blocking store call off the event loop, so requests never wait on the database."""
    return await asyncio.to_thread(fn, *args)


def _reason(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__


def _status_view(s: ReplicaStatus) -> dict[str, Any]:
    return asdict(s)
