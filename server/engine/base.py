"""The engine interface: what the HTTP layer may ask of a model runtime."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from server.engine.types import EngineStats, GenerationDelta, GenerationRequest, ModelCard
from server.engine.watchdog import EngineHealth

if TYPE_CHECKING:
    from server.engine.deployer import Deployer


class ToolCallParser(Protocol):
    """Reads ``tool_choice: auto`` output of one choice (stateful while streaming)."""

    def extract(self, text: str) -> tuple[str | None, list[dict[str, Any]]]:
        """(content, OpenAI tool calls) of a whole output."""
        ...

    def extract_streaming(
        self,
        previous_text: str,
        current_text: str,
        delta_text: str,
        previous_ids: Sequence[int],
        current_ids: Sequence[int],
        delta_ids: Sequence[int],
    ) -> dict[str, Any] | None:
        """The OpenAI ``delta`` (``content`` and/or ``tool_calls``) for this step, or None."""
        ...


class ChatRenderer(Protocol):
    """Tokenizer-side operations the protocol layer needs (chat templates, counting)."""

    def render_chat(
        self,
        messages: Sequence[Mapping[str, Any]],
        add_generation_prompt: bool,
        tools: Sequence[Mapping[str, Any]] | None = None,
        continue_final_message: bool = False,
    ) -> str:
        """The conversation rendered with the model's chat template (``tools`` passed to
        templates that read them); ``continue_final_message`` leaves the final message open,
        without its end-of-turn, for the model to continue."""
        ...

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` without adding special tokens (templates carry their own)."""
        ...

    def decode(self, ids: Sequence[int]) -> str: ...

    @property
    def default_system_prompt(self) -> str:
        """The system prompt the chat template inserts when a conversation has none ('' if none)."""
        ...

    @property
    def supports_tools(self) -> bool:
        """Whether the chat template renders ``tools`` and tool turns itself."""
        ...

    @property
    def vocab_size(self) -> int: ...

    def tool_parser(self, name: str, tools: Sequence[Mapping[str, Any]]) -> ToolCallParser:
        """A parser (vLLM's tool parser ``name``) for one choice of an ``auto`` request."""
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

    def open(self) -> None:
        """Admit requests from now on (``ready`` before: False). Start-up calls it once the
        engine started and the live deployments are back, so no client meets a 404 for a
        deployment that is still being restored."""
        ...

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

    def health(self) -> EngineHealth:
        """Starting, ready, stalled (requests pending, no output for too long; see
        ``server.engine.watchdog``), dead (the engine core exited) or stopping."""
        ...
