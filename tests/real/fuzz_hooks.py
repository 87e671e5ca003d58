"""Schemathesis hooks for the schema fuzz of the real server (tests/real/test_schema_fuzz.py),
loaded through ``SCHEMATHESIS_HOOKS=tests.real.fuzz_hooks``.

Generation requests are cut down before they are sent: a generated ``max_tokens: 2000`` with
``n: 128`` would cost the 2-core CPU engine minutes per request, and that is load, not input
validation. Only values past the caps change; negative, zero, wrongly typed and absent values go
out as generated, so everything the server must refuse is still sent.

A generated ``model`` is a random string, so without help no request would get past the 404 to
the engine, whose own parameter checks this pass is for: three in four string ``model`` values
become the served model (``ALIGNSERVE_FUZZ_MODEL``); which ones is decided by the generated
value itself, so a seed still repeats a run.
"""

from __future__ import annotations

import os
from typing import Any

import schemathesis

CAPS = {
    "max_tokens": 8,
    "max_completion_tokens": 8,
    "max_output_tokens": 8,
    "n": 2,
    "best_of": 2,
    "top_logprobs": 5,
    "logprobs": 5,
}
MAX_PROMPTS = 2  # /v1/completions: a list of prompts is one engine request each


def _cap(value: Any) -> Any:
    if isinstance(value, dict):
        return {
            key: (min(item, CAPS[key]) if _is_int(item) and key in CAPS else _cap(item))
            for key, item in value.items()
        }
    return value


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@schemathesis.hook
def before_call(context: schemathesis.HookContext, case: schemathesis.Case, kwargs: Any) -> None:
    body = case.body
    if not isinstance(body, dict):
        return
    body = _cap(body)
    served = os.environ.get("ALIGNSERVE_FUZZ_MODEL")
    model = body.get("model")
    if served and isinstance(model, str) and len(model) % 4 != 0:
        body["model"] = served
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) > MAX_PROMPTS and not all(map(_is_int, prompt)):
        body["prompt"] = prompt[:MAX_PROMPTS]
    case.body = body
