"""The job spec as JSON Schema, for forms that build a job body (the console's submit form).

The schema is pydantic's own rendering of ``contracts.specs.JobSpec`` (so a field added to a
spec shows up in the form with its default and bounds), plus the one thing pydantic cannot know:
names that are validated against a registry at run time get an ``enum`` of those names, read
from the same registries the validators use.
"""

from __future__ import annotations

import copy
from functools import lru_cache
from typing import Any

from pydantic import TypeAdapter

from align_core import DISTANCE_METRICS, PAIR_LOSSES, POINTWISE_LOSSES, WEIGHTINGS
from contracts.datasets import FORMATS, METHOD_FORMATS
from contracts.specs import METHODS, JobSpec


def _registry_choices() -> dict[str, dict[str, list[str]]]:
    """``{spec model name: {field: valid names}}``: the registry-checked string fields."""
    pair = [n for n, e in PAIR_LOSSES.items() if not e.needs_reward_scores]
    scored = [n for n, e in PAIR_LOSSES.items() if e.needs_reward_scores]
    pointwise = list(POINTWISE_LOSSES.names())
    return {
        "DPOSpec": {"loss": pair},
        "RDPOSpec": {"loss": scored},
        "PointwiseDPOSpec": {"loss": pointwise},
        "ULMASpec": {"loss": pointwise},
        "LDAlignSpec": {"weighting": list(WEIGHTINGS.names()), "distance": list(DISTANCE_METRICS)},
    }


@lru_cache(maxsize=1)
def _job_schema() -> dict[str, Any]:
    schema: dict[str, Any] = TypeAdapter(JobSpec).json_schema()
    defs = schema.get("$defs", {})
    for model, fields in _registry_choices().items():
        properties = defs.get(model, {}).get("properties", {})
        for name, choices in fields.items():
            if name in properties:
                properties[name]["enum"] = choices
    return {
        "object": "job_schema",
        "methods": list(METHODS),
        # A method trains only on datasets stored in these formats (POST /admin/v1/jobs checks).
        "formats": {m: list(f) for m, f in METHOD_FORMATS.items()},
        "dataset_formats": list(FORMATS),  # what an upload may declare (or leave to detection)
        "schema": schema,
    }


def job_schema() -> dict[str, Any]:
    """A fresh copy each call: callers may annotate it without changing the cached one."""
    return copy.deepcopy(_job_schema())
