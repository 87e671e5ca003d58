"""The edge: what every HTTP request passes before FastAPI reads its body.

FastAPI parses a route's body before it runs the route's dependencies, so the key check of
``deps.py`` alone answers a request without a key with whatever the body parser thinks of its
body, after reading all of it. This ASGI layer finds the route a request is for, asks the same
``authorize`` for the scope that route's dependencies require (401/403 straight away, body
unread), guards the docs pages, and refuses JSON nested deeper than any of our schemas needs
(Python's parsers recurse: a deep enough body is a RecursionError, and a merely deep one makes
every later walk over it slow).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.datastructures import Headers
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from server.api.deps import authorize, route_scope
from server.api.errors import error_response
from server.auth import KeyRing, basic_password
from server.auth import Scope as KeyScope
from server.errors import AuthenticationError, ServiceError

logger = logging.getLogger(__name__)

DOCS_PATHS = frozenset({"/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc"})
MAX_JSON_DEPTH = 64  # our deepest schema (a chat message's content parts) needs under 10
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
_FORM_TYPES = ("multipart/form-data", "application/x-www-form-urlencoded")
_OPEN, _CLOSE = frozenset(b"[{"), frozenset(b"]}")
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")


def json_depth_exceeds(body: bytes, limit: int = MAX_JSON_DEPTH) -> bool:
    """Whether the JSON text ``body`` nests arrays/objects more than ``limit`` deep, without
    parsing it. Escaped backslashes go first, then escaped quotes (a run of backslashes pairs up
    left to right, as JSON reads it); the quotes left delimit strings, whose brackets don't
    count. Everything but the bracket walk runs in C; an invalid body may get any answer and
    then fails to parse anyway."""
    text = body.replace(b"\\\\", b"").replace(b'\\"', b"")
    brackets = b"".join(text.split(b'"')[::2]).translate(None, _NOT_BRACKETS)
    if len(brackets) <= limit:
        return False
    depth = 0
    for byte in brackets:
        if byte in _OPEN:
            depth += 1
            if depth > limit:
                return True
        else:
            depth -= 1
    return False


class EdgeMiddleware:
    """Pure ASGI (no BaseHTTPMiddleware: streams pass through untouched)."""

    def __init__(
        self, app: ASGIApp, public_docs: bool = False, max_json_depth: int = MAX_JSON_DEPTH
    ) -> None:
        self.app = app
        self.public_docs = public_docs
        self.max_json_depth = max_json_depth
        self._scopes: dict[int, KeyScope | None] = {}  # route id -> the scope it requires

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        route, full = self._route(scope)
        try:
            self._authorize(scope, headers, route)
        except ServiceError as exc:
            extra = {}
            if isinstance(exc, AuthenticationError) and scope["path"] in DOCS_PATHS:
                # Lets a browser ask for the key on a page load (docs/security.md).
                extra = {"WWW-Authenticate": 'Basic realm="alignserve"'}
            response = error_response(
                exc.status_code, exc.message, exc.error_type, exc.param, exc.code, extra
            )
            await response(scope, receive, send)
            return
        if full and scope["method"] in _BODY_METHODS and not _is_form(headers):
            body, receive = await _buffered(receive)
            if body is not None and json_depth_exceeds(body, self.max_json_depth):
                logger.info("refused %s %s: JSON nested too deeply", scope["method"],
                            scope["path"])
                response = error_response(
                    400,
                    f"the JSON body is nested too deeply (more than {self.max_json_depth} levels)",
                    "invalid_request_error",
                    code="nested_too_deeply",
                )
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)

    def _route(self, scope: Scope) -> tuple[Any, bool]:
        """The route the router will pick (a full match), else one that matches all but the
        method (the router answers 405 without reading the body), else None."""
        partial = None
        for route in scope["app"].router.routes:
            match, _ = route.matches(scope)
            if match == Match.FULL:
                return route, True
            if match == Match.PARTIAL and partial is None:
                partial = route
        return partial, False

    def _authorize(self, scope: Scope, headers: Headers, route: Any) -> None:
        keyring: KeyRing = scope["app"].state.keyring
        if scope["path"] in DOCS_PATHS:
            if self.public_docs:
                return
            password = basic_password(headers.get("authorization"))
            if password is not None and keyring.scope_of(password) == KeyScope.ADMIN:
                return
            authorize(keyring, headers, KeyScope.ADMIN)
            return
        if route is None:
            return
        if id(route) not in self._scopes:
            self._scopes[id(route)] = route_scope(route)
        required = self._scopes[id(route)]
        if required is not None:
            authorize(keyring, headers, required)


def _is_form(headers: Headers) -> bool:
    return headers.get("content-type", "").lower().startswith(_FORM_TYPES)


async def _buffered(receive: Receive) -> tuple[bytes | None, Callable[[], Awaitable[Message]]]:
    """The whole body (None if the client left first) and a ``receive`` that replays it. The
    routes read JSON bodies whole anyway; only forms stream, and those are not buffered."""
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            replay: list[Message] = [message]
            body = None
            break
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            body = b"".join(chunks)
            replay = [{"type": "http.request", "body": body, "more_body": False}]
            break

    async def replaying() -> Message:
        if replay:
            return replay.pop(0)
        return await receive()

    return body, replaying
