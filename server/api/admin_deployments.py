"""/admin/v1/deployments: put trained checkpoints live, roll back, remove (admin key only).

Changes made through any replica reach every replica on the same store (server/reconciler.py).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from server.api.deps import AdminScope
from server.deploy_service import DeploymentService
from server.errors import NotFoundError, ServiceUnavailableError
from server.names import CHECKPOINT_ID_PATTERN, is_name

router = APIRouter(prefix="/admin/v1/deployments")


class DeploymentRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    checkpoint: str = Field(
        pattern=CHECKPOINT_ID_PATTERN,
        description="Checkpoint id (GET /admin/v1/checkpoints).",
    )
    name: str = Field(
        min_length=1,
        max_length=160,
        pattern=r"^[A-Za-z0-9._:-]+$",  # as the job spec's deploy names (ft:<base>:<sfx>:<id>)
        description="Served name; requests use it as `model` (or `name@version`).",
    )
    mode: Literal["adapter", "full"] = Field(
        default="adapter", description="adapter: LoRA next to the base; full: replace weights."
    )


def _service(request: Request) -> DeploymentService:
    service: DeploymentService | None = getattr(request.app.state, "deployments", None)
    if service is None:
        raise ServiceUnavailableError("deployments are not available on this engine")
    return service


Deployments = Annotated[DeploymentService, Depends(_service)]


def _name(name: str) -> str:
    # Auto-deployed names follow the job spec's pattern, which may differ from the one above:
    # refuse only what can never be a name, as the unknown deployment it is.
    if not is_name(name):
        raise NotFoundError(f"deployment {name!r} not found", param="name")
    return name


DeploymentName = Annotated[str, Depends(_name)]


@router.post("", response_model=None)
async def create(body: DeploymentRequest, service: Deployments, _: AdminScope) -> JSONResponse:
    record = await service.deploy(body.checkpoint, body.name, body.mode)
    status = 201 if record["status"] == "live" else 422
    return JSONResponse(record, status_code=status)


@router.get("")
async def list_all(service: Deployments, _: AdminScope) -> dict[str, Any]:
    """Every version of every deployment (from the shared store, oldest first), each with the
    replicas that report it, and every replica's report under ``replicas``."""
    return {"object": "list", **await service.overview()}


@router.post("/{name}/rollback")
async def rollback(
    name: DeploymentName,
    service: Deployments,
    _: AdminScope,
    version: Annotated[
        int | None,
        Query(ge=1, description="Version to make live; default: the newest one before the live."),
    ] = None,
) -> dict[str, Any]:
    return await service.rollback(name, version)


@router.delete("/{name}")
async def delete(name: DeploymentName, service: Deployments, _: AdminScope) -> dict[str, Any]:
    await service.delete(name)
    return {"name": name, "deleted": True}
