"""/v1 routes: thin, they only delegate to the generation service."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from server.api.deps import Generation, UserScope
from server.api.generation import GenerationService, Prepared
from server.api.protocol import ChatCompletionRequest, CompletionRequest
from server.engine.types import ModelCard
from server.errors import ModelNotFoundError, ServiceError

router = APIRouter(prefix="/v1")

_SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
VERSION_HEADER = "X-Alignserve-Model-Version"
DISCONNECT_POLL_S = 0.5


@router.post("/chat/completions", response_model=None)
async def chat_completions(
    body: ChatCompletionRequest, service: Generation, _: UserScope, request: Request
) -> Response:
    return await _respond(service, service.prepare_chat(body), body.stream, request)


@router.post("/completions", response_model=None)
async def completions(
    body: CompletionRequest, service: Generation, _: UserScope, request: Request
) -> Response:
    return await _respond(service, service.prepare_completion(body), body.stream, request)


async def _respond(
    service: GenerationService, prepared: Prepared, stream: bool, request: Request
) -> Response:
    if stream:
        events, version = await service.open_stream(prepared)
        return StreamingResponse(
            events,
            media_type="text/event-stream",
            headers={**_SSE_HEADERS, VERSION_HEADER: version},
        )
    work = asyncio.ensure_future(service.complete(prepared))
    while True:
        done, _pending = await asyncio.wait({work}, timeout=DISCONNECT_POLL_S)
        if done:
            body, version = work.result()
            return JSONResponse(body, headers={VERSION_HEADER: version})
        if await request.is_disconnected():
            # Nobody will read the answer: stop generating it (cancelling aborts the engine
            # requests). 499 is what proxies log for a client that closed the request.
            work.cancel()
            return Response(status_code=499)


@router.get("/models")
async def list_models(request: Request, _: UserScope) -> dict[str, Any]:
    cards = request.app.state.engine.model_cards()
    return {"object": "list", "data": [_model_object(c) for c in cards]}


# ``:path``: served names may hold '/' (a folder-like name) and '@' (a pinned version).
@router.get("/models/{model_id:path}")
async def retrieve_model(model_id: str, request: Request, _: UserScope) -> dict[str, Any]:
    engine = request.app.state.engine
    cards = engine.model_cards()
    card = next((c for c in cards if c.id == model_id), None)
    if card is None:
        # A pinned version that is servable but not listed (an older adapter, not loaded now).
        try:
            engine.resolve_model(model_id)
        except ServiceError:
            raise ModelNotFoundError(
                f"The model '{model_id}' does not exist.", param="model"
            ) from None
        name, _at, version = model_id.rpartition("@")
        base = cards[0] if cards else None
        card = ModelCard(
            id=model_id,
            root=base.id if base is not None else model_id,
            parent=name or None,
            version=int(version) if name and version.isdigit() else None,
            max_model_len=engine.max_model_len,
        )
    return _model_object(card)


def _model_object(c: ModelCard) -> dict[str, Any]:
    return {
        "id": c.id,
        "object": "model",
        "created": c.created,
        "owned_by": "alignserve",
        "root": c.root,
        "parent": c.parent,
        "version": c.version,
        "max_model_len": c.max_model_len,
    }
