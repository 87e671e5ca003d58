"""OpenAI's Files API for fine-tuning: ``/v1/files`` (upload, list, retrieve, delete, content).

A file is a training dataset (``contracts/datasets.py``): an upload is validated whole, with the
line and field of the first error in the 400, before anything is stored; its id is the dataset
id the admin API shows. Only ``purpose=fine-tune`` is stored. A file that a queued, running or
paused job trains on cannot be deleted (409). ``content`` returns the bytes as uploaded.
"""

from __future__ import annotations

import asyncio
from pathlib import PurePosixPath, PureWindowsPath
from typing import Any, Literal

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse

from contracts.datasets import upload_path
from contracts.store import DatasetRecord
from server.api.admin_jobs import Training, read_form
from server.api.fine_tuning import TrainingScope
from server.errors import InvalidRequestError, NotFoundError, PayloadTooLargeError

router = APIRouter(prefix="/v1/files")
PURPOSE = "fine-tune"
MAX_LIST = 10_000  # OpenAI's bound on ?limit=
MAX_FILENAME = 255


def file_view(record: DatasetRecord) -> dict[str, Any]:
    try:
        size = upload_path(record).stat().st_size
    except OSError:
        size = record.bytes
    return {
        "id": record.id,
        "object": "file",
        "bytes": size,
        "created_at": int(record.created_at),
        "filename": record.filename or f"{record.id}.jsonl",
        "purpose": PURPOSE,
        "status": "processed",  # validated at upload: there is no later processing
        "expires_at": None,
        "status_details": None,
        # -- alignserve extensions --
        "format": record.format,
        "records": record.records,
    }


def clean_filename(name: str | None) -> str | None:
    """The upload's base name, printable (a NUL would break PostgreSQL), at most 255 chars."""
    if not name:
        return None
    base = PureWindowsPath(PurePosixPath(name).name).name
    printable = "".join(c for c in base if c.isprintable())[:MAX_FILENAME]
    return printable or None


@router.post("")
async def create_file(request: Request, _: TrainingScope, training: Training) -> dict[str, Any]:
    limit = training.max_dataset_bytes
    if not request.headers.get("content-type", "").lower().startswith("multipart/form-data"):
        raise InvalidRequestError("send the file as multipart/form-data ('file' and 'purpose' "
                                  "parts)", param="file")
    form = await read_form(request)  # the admin upload's limits on every other part
    purpose = form.get("purpose")
    if not isinstance(purpose, str):
        raise InvalidRequestError("multipart field 'purpose' is required ('fine-tune')",
                                  param="purpose")
    if purpose != PURPOSE:
        raise InvalidRequestError(
            f"purpose {purpose[:40]!r} is not supported: this server stores files for "
            "fine-tuning only (purpose 'fine-tune')", param="purpose", code="invalid_purpose")
    upload = form.get("file")
    if upload is None or isinstance(upload, str):
        raise InvalidRequestError("multipart field 'file' (a JSONL file) is required",
                                  param="file")
    data = await upload.read(limit + 1)
    if len(data) > limit:
        raise PayloadTooLargeError(f"the file exceeds the {limit} byte limit", param="file")
    fmt = form.get("format")  # extension: force one of our formats instead of detecting it
    record = await asyncio.to_thread(
        training.upload, data, fmt if isinstance(fmt, str) else None,
        clean_filename(upload.filename),
    )
    return file_view(record)


@router.get("")
def list_files(
    _: TrainingScope, training: Training, purpose: str | None = None, limit: int = MAX_LIST,
    order: Literal["asc", "desc"] = "desc", after: str | None = None,
) -> dict[str, Any]:
    if not 1 <= limit <= MAX_LIST:
        raise InvalidRequestError(f"limit must be between 1 and {MAX_LIST}", param="limit",
                                  code="invalid_limit")
    records = training.datasets()  # newest first
    if order == "asc":
        records.reverse()
    if purpose is not None and purpose != PURPOSE:
        records = []
    if after is not None:
        ids = [r.id for r in records]
        if after not in ids:
            raise InvalidRequestError(f"no file {after[:64]!r} to list after", param="after",
                                      code="file_not_found")
        records = records[ids.index(after) + 1:]
    data = [file_view(r) for r in records[:limit]]
    return {"object": "list", "data": data, "has_more": len(records) > limit,
            "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None}


@router.get("/{file_id}")
def retrieve_file(file_id: str, _: TrainingScope, training: Training) -> dict[str, Any]:
    return file_view(training.dataset(file_id))


@router.delete("/{file_id}")
def delete_file(file_id: str, _: TrainingScope, training: Training) -> dict[str, Any]:
    record = training.delete_dataset(file_id)
    return {"id": record.id, "object": "file", "deleted": True}


@router.get("/{file_id}/content", response_model=None)
def file_content(file_id: str, _: TrainingScope, training: Training) -> FileResponse:
    record = training.dataset(file_id)
    path = upload_path(record)
    if not path.is_file():  # deleted since the lookup
        raise NotFoundError(f"No such file: {file_id!r}", param="file_id", code="file_not_found")
    name = record.filename or f"{record.id}.jsonl"
    return FileResponse(path, media_type="application/octet-stream", filename=name)
