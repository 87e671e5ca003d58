"""Admin training routes (admin key only): datasets, jobs, events (SSE), checkpoints. Routes only
delegate to ``TrainingService``. The OpenAI-shaped ``/v1/fine_tuning`` routes: fine_tuning.py."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import StreamingResponse
from starlette.datastructures import FormData
from starlette.exceptions import HTTPException

from contracts.store import TERMINAL
from server.api.deps import AdminScope
from server.errors import InvalidRequestError, PayloadTooLargeError, ServiceUnavailableError
from server.training import MAX_LIST_LIMIT, TrainingService, dataset_view

router = APIRouter()
EVENT_POLL_S = 0.5
# Multipart uploads: the file streams to a spooled temporary file; every other part is held in
# memory whole, so those stay small and few.
MAX_FORM_FIELD_BYTES = 64 * 1024
MAX_FORM_FIELDS = 8
MAX_FORM_FILES = 1
MAX_EVENT_ID = 2**63 - 1  # the store's integer column
ListLimit = Annotated[
    int, Query(ge=1, le=MAX_LIST_LIMIT, description=f"At most this many, 1..{MAX_LIST_LIMIT}.")
]


def _training(request: Request) -> TrainingService:
    service: TrainingService | None = getattr(request.app.state, "training", None)
    if service is None:
        raise ServiceUnavailableError("training is not enabled on this server")
    return service


Training = Annotated[TrainingService, Depends(_training)]


async def read_form(request: Request) -> FormData:
    """The multipart form of ``request`` within the limits above (400 past a count, 413 past a
    field's size), for every route that takes a multipart upload."""
    content_type = request.headers.get("content-type", "")
    if not content_type.lower().startswith("multipart/form-data"):
        raise InvalidRequestError("the body must be multipart/form-data")
    try:
        return await request.form(
            max_files=MAX_FORM_FILES, max_fields=MAX_FORM_FIELDS, max_part_size=MAX_FORM_FIELD_BYTES
        )
    except HTTPException as exc:  # Starlette's words for a refused form; ours say the limits
        limits = (f"at most {MAX_FORM_FILES} file and {MAX_FORM_FIELDS} other fields of "
                  f"{MAX_FORM_FIELD_BYTES // 1024} KiB each")
        if "maximum size" in str(exc.detail):
            raise PayloadTooLargeError(f"a multipart field is too large: {limits}") from None
        raise InvalidRequestError(f"invalid multipart form ({exc.detail}): {limits}") from None


async def _read_upload(request: Request, limit: int) -> tuple[bytes, str | None, str | None]:
    if not request.headers.get("content-type", "").lower().startswith("multipart/form-data"):
        raise InvalidRequestError(
            "send the dataset as multipart/form-data (a 'file' part) or as JSON {\"path\": ...}"
        )
    form = await read_form(request)
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
    if request.headers.get("content-type", "").lower().startswith("application/json"):
        body = await json_body(request)
        path, fmt = body.get("path"), body.get("format")
        if not isinstance(path, str):
            raise InvalidRequestError(
                "JSON body needs 'path', a file inside the server's import folder", param="path"
            )
        if fmt is not None and not isinstance(fmt, str):
            raise InvalidRequestError("'format' must be a string", param="format")
        record = await asyncio.to_thread(training.import_server_path, path, fmt)
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
def list_jobs(_: AdminScope, training: Training, limit: ListLimit = 100) -> dict[str, Any]:
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
    job_id: str,
    request: Request,
    _: AdminScope,
    training: Training,
    after: Annotated[int, Query(ge=0, le=MAX_EVENT_ID)] = 0,
) -> StreamingResponse:
    """Server-sent events: one ``data:`` JSON line per event, ``[DONE]`` once the job ended."""
    training.get_job(job_id)
    last = request.headers.get("last-event-id", "")
    # isdecimal() alone lets through digits int() refuses ("²") or the store overflows on.
    valid = last.isascii() and last.isdecimal() and int(last) <= MAX_EVENT_ID
    start = int(last) if valid else after
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
def list_checkpoints(
    _: AdminScope,
    training: Training,
    limit: Annotated[int | None, Query(ge=1, le=MAX_LIST_LIMIT)] = None,
) -> dict[str, Any]:
    """Newest first: all of them, or the newest ``limit``."""
    return {"object": "list", "data": training.checkpoint_views(limit)}


async def json_body(request: Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except ValueError:  # also invalid UTF-8
        raise InvalidRequestError("the body must be JSON") from None
    except RecursionError:  # the edge refuses deep bodies first (server/api/edge.py)
        raise InvalidRequestError("the JSON body is nested too deeply") from None
    if not isinstance(body, dict):
        raise InvalidRequestError("the body must be a JSON object")
    return body
