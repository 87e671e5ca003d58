"""Typed FastAPI dependencies: services from app state, and API-key scopes."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated

from fastapi import Depends, Request

from server.api.generation import GenerationService
from server.auth import KeyRing, Scope, bearer_token
from server.errors import AuthenticationError, PermissionDeniedError


def _require(scope: Scope) -> Callable[[Request], Scope]:
    def check(request: Request) -> Scope:
        keyring: KeyRing = request.app.state.keyring
        token = bearer_token(request.headers.get("authorization"))
        if token is None:
            token = request.headers.get("x-api-key")
        granted = keyring.scope_of(token)
        if granted is None:
            if token is None:
                raise AuthenticationError(
                    "Missing API key: send 'Authorization: Bearer <key>'.", code="missing_api_key"
                )
            raise AuthenticationError("Incorrect API key provided.")
        if granted < scope:
            raise PermissionDeniedError("This endpoint needs an admin key.")
        return granted

    return check


UserScope = Annotated[Scope, Depends(_require(Scope.USER))]
AdminScope = Annotated[Scope, Depends(_require(Scope.ADMIN))]


def _generation(request: Request) -> GenerationService:
    service: GenerationService = request.app.state.generation
    return service


Generation = Annotated[GenerationService, Depends(_generation)]
