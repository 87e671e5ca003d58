"""``response_format`` and ``logit_bias`` -> engine sampling fields, checked against the model.

Both are applied by vLLM to the logits before sampling (the grammar's mask first, then the
bias), on every row of a guidance group alike: see docs/linear_alignment.md ("With the OpenAI
surface") for why the combined row then respects them.
"""

from __future__ import annotations

import json

from server.api.messages import ResponseFormat
from server.engine.types import StructuredOutput
from server.errors import InvalidRequestError


def response_grammar(response_format: ResponseFormat | None) -> StructuredOutput | None:
    """``text`` (or none): free text. ``json_object``: any JSON object. ``json_schema``: the
    schema, enforced whatever ``strict`` says (a grammar cannot half-enforce)."""
    if response_format is None or response_format.type == "text":
        return None
    if response_format.type == "json_object":
        return StructuredOutput("json_object")
    assert response_format.json_schema is not None
    schema = response_format.json_schema.schema_or_any()
    return StructuredOutput("json_schema", json.dumps(schema, ensure_ascii=False))


def checked_logit_bias(
    items: tuple[tuple[int, float], ...], vocab_size: int
) -> tuple[tuple[int, float], ...]:
    """Token ids must exist in the served model's vocabulary (ranges were checked by pydantic)."""
    unknown = sorted(token for token, _ in items if token >= vocab_size)
    if unknown:
        shown = ", ".join(str(t) for t in unknown[:5])
        raise InvalidRequestError(
            f"logit_bias names token ids outside the vocabulary (size {vocab_size}): {shown}",
            param="logit_bias",
        )
    return items
