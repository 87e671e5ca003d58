"""The engine interface the HTTP layer talks to, and its implementations."""

from server.engine.base import Engine
from server.engine.types import (
    AlignmentParams,
    EngineStats,
    GenerationDelta,
    GenerationRequest,
    ModelCard,
    SamplingOptions,
    TokenLogprob,
)

__all__ = [
    "AlignmentParams",
    "Engine",
    "EngineStats",
    "GenerationDelta",
    "GenerationRequest",
    "ModelCard",
    "SamplingOptions",
    "TokenLogprob",
]
