"""Typed FastAPI dependencies: services from app state, and API-key scopes."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.datastructures import Headers

from server.api.generation import GenerationService
from server.auth import KeyRing, Scope, request_key
from server.errors import AuthenticationError, PermissionDeniedError


def authorize(keyring: KeyRing, headers: Headers, required: Scope) -> Scope:
    """The scope the request's key grants; 401 without a valid key, 403 below ``required``.
    The route dependency and the edge middleware (server/api/edge.py) both call this, so a key
    means the same thing before and after the body is read."""
    token = request_key(headers.get("authorization"), headers.get("x-api-key"))
    granted = keyring.scope_of(token)
    if granted is None:
        if token is None:
            raise AuthenticationError(
                "Missing API key: send 'Authorization: Bearer <key>'.", code="missing_api_key"
            )
        raise AuthenticationError("Incorrect API key provided.")
    if granted < required:
        raise PermissionDeniedError("This endpoint needs an admin key.")
    return granted


# Only declares the scheme in the OpenAPI document (Swagger's "Authorize" button, the fuzz
# test's auth); ``authorize`` reads the headers itself (it also takes X-API-Key).
_bearer = HTTPBearer(auto_error=False, description="An API key: user or admin scope.")
Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]


class _Require:
    """The dependency of a scope. ``required_scope`` lets the edge middleware find a route's
    scope without running it (route_scope below)."""

    def __init__(self, scope: Scope) -> None:
        self.required_scope = scope

    def __call__(self, request: Request, _: Credentials = None) -> Scope:
        return authorize(request.app.state.keyring, request.headers, self.required_scope)


UserScope = Annotated[Scope, Depends(_Require(Scope.USER))]
AdminScope = Annotated[Scope, Depends(_Require(Scope.ADMIN))]


def route_scope(route: Any) -> Scope | None:
    """The highest scope any dependency of ``route`` requires (None: an open route)."""
    found: Scope | None = None
    pending = list(getattr(getattr(route, "dependant", None), "dependencies", ()))
    while pending:
        dependant = pending.pop()
        scope = getattr(dependant.call, "required_scope", None)
        if isinstance(scope, Scope) and (found is None or scope > found):
            found = scope
        pending.extend(dependant.dependencies)
    return found


def _generation(request: Request) -> GenerationService:
    service: GenerationService = request.app.state.generation
    return service


Generation = Annotated[GenerationService, Depends(_generation)]
