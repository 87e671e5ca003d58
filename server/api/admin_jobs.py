"""Admin training routes (admin key only): datasets, jobs, events (SSE), checkpoints. Routes only
delegate to ``TrainingService``. The OpenAI-shaped ``/v1/fine_tuning`` routes: fine_tuning.py."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import StreamingResponse

from contracts.store import TERMINAL
from server.api.deps import AdminScope
from server.errors import InvalidRequestError, PayloadTooLargeError, ServiceUnavailableError
from server.training import TrainingService, checkpoint_view, dataset_view

router = APIRouter()
EVENT_POLL_S = 0.5


def _training(request: Request) -> TrainingService:
    service: TrainingService | None = getattr(request.app.state, "training", None)
    if service is None:
        raise ServiceUnavailableError("training is not enabled on this server")
    return service


Training = Annotated[TrainingService, Depends(_training)]


async def _read_upload(request: Request, limit: int) -> tuple[bytes, str | None, str | None]:
    form = await request.form(max_part_size=limit + 1)
    upload = form.get("file")
    if upload is None or isinstance(upload, str):
        raise InvalidRequestError("multipart field 'file' (a JSONL file) is required", param="file")
    data = await upload.read(limit + 1)
    if len(data) > limit:
        raise PayloadTooLargeError(f"the file exceeds the {limit} byte limit", param="file")
    fmt = form.get("format")
    return data, fmt if isinstance(fmt, str) else None, upload.filename


@router.post("/admin/v1/datasets")
async def upload_dataset(request: Request, _: AdminScope, training: Training) -> dict[str, Any]:
    """Multipart ``file`` (+ optional ``format``), or JSON ``{"path": ..., "format": ...}``."""
    if request.headers.get("content-type", "").startswith("application/json"):
        body = await request.json()
        if not isinstance(body, dict) or not isinstance(body.get("path"), str):
            raise InvalidRequestError("JSON body needs a server-side 'path'", param="path")
        record = await asyncio.to_thread(
            training.import_server_path, body["path"], body.get("format")
        )
    else:
        data, fmt, name = await _read_upload(request, training.max_dataset_bytes)
        record = await asyncio.to_thread(training.upload, data, fmt, name)
    return dataset_view(record)


@router.get("/admin/v1/datasets")
def list_datasets(_: AdminScope, training: Training) -> dict[str, Any]:
    return {"object": "list", "data": [dataset_view(d) for d in training.datasets()]}


@router.post("/admin/v1/jobs")
async def create_job(request: Request, _: AdminScope, training: Training) -> dict[str, Any]:
    body = await json_body(request)
    job = await asyncio.to_thread(training.create_job, body)
    return training.job_view(job)


@router.get("/admin/v1/jobs")
def list_jobs(_: AdminScope, training: Training, limit: int = 100) -> dict[str, Any]:
    return {"object": "list", "data": [j.public() for j in training.jobs(limit)]}


@router.get("/admin/v1/jobs/{job_id}")
def get_job(job_id: str, _: AdminScope, training: Training) -> dict[str, Any]:
    return training.job_view(training.get_job(job_id))


@router.get("/admin/v1/jobs/{job_id}/metrics")
def get_metrics(job_id: str, _: AdminScope, training: Training) -> dict[str, Any]:
    return {"object": "list", "data": training.metrics(job_id)}


@router.post("/admin/v1/jobs/{job_id}/cancel")
def cancel_job(job_id: str, _: AdminScope, training: Training) -> dict[str, Any]:
    return training.job_view(training.cancel(job_id))


@router.get("/admin/v1/jobs/{job_id}/events")
def job_events(
    job_id: str, request: Request, _: AdminScope, training: Training, after: int = 0
) -> StreamingResponse:
    """Server-sent events: one ``data:`` JSON line per event, ``[DONE]`` once the job ended."""
    training.get_job(job_id)
    last = request.headers.get("last-event-id")
    start = int(last) if last and last.isdigit() else after
    return StreamingResponse(_event_stream(training, job_id, start), media_type="text/event-stream")


async def _event_stream(training: TrainingService, job_id: str, after: int) -> AsyncIterator[str]:
    while True:
        job = await asyncio.to_thread(training.get_job, job_id)
        for event in await asyncio.to_thread(training.events, job_id, after):
            after = event.id
            payload = {
                "id": event.id,
                "created_at": event.ts,
                "level": event.level,
                "message": event.message,
                "data": event.data,
            }
            yield f"id: {event.id}\ndata: {json.dumps(payload)}\n\n"
        if job.status in TERMINAL:
            yield "data: [DONE]\n\n"
            return
        await asyncio.sleep(EVENT_POLL_S)


@router.get("/admin/v1/checkpoints")
def list_checkpoints(_: AdminScope, training: Training) -> dict[str, Any]:
    return {"object": "list", "data": [checkpoint_view(c) for c in training.checkpoints()]}


async def json_body(request: Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except ValueError:
        raise InvalidRequestError("the body must be JSON") from None
    if not isinstance(body, dict):
        raise InvalidRequestError("the body must be a JSON object")
    return body
