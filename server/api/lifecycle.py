"""Start-up in the background, and what ``/health`` answers.

uvicorn opens the port once the app's lifespan start-up returns. Loading a model takes from
seconds to many minutes, and a closed port tells a load balancer or an operator nothing, so the
lifespan only starts :class:`Startup` and returns: the port is open at once, ``/health`` answers
503 with ``Retry-After`` and what is under way, and ``/v1`` answers 503 "the model is still
loading". Once the engine is ready, the deployments the store says are live are put in place
(``/health`` stays 503 until then, so a load balancer never sends a replica traffic for a name it
does not serve yet), then the reconciler's poll loop and auto-deploy start, and ``/health``
follows the engine's own health (``server.engine.watchdog``: ready, stalled, dead).

If the engine fails to start, the reason is logged and answered by ``/health``, and after
``FAILURE_GRACE_S`` (so a health check can read it) ``on_failure`` runs: the CLI stops uvicorn
and exits 1. A shutdown at any point cancels what runs; the engine's ``shutdown`` stops a start
that is still in progress.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal

from fastapi.responses import JSONResponse

from server.engine.base import Engine
from server.engine.watchdog import EngineHealth

if TYPE_CHECKING:
    from contracts.deployments import DeploymentStore
    from server.deploy_service import DeploymentService
    from server.reconciler import Reconciler
    from server.training import TrainingService

logger = logging.getLogger(__name__)

Phase = Literal["loading", "restoring", "ready", "failed", "stopping"]
FAILURE_GRACE_S = 3.0
WATCH_INTERVAL_S = 1.0  # how often a change of the engine's health is looked for (to log it)
# /health: the error code and Retry-After (None: retrying will not help) of each state.
_CODES: dict[str, tuple[str, int | None]] = {
    "starting": ("model_loading", 5),
    "stalled": ("engine_stalled", 10),
    "dead": ("engine_dead", None),
    "failed": ("engine_failed", None),
    "stopping": ("shutting_down", None),
}


class Startup:
    def __init__(
        self,
        engine: Engine,
        *,
        start_engine: bool = True,
        deployments: DeploymentService | None = None,
        store: DeploymentStore | None = None,
        reconcile_interval_s: float = 1.0,
        training: TrainingService | None = None,
    ) -> None:
        self.engine, self.start_engine = engine, start_engine
        self.deployments, self.store, self.training = deployments, store, training
        self.reconcile_interval_s = reconcile_interval_s
        self.phase: Phase = "loading"
        self.since = time.time()  # when the phase began
        self.error: str | None = None
        self.on_failure: Callable[[], None] | None = None
        self.reconciler: Reconciler | None = None
        self._tasks: list[asyncio.Task[Any]] = []

    def begin(self) -> None:
        """Start in the background (from the lifespan, on the server's loop)."""
        self._tasks.append(asyncio.create_task(self._run(), name="alignserve-startup"))

    async def stop(self) -> None:
        """Cancel the start-up (wherever it is) and the loops it started."""
        self._enter("stopping")
        # Only this loop's tasks: a test may run one app under two clients, one loop each.
        loop = asyncio.get_running_loop()
        mine = [task for task in self._tasks if task.get_loop() is loop]
        self._tasks = [task for task in self._tasks if task not in mine]
        for task in mine:
            task.cancel()
        await asyncio.gather(*mine, return_exceptions=True)

    def health(self) -> EngineHealth:
        if self.phase == "loading":
            return EngineHealth("starting", "the model is still loading", self.since)
        if self.phase == "restoring":
            return EngineHealth("starting", "restoring the live deployments", self.since)
        if self.phase == "failed":
            return EngineHealth("failed", self.error or "the engine failed to start", self.since)
        if self.phase == "stopping":
            return EngineHealth("stopping", "the server is shutting down", self.since)
        return self.engine.health()

    # -- internals -------------------------------------------------------------------------
    def _enter(self, phase: Phase) -> None:
        self.phase, self.since = phase, time.time()

    async def _run(self) -> None:
        started = time.monotonic()
        try:
            if self.start_engine:
                await self.engine.start()
        except Exception as exc:
            self.error = f"the engine failed to start: {exc or type(exc).__name__}"
            self._enter("failed")
            logger.exception("%s", self.error)
            await asyncio.sleep(FAILURE_GRACE_S)
            if self.on_failure is not None:
                self.on_failure()
            return
        self._enter("restoring")
        await self._restore()
        self.engine.open()
        self._start_loops()
        self._enter("ready")
        logger.info("ready to serve %.1f s after start-up began", time.monotonic() - started)

    async def _restore(self) -> None:
        """Bring the engine to the store's desired deployments before /health says ready."""
        if self.deployments is None or self.store is None:
            return
        from server.reconciler import Reconciler

        self.reconciler = Reconciler(self.deployments, self.store, self.reconcile_interval_s)
        try:
            await self.reconciler.poll()
        except Exception:
            logger.exception("deployments not reconciled at start; retrying in the background")

    def _start_loops(self) -> None:
        self._tasks.append(asyncio.create_task(self._log_health_changes()))
        if self.reconciler is not None:
            self._tasks.append(asyncio.create_task(self.reconciler.run()))
        if self.training is not None and self.deployments is not None:
            from server.auto_deploy import AutoDeployer

            auto = AutoDeployer(self.training, self.deployments)
            self._tasks.append(asyncio.create_task(auto.run()))


    async def _log_health_changes(self) -> None:
        """A log line when the engine stalls, dies or recovers, whether or not /health is
        polled (its state otherwise only exists when someone asks)."""
        last = "ready"
        while True:
            await asyncio.sleep(WATCH_INTERVAL_S)
            health = self.engine.health()
            if health.state == last:
                continue
            if health.ok:
                logger.warning("engine healthy again (was %s)", last)
            else:
                logger.error("engine %s: %s", health.state, health.message)
            last = health.state


def health_response(health: EngineHealth, running: int, waiting: int) -> JSONResponse:
    """200 ``{"status": "ok", ...}``, or a 503 in OpenAI's error shape that says why and since
    when (plus ``status`` and ``since`` beside ``error``)."""
    if health.ok:
        return JSONResponse({"status": "ok", "running": running, "waiting": waiting})
    code, retry_after = _CODES.get(health.state, ("service_unavailable", 5))
    body = {
        "error": {"message": health.message, "type": "server_error", "param": None,
                  "code": code},
        "status": health.state,
        "since": health.since_text(),
        "running": running,
        "waiting": waiting,
    }
    headers = {"Retry-After": str(retry_after)} if retry_after is not None else None
    return JSONResponse(body, status_code=503, headers=headers)
