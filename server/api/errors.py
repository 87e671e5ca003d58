"""The one place where errors become HTTP responses in OpenAI's shape. No tracebacks in bodies."""

from __future__ import annotations

import logging
import uuid
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from server.errors import ServiceError, ServiceUnavailableError

logger = logging.getLogger(__name__)


def error_response(
    status: int,
    message: str,
    error_type: str,
    param: str | None = None,
    code: str | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    body = {"error": {"message": message, "type": error_type, "param": param, "code": code}}
    return JSONResponse(body, status_code=status, headers=headers)


def _loc_to_param(loc: tuple[Any, ...]) -> str | None:
    parts = [str(p) for p in loc if p not in ("body", "query", "path")]
    # Drop pydantic's union-branch labels such as 'str' or 'list[str]'.
    parts = [p for p in parts if not (p.startswith(("list[", "function-")) or p in ("str", "int"))]
    return ".".join(parts) or None


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ServiceError)
    async def _service_error(_: Request, exc: ServiceError) -> JSONResponse:
        headers = None
        if isinstance(exc, ServiceUnavailableError):
            headers = {"Retry-After": str(exc.retry_after_s)}
        return error_response(
            exc.status_code, exc.message, exc.error_type, exc.param, exc.code, headers
        )

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {"msg": "invalid request", "loc": ()}
        param = _loc_to_param(tuple(first.get("loc", ())))
        message = str(first.get("msg", "invalid request")).removeprefix("Value error, ")
        if param:
            message = f"{param}: {message}"
        return error_response(400, message, "invalid_request_error", param, None)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        error_type = "invalid_request_error" if exc.status_code < 500 else "server_error"
        return error_response(exc.status_code, str(exc.detail), error_type, None, None)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        error_id = uuid.uuid4().hex[:12]
        logger.error(
            "unhandled error %s on %s %s",
            error_id,
            request.method,
            request.url.path,
            exc_info=exc,
        )
        return error_response(
            500, f"internal server error (id {error_id}); see the server log", "server_error"
        )
