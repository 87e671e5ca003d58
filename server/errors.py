"""Domain errors raised by services, mapped to the OpenAI error shape in api/errors.py."""

from __future__ import annotations


class ServiceError(Exception):
    """Base class: carries the HTTP status and OpenAI error ``type``/``code``."""

    status_code = 500
    error_type = "server_error"
    default_code: str | None = None

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code or self.default_code


class InvalidRequestError(ServiceError):
    status_code = 400
    error_type = "invalid_request_error"


class AuthenticationError(ServiceError):
    status_code = 401
    error_type = "invalid_request_error"
    default_code = "invalid_api_key"


class PermissionDeniedError(ServiceError):
    status_code = 403
    error_type = "invalid_request_error"
    default_code = "insufficient_scope"


class NotFoundError(ServiceError):
    status_code = 404
    error_type = "invalid_request_error"


class ModelNotFoundError(NotFoundError):
    default_code = "model_not_found"


class ConflictError(ServiceError):
    status_code = 409
    error_type = "invalid_request_error"
    default_code = "conflict"


class PayloadTooLargeError(ServiceError):
    status_code = 413
    error_type = "invalid_request_error"
    default_code = "payload_too_large"


class ServiceUnavailableError(ServiceError):
    """The engine is starting, swapping or overloaded; the client should retry."""

    status_code = 503
    error_type = "server_error"
    default_code = "service_unavailable"

    def __init__(self, message: str, *, retry_after_s: int = 5, code: str | None = None):
        super().__init__(message, code=code)
        self.retry_after_s = retry_after_s


class EngineError(ServiceError):
    """The engine failed while serving an otherwise valid request."""

    status_code = 500
    error_type = "server_error"
    default_code = "engine_error"
