"""The engine interface: what the HTTP layer may ask of a model runtime."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from server.engine.types import EngineStats, GenerationDelta, GenerationRequest, ModelCard

if TYPE_CHECKING:
    from server.engine.deployer import Deployer


class ChatRenderer(Protocol):
    """Tokenizer-side operations the protocol layer needs (chat templates, counting)."""

    def render_chat(self, messages: Sequence[dict[str, str]], add_generation_prompt: bool) -> str:
        """The conversation rendered with the model's chat template."""
        ...

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` without adding special tokens (templates carry their own)."""
        ...

    @property
    def default_system_prompt(self) -> str:
        """The system prompt the chat template inserts when a conversation has none ('' if none)."""
        ...


@runtime_checkable
class Engine(Protocol):
    """An inference runtime serving one base model and its deployments."""

    @property
    def ready(self) -> bool: ...

    @property
    def max_model_len(self) -> int: ...

    @property
    def model_path(self) -> Path | None:
        """The served base model's folder (None for engines without one)."""
        ...

    @property
    def max_lora_rank(self) -> int: ...

    @property
    def deployer(self) -> Deployer | None:
        """Hot-swap of deployments (None for an engine that cannot deploy)."""
        ...

    @property
    def renderer(self) -> ChatRenderer: ...

    async def start(self) -> None: ...

    async def shutdown(self) -> None: ...

    def model_cards(self) -> list[ModelCard]: ...

    def resolve_model(self, name: str) -> str:
        """The canonical served name for ``name``; raises ModelNotFoundError if unknown."""
        ...

    def generate(self, request: GenerationRequest) -> AsyncIterator[list[GenerationDelta]]:
        """Stream deltas (a list: one per choice that advanced) until every choice finished.

        Cancelling the iteration aborts the request in the engine.
        """
        ...

    async def abort(self, request_id: str) -> None: ...

    def stats(self) -> EngineStats: ...
