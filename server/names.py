"""What a request may use as an id or a name (job, dataset, checkpoint, deployment, model):
short and printable. A NUL byte, another control character or a lone surrogate is never part
of a real name, and each breaks something further in (a path, the PostgreSQL driver, the JSON
encoder of the answer), so they are refused where the request comes in."""

from __future__ import annotations

MAX_NAME_CHARS = 256
# For pydantic fields (its Rust strings refuse lone surrogates before the pattern runs).
NAME_PATTERN = r"^[^\x00-\x1f\x7f]+$"


def is_name(value: str) -> bool:
    return 0 < len(value) <= MAX_NAME_CHARS and value.isprintable()
# Checkpoint ids name folders (<home>/checkpoints/<id>): ours are "ckpt-" and 16 hex digits;
# short ASCII without '/' can never be a path of its own nor pass a file system's name limit.
CHECKPOINT_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$"
