"""Read-only admin routes the web console needs besides the existing admin API (admin key only):
the job spec's JSON schema, the principle presets, a checkpoint's manifest, and the runs
``alignserve eval`` wrote. Nothing here changes state.

``/admin/v1/jobs/schema`` shares its prefix with ``/admin/v1/jobs/{job_id}``: this router must be
included before the jobs router (server/console/__init__.py does; a unit test checks).
"""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import FileResponse

from server.api.admin_jobs import Training
from server.api.deps import AdminScope
from server.console.evaluations import EvaluationRuns
from server.console.schema import job_schema
from server.errors import NotFoundError
from server.training import checkpoint_view

router = APIRouter(prefix="/admin/v1")


def _runs(training: Training) -> EvaluationRuns:
    return EvaluationRuns(training.home)


Runs = Annotated[EvaluationRuns, Depends(_runs)]


@router.get("/jobs/schema")
def get_job_schema(_: AdminScope) -> dict[str, Any]:
    """JSON Schema of a job body (one entry per method under ``oneOf``), with each method's
    dataset formats and the valid names of registry-checked fields as ``enum``."""
    return job_schema()


@router.get("/presets")
def list_presets(request: Request, _: AdminScope) -> dict[str, Any]:
    presets = request.app.state.presets
    return {"object": "list", "data": [
        {"name": name, "description": p.description, "text": p.text,
         "needs_preference": p.needs_preference}
        for name, p in presets.items()
    ]}


@router.get("/checkpoints/{checkpoint_id}/manifest")
def get_manifest(checkpoint_id: str, _: AdminScope, training: Training) -> dict[str, Any]:
    record = training.store.get_checkpoint(checkpoint_id)
    if record is None:
        raise NotFoundError(f"checkpoint '{checkpoint_id}' not found", param="checkpoint_id")
    return {**checkpoint_view(record), "gate": training.gate_result(record.job_id),
            "manifest": record.manifest}


@router.get("/evaluations")
async def list_evaluations(_: AdminScope, runs: Runs) -> dict[str, Any]:
    return {"object": "list", "data": await asyncio.to_thread(runs.list)}


@router.get("/evaluations/{run}")
async def get_evaluation(run: str, _: AdminScope, runs: Runs) -> dict[str, Any]:
    return await asyncio.to_thread(runs.get, run)


@router.get("/evaluations/{run}/charts/{name}")
def get_chart(run: str, name: str, _: AdminScope, runs: Runs) -> FileResponse:
    # no-store: an admin-only image must not stay in a shared browser's cache.
    return FileResponse(runs.chart(run, name), media_type="image/png",
                        headers={"Cache-Control": "no-store"})
