"""OpenAI's fine-tuning API: ``/v1/fine_tuning/jobs`` (create, list, retrieve, cancel, pause,
resume, events, checkpoints). Routes only delegate to ``FineTuningService``.

Which keys may call it (and ``/v1/files``) is ``ALIGNSERVE_FINE_TUNING_SCOPE``: ``user`` (the
default: any key, as with OpenAI) or ``admin``. Every allowed key sees every job: jobs have no
owner here.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request

from server.api.admin_jobs import Training
from server.api.deps import UserScope
from server.api.fine_tuning_protocol import FineTuningJobRequest
from server.api.fine_tuning_service import FineTuningService, served_base_name
from server.auth import Scope
from server.errors import PermissionDeniedError

router = APIRouter(prefix="/v1/fine_tuning/jobs")


def _scope(granted: UserScope, training: Training) -> Scope:
    if granted < training.fine_tuning_scope:
        raise PermissionDeniedError(
            "Fine-tuning and files need an admin key on this server "
            "(ALIGNSERVE_FINE_TUNING_SCOPE=admin)."
        )
    return granted


TrainingScope = Annotated[Scope, Depends(_scope)]


def _service(request: Request, training: Training) -> FineTuningService:
    base = served_base_name(training, request.app.state.engine)
    deployable = getattr(request.app.state, "deployments", None) is not None
    return FineTuningService(training, deployable, base)


FineTuning = Annotated[FineTuningService, Depends(_service)]


@router.post("")
def create_job(body: FineTuningJobRequest, _: TrainingScope, service: FineTuning) -> dict[str, Any]:
    return service.create(body)


@router.get("")
def list_jobs(
    _: TrainingScope, service: FineTuning, after: str | None = None, limit: int = 20
) -> dict[str, Any]:
    return service.list(after, limit)


@router.get("/{job_id}")
def retrieve_job(job_id: str, _: TrainingScope, service: FineTuning) -> dict[str, Any]:
    return service.view(service.training.get_job(job_id))


@router.post("/{job_id}/cancel")
def cancel_job(job_id: str, _: TrainingScope, service: FineTuning) -> dict[str, Any]:
    return service.view(service.training.cancel(job_id))


@router.post("/{job_id}/pause")
def pause_job(job_id: str, _: TrainingScope, service: FineTuning) -> dict[str, Any]:
    """A queued job pauses at once; a running one after its next step, with a resume point."""
    return service.view(service.training.pause(job_id))


@router.post("/{job_id}/resume")
def resume_job(job_id: str, _: TrainingScope, service: FineTuning) -> dict[str, Any]:
    return service.view(service.training.resume(job_id))


@router.get("/{job_id}/events")
def list_events(
    job_id: str, _: TrainingScope, service: FineTuning, after: str | None = None,
    limit: int = 20,
) -> dict[str, Any]:
    return service.events(job_id, after, limit)


@router.get("/{job_id}/checkpoints")
def list_checkpoints(
    job_id: str, _: TrainingScope, service: FineTuning, after: str | None = None,
    limit: int = 10,
) -> dict[str, Any]:
    return service.checkpoints(job_id, after, limit)
