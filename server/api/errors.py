"""The one place where errors become HTTP responses in OpenAI's shape. No tracebacks in bodies.

Every error body goes through :func:`error_response`, which bounds what it quotes: messages and
params often quote the request (a model name, a key of the body), and a 1 MB ``model`` must not
come back as a 1 MB error, nor a lone surrogate break the JSON encoder of the error itself.
"""

from __future__ import annotations

import errno
import logging
import uuid
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from server.errors import ServiceError, ServiceUnavailableError
from server.names import CHECKPOINT_ID_PATTERN, NAME_PATTERN

logger = logging.getLogger(__name__)

MAX_MESSAGE_CHARS = 400  # longer messages keep their head and tail around an ellipsis
MESSAGE_TAIL_CHARS = 120  # the tail often says what to do ("...; valid names: a, b")
MAX_PARAM_CHARS = 200
ELLIPSIS = "…"


def excerpt(text: str, limit: int = MAX_PARAM_CHARS, tail: int = 0) -> str:
    """``text`` as a client may see it again: encodable (lone surrogates become ``\\ud800``) and
    at most ``limit`` characters plus an ellipsis, keeping the last ``tail`` of them."""
    text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    if len(text) <= limit:
        return text
    head = limit - tail
    return text[:head] + ELLIPSIS + (text[-tail:] if tail else "")


def error_response(
    status: int,
    message: str,
    error_type: str,
    param: str | None = None,
    code: str | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    body = {
        "error": {
            "message": excerpt(message, MAX_MESSAGE_CHARS, MESSAGE_TAIL_CHARS),
            "type": error_type,
            "param": None if param is None else excerpt(param),
            "code": code,
        }
    }
    return JSONResponse(body, status_code=status, headers=headers)


def _loc_to_param(loc: tuple[Any, ...]) -> str | None:
    parts = [str(p) for p in loc if p not in ("body", "query", "path")]
    # Drop pydantic's union-branch labels such as 'str' or 'list[str]'.
    parts = [p for p in parts if not (p.startswith(("list[", "function-")) or p in ("str", "int"))]
    return ".".join(parts) or None


def _validation_message(first: dict[str, Any]) -> tuple[str, str | None]:
    if first.get("type") == "json_invalid":  # its loc is a character offset, not a field
        reason = (first.get("ctx") or {}).get("error")
        return "the body is not valid JSON" + (f" ({reason})" if reason else ""), None
    param = _loc_to_param(tuple(first.get("loc", ())))
    message = str(first.get("msg", "invalid request")).removeprefix("Value error, ")
    pattern = (first.get("ctx") or {}).get("pattern")
    if pattern == NAME_PATTERN:
        message = "must be a name without control characters (such as NUL)"
    elif pattern == CHECKPOINT_ID_PATTERN:
        message = "must be a checkpoint id: letters, digits, '.', '_', ':', '-', at most 128"
    return (f"{param}: {message}" if param else message), param


def _input_fault(exc: BaseException) -> str | None:
    """A message when ``exc`` can only have come from what the client sent: the safety net for
    input that a route's validation let through (each such case should still be fixed where it
    is raised; the warning log line names it)."""
    if isinstance(exc, UnicodeEncodeError) and "surrogate" in str(exc):
        return "the request contains invalid Unicode (a lone surrogate such as \\ud800)"
    if isinstance(exc, UnicodeError):
        return "the request contains text that is not valid Unicode"
    if isinstance(exc, RecursionError):
        return "the request is nested too deeply"
    if isinstance(exc, ValueError) and ("null byte" in str(exc) or "null character" in str(exc)):
        return "the request contains a NUL character where a name or path is expected"
    if isinstance(exc, OSError) and exc.errno == errno.ENAMETOOLONG:
        return "a name in the request is too long to be a file name"
    return None


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
        message, param = _validation_message(first)
        return error_response(400, message, "invalid_request_error", param, None)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        error_type = "invalid_request_error" if exc.status_code < 500 else "server_error"
        return error_response(exc.status_code, str(exc.detail), error_type, None, None)

    # Registered per class (not under Exception) so they answer without dropping the
    # connection; anything that is not an input fault goes on to the 500 handler below.
    async def _input_error(request: Request, exc: Exception) -> JSONResponse:
        message = _input_fault(exc)
        if message is None:
            raise exc
        logger.warning(
            "input fault on %s %s reached the safety net: %s",
            request.method,
            request.url.path,
            message,
            exc_info=exc,
        )
        return error_response(400, message, "invalid_request_error", None, "invalid_input")

    for fault in (UnicodeError, RecursionError, ValueError, OSError):
        app.add_exception_handler(fault, _input_error)

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
