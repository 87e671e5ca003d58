"""The application factory: everything is built here from Settings, nothing at import."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse

from contracts.deployments import DeploymentStore
from server.alignment import build_presets
from server.api.admin_deployments import router as deployments_router
from server.api.admin_jobs import router as admin_jobs_router
from server.api.errors import error_response, install_error_handlers
from server.api.fine_tuning import router as fine_tuning_router
from server.api.generation import GenerationService
from server.api.openai_routes import router as openai_router
from server.api.rewards import router as rewards_router
from server.auth import KeyRing
from server.console.routes import router as console_router
from server.engine.base import Engine
from server.metrics import Metrics
from server.training import TrainingService
from server.workers import WorkerPool

logger = logging.getLogger(__name__)


def create_app(
    engine: Engine,
    keyring: KeyRing,
    presets_file: str | None = None,
    start_engine: bool = True,
    home: Path | None = None,
    training: TrainingService | None = None,
    store: DeploymentStore | None = None,
    replica_id: str = "local",
    reconcile_interval_s: float = 1.0,
    workers: WorkerPool | None = None,
) -> FastAPI:
    """Build the service around ``engine``. The engine starts with the app and stops with it;
    so do the training ``workers`` (uvicorn re-raises SIGTERM after the app's shutdown, so code
    after ``uvicorn.run`` never runs on a SIGTERM: stopping them belongs here).

    Deployments need ``home`` (checkpoints), an engine that can deploy, and ``store``, the
    shared desired state every replica reconciles to under its ``replica_id``.
    """

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if start_engine:
            await engine.start()
        if workers is not None:
            workers.start()
        tasks: list[asyncio.Task[None]] = []
        deployments = app.state.deployments
        if deployments is not None and store is not None:
            from server.reconciler import Reconciler

            reconciler = Reconciler(deployments, store, reconcile_interval_s)
            try:  # before taking requests: a restarted replica serves what is live right away
                await reconciler.poll()
            except Exception:
                logger.exception("deployments not reconciled at start; retrying in the background")
            tasks.append(asyncio.create_task(reconciler.run()))
            app.state.reconciler = reconciler
        if training is not None and deployments is not None:
            from server.auto_deploy import AutoDeployer

            tasks.append(asyncio.create_task(AutoDeployer(training, deployments).run()))
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            if workers is not None:  # SIGTERM lets each save a resume point
                await asyncio.to_thread(workers.stop)
            await engine.shutdown()

    app = FastAPI(title="alignserve", version="0.1.0", lifespan=lifespan)
    metrics = Metrics(engine.stats)
    presets = build_presets(Path(presets_file) if presets_file else None)
    app.state.engine = engine
    app.state.keyring = keyring
    app.state.metrics = metrics
    app.state.presets = presets
    rewards = None
    if home is not None and engine.model_path is not None:
        from server.best_of_n import RewardModels

        rewards = RewardModels(home, engine.model_path)
    app.state.generation = GenerationService(engine, presets, metrics, rewards)
    app.state.deployments = None
    app.state.reconciler = None
    if home is not None and engine.deployer is not None and store is not None:
        from server.deploy_service import DeploymentService

        app.state.deployments = DeploymentService(
            engine, engine.deployer, home, metrics, store, replica_id
        )
    app.state.training = training  # job store + datasets; None: training routes answer 503
    install_error_handlers(app)
    app.include_router(openai_router)
    app.include_router(console_router)  # before admin_jobs: /admin/v1/jobs/schema
    app.include_router(admin_jobs_router)
    app.include_router(fine_tuning_router)
    app.include_router(deployments_router)
    app.include_router(rewards_router)

    @app.get("/health")
    async def health() -> Response:
        if not engine.ready:
            return error_response(
                503,
                "the engine is not ready",
                "server_error",
                code="service_unavailable",
                headers={"Retry-After": "5"},
            )
        stats = engine.stats()
        return JSONResponse({"status": "ok", "running": stats.running, "waiting": stats.waiting})

    @app.get("/metrics")
    async def prometheus(request: Request) -> Response:
        return Response(metrics.render(), media_type="text/plain; version=0.0.4")

    return app
