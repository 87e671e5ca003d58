"""The application factory: everything is built here from Settings, nothing at import."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, Request, Response

from contracts.deployments import DeploymentStore
from server.alignment import build_presets
from server.api.admin_align import router as align_router
from server.api.admin_deployments import router as deployments_router
from server.api.admin_jobs import router as admin_jobs_router
from server.api.edge import EdgeMiddleware
from server.api.errors import install_error_handlers
from server.api.files import router as files_router
from server.api.fine_tuning import router as fine_tuning_router
from server.api.generation import GenerationService
from server.api.lifecycle import Startup, health_response
from server.api.openai_routes import router as openai_router
from server.api.rewards import router as rewards_router
from server.auth import KeyRing
from server.console.routes import router as console_router
from server.engine.base import Engine
from server.engine.watchdog import HealthCollector
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
    tool_parser: str | None = None,
    public_docs: bool = False,
) -> FastAPI:
    """Build the service around ``engine``. The engine starts with the app and stops with it;
    so do the training ``workers`` (uvicorn re-raises SIGTERM after the app's shutdown, so code
    after ``uvicorn.run`` never runs on a SIGTERM: stopping them belongs here).

    ``/openapi.json``, ``/docs`` and ``/redoc`` need an admin key unless ``public_docs``
    (docs/security.md).

    Deployments need ``home`` (checkpoints), an engine that can deploy, and ``store``, the
    shared desired state every replica reconciles to under its ``replica_id``.
    """

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # The port opens as soon as this yields: the engine loads, then the live deployments
        # are restored, in the background (server/api/lifecycle.py); /health says which.
        startup: Startup = app.state.startup
        if workers is not None:
            workers.start()
        startup.begin()
        try:
            yield
        finally:
            await startup.stop()
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
    app.state.generation = GenerationService(engine, presets, metrics, rewards, tool_parser)
    app.state.deployments = None
    if home is not None and engine.deployer is not None and store is not None:
        from server.deploy_service import DeploymentService

        app.state.deployments = DeploymentService(
            engine, engine.deployer, home, metrics, store, replica_id
        )
    app.state.training = training  # job store + datasets; None: training routes answer 503
    install_error_handlers(app)
    # Keys are checked here, before any body is read; the route dependencies check them again.
    app.add_middleware(EdgeMiddleware, public_docs=public_docs)
    app.include_router(openai_router)
    app.include_router(console_router)  # before admin_jobs: /admin/v1/jobs/schema
    app.include_router(admin_jobs_router)
    app.include_router(align_router)
    app.include_router(fine_tuning_router)
    app.include_router(files_router)
    app.include_router(deployments_router)
    app.include_router(rewards_router)

    startup = Startup(
        engine, start_engine=start_engine, deployments=app.state.deployments, store=store,
        reconcile_interval_s=reconcile_interval_s, training=training,
    )
    app.state.startup = startup  # the CLI sets startup.on_failure (exit 1)
    metrics.registry.register(HealthCollector(startup.health))

    @app.get("/health")
    async def health() -> Response:
        """200 when the engine serves; 503 while it starts (``Retry-After``), when it stalled,
        died, failed to start or shuts down, with the reason and since when."""
        stats = engine.stats()
        return health_response(startup.health(), stats.running, stats.waiting)

    @app.get("/metrics")
    async def prometheus(request: Request) -> Response:
        return Response(metrics.render(), media_type="text/plain; version=0.0.4")

    return app
