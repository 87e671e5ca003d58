"""Training datasets: JSONL formats, validation with line-numbered errors, atomic import.

Formats (one JSON object per line):

* ``pairs``: ``prompt`` or ``messages``, ``chosen``, ``rejected`` (strings).
* ``openai_preference``: OpenAI preference fine-tuning, ``input.messages``,
  ``preferred_output`` and ``non_preferred_output`` (lists with one assistant message). Stored as
  ``pairs``.
* ``openai_chat``: OpenAI supervised fine-tuning, ``messages`` ending with an assistant message,
  which becomes the completion (earlier assistant turns are context). Stored as
  ``demonstrations``.
* ``pointwise``: ``prompt``/``messages``, ``completion``, ``label`` (bool, or a number for
  continuous labels).
* ``demonstrations``: ``prompt``/``messages``, ``completion``.
* ``prompts``: ``prompt``/``messages``; optional ``kind``: ``harmful`` or ``benign`` (``align``).

Every stored record carries ``messages`` (a prompt string becomes one user message; OpenAI's
``developer`` role becomes ``system``, and content given as a list of text parts is joined). A
file is validated completely before anything is written; it is then written to a temporary file and
renamed to ``home/datasets/<id>.jsonl``, and only then registered in the store. The uploaded bytes
are kept beside it (``<id>.upload``) so that ``GET /v1/files/{id}/content`` returns what was sent.

A line that is not JSON, not valid Unicode (a lone surrogate such as ``"\\ud800"``), nested too
deeply to parse, or holds a number too long to convert is refused with its line number, like any
other malformed line: parsing never raises anything but ``DatasetError``.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from contracts.store import DatasetRecord, JobStore, new_id

DEFAULT_MAX_BYTES = 64 * 1024 * 1024
FORMATS = ("pairs", "openai_preference", "openai_chat", "pointwise", "demonstrations", "prompts")
ROLES = ("system", "user", "assistant")
ROLE_ALIASES = {"developer": "system"}  # OpenAI's newer name for the system role
UPLOAD_SUFFIX = ".upload"
# What each method trains on (stored formats; openai_preference is stored as pairs).
METHOD_FORMATS: dict[str, tuple[str, ...]] = {
    "dpo": ("pairs",),
    "pointwise_dpo": ("pointwise",),
    "ulma": ("pointwise",),
    "rdpo": ("prompts", "pairs", "demonstrations"),
    "ld_align": ("demonstrations",),
    "afd": ("demonstrations",),
    "align": ("prompts",),
    "sft": ("demonstrations",),
    "reward_model": ("pairs",),
}


class DatasetError(ValueError):
    """A dataset was refused. ``line`` (1-based) and ``field`` say where, when known."""

    def __init__(self, message: str, line: int | None = None, field: str | None = None):
        where = f"line {line}: " if line is not None else ""
        where += f"field '{field}': " if field is not None else ""
        super().__init__(where + message)
        self.line, self.field = line, field


class DatasetTooLargeError(DatasetError):
    pass


def _unicode(value: str, line: int, key: str) -> str:
    """``value`` if it can be written as UTF-8: JSON's ``\\ud800`` escapes parse to lone
    surrogates, which no stored file (and no tokenizer) can hold."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:
        raise DatasetError(
            f"not valid Unicode (lone surrogate {value[e.start]!a} at character {e.start})",
            line, key,
        ) from None
    return value


def _text(rec: dict[str, Any], key: str, line: int) -> str:
    if key not in rec:
        raise DatasetError("missing required field", line, key)
    value = rec[key]
    if not isinstance(value, str):
        raise DatasetError(f"must be a string, got {type(value).__name__}", line, key)
    if not value.strip():
        raise DatasetError("must not be empty", line, key)
    return _unicode(value, line, key)


def _content(value: Any, line: int, key: str) -> str:
    """A message's content: a string, or OpenAI's list of ``{"type": "text", "text": ...}``
    parts (joined; other part types cannot be trained on here)."""
    if isinstance(value, str):
        return _unicode(value, line, key)
    if isinstance(value, list) and value:
        texts = []
        for i, part in enumerate(value):
            if not isinstance(part, dict) or part.get("type") != "text":
                raise DatasetError("only text parts are supported", line, f"{key}[{i}]")
            if not isinstance(part.get("text"), str):
                raise DatasetError("must be a string", line, f"{key}[{i}].text")
            texts.append(_unicode(part["text"], line, f"{key}[{i}].text"))
        return "".join(texts)
    raise DatasetError("must be a string (or a list of text parts)", line, key)


def _messages(value: Any, line: int, key: str) -> list[dict[str, str]]:
    if not isinstance(value, list) or not value:
        raise DatasetError("must be a non-empty list of messages", line, key)
    out = []
    for i, msg in enumerate(value):
        where = f"{key}[{i}]"
        if not isinstance(msg, dict):
            raise DatasetError("must be an object with 'role' and 'content'", line, where)
        role = msg.get("role")
        role = ROLE_ALIASES.get(role, role) if isinstance(role, str) else role
        if role not in ROLES:
            raise DatasetError(f"role must be one of {', '.join(ROLES)}", line, f"{where}.role")
        out.append({"role": role, "content": _content(msg.get("content"), line,
                                                      f"{where}.content")})
    return out


def _prompt(rec: dict[str, Any], line: int) -> list[dict[str, str]]:
    if "messages" in rec:
        return _messages(rec["messages"], line, "messages")
    if "prompt" in rec:
        return [{"role": "user", "content": _text(rec, "prompt", line)}]
    raise DatasetError("missing required field (or 'messages')", line, "prompt")


def _assistant_text(value: Any, line: int, key: str) -> str:
    msgs = _messages(value, line, key)
    if len(msgs) != 1 or msgs[0]["role"] != "assistant":
        raise DatasetError("must hold exactly one assistant message", line, key)
    return msgs[0]["content"]


def _pairs(rec: dict[str, Any], line: int) -> dict[str, Any]:
    """``chosen_score`` / ``rejected_score`` (optional, together): external scores of the two
    answers, which rDPO's soft-label loss uses instead of running its scorer (principle
    distillation knows which answer a prompt's kind calls for; a scorer sees only text)."""
    out: dict[str, Any] = {
        "messages": _prompt(rec, line),
        "chosen": _text(rec, "chosen", line),
        "rejected": _text(rec, "rejected", line),
    }
    scored = [k for k in ("chosen_score", "rejected_score") if k in rec]
    if len(scored) == 1:
        missing = "rejected_score" if scored[0] == "chosen_score" else "chosen_score"
        raise DatasetError(f"needed with {scored[0]!r}", line, missing)
    for key in scored:
        out[key] = _score(rec[key], line, key)
    return out


def _score(value: Any, line: int, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise DatasetError(f"must be a finite number, got {value!r:.40}", line, key)
    try:  # an integer past float's range overflows: refused like NaN
        number = float(value)
    except OverflowError:
        number = math.nan
    if not math.isfinite(number):
        raise DatasetError(f"must be a finite number, got {value!r:.40}", line, key)
    return number


def _openai_preference(rec: dict[str, Any], line: int) -> dict[str, Any]:
    inp = rec.get("input")
    if not isinstance(inp, dict):
        raise DatasetError("missing required object", line, "input")
    if "messages" not in inp:
        raise DatasetError("missing required field", line, "input.messages")
    for key in ("preferred_output", "non_preferred_output"):
        if key not in rec:
            raise DatasetError("missing required field", line, key)
    return {
        "messages": _messages(inp["messages"], line, "input.messages"),
        "chosen": _assistant_text(rec["preferred_output"], line, "preferred_output"),
        "rejected": _assistant_text(rec["non_preferred_output"], line, "non_preferred_output"),
    }


def _openai_chat(rec: dict[str, Any], line: int) -> dict[str, Any]:
    if "messages" not in rec:
        raise DatasetError("missing required field", line, "messages")
    msgs = _messages(rec["messages"], line, "messages")
    last = len(msgs) - 1
    if msgs[last]["role"] != "assistant":
        raise DatasetError("the last message must be the assistant's answer to train on",
                           line, f"messages[{last}].role")
    if last == 0:
        raise DatasetError("needs at least one message before the assistant's answer",
                           line, "messages")
    if not msgs[last]["content"].strip():
        raise DatasetError("must not be empty", line, f"messages[{last}].content")
    return {"messages": msgs[:last], "completion": msgs[last]["content"]}


def _pointwise(rec: dict[str, Any], line: int) -> dict[str, Any]:
    out = _demonstrations(rec, line)
    if "label" not in rec:
        raise DatasetError("missing required field", line, "label")
    label = rec["label"]
    if isinstance(label, bool):
        out["label"] = 1.0 if label else 0.0
        return out
    try:  # an integer past float's range overflows: refused like NaN
        value = float(label) if isinstance(label, int | float) else math.nan
    except OverflowError:
        value = math.nan
    if not math.isfinite(value):
        raise DatasetError(f"must be a bool or a finite number, got {label!r:.40}", line, "label")
    out["label"] = value
    return out


def _demonstrations(rec: dict[str, Any], line: int) -> dict[str, Any]:
    return {"messages": _prompt(rec, line), "completion": _text(rec, "completion", line)}


PROMPT_KINDS = ("harmful", "benign")


def _prompts(rec: dict[str, Any], line: int) -> dict[str, Any]:
    """``kind`` (optional): ``harmful`` or ``benign``, what principle distillation (``align``)
    needs to know which behaviour a prompt calls for."""
    out: dict[str, Any] = {"messages": _prompt(rec, line)}
    if "kind" in rec:
        if rec["kind"] not in PROMPT_KINDS:
            raise DatasetError(f"must be one of {', '.join(PROMPT_KINDS)}", line, "kind")
        out["kind"] = rec["kind"]
    return out


_PARSERS: dict[str, Callable[[dict[str, Any], int], dict[str, Any]]] = {
    "pairs": _pairs,
    "openai_preference": _openai_preference,
    "openai_chat": _openai_chat,
    "pointwise": _pointwise,
    "demonstrations": _demonstrations,
    "prompts": _prompts,
}


def stored_format(fmt: str) -> str:
    return {"openai_preference": "pairs", "openai_chat": "demonstrations"}.get(fmt, fmt)


def detect_format(rec: dict[str, Any]) -> str:
    """Guess the format from the keys of the first record."""
    if "preferred_output" in rec or "input" in rec:
        return "openai_preference"
    if "chosen" in rec or "rejected" in rec:
        return "pairs"
    if "label" in rec:
        return "pointwise"
    if "completion" in rec:
        return "demonstrations"
    if _ends_with_assistant(rec.get("messages")):
        return "openai_chat"
    return "prompts"


def _ends_with_assistant(messages: Any) -> bool:
    return (isinstance(messages, list) and bool(messages) and isinstance(messages[-1], dict)
            and messages[-1].get("role") == "assistant")


def parse_jsonl(data: bytes, fmt: str | None = None) -> tuple[str, list[dict[str, Any]]]:
    """Validate a whole JSONL file; return its (stored) format and canonical records.

    Raises:
        DatasetError: with the 1-based line and the field at fault.
    """
    if fmt is not None and fmt not in FORMATS:
        raise DatasetError(f"unknown format {fmt!r}; valid: {', '.join(FORMATS)}")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise DatasetError("not valid UTF-8", line) from None
    records: list[dict[str, Any]] = []
    for number, raw in enumerate(text.splitlines(), 1):
        if not raw.strip():
            continue
        rec = _load_line(raw, number)
        if not isinstance(rec, dict):
            raise DatasetError("each line must be a JSON object", number)
        fmt = fmt or detect_format(rec)
        records.append(_PARSERS[fmt](rec, number))
    if not records:
        raise DatasetError("the file is empty: no JSON records", 1)
    assert fmt is not None
    return stored_format(fmt), records


def _load_line(raw: str, number: int) -> Any:
    """One JSONL line; every way ``json.loads`` can fail becomes a line-numbered refusal."""
    try:
        return json.loads(raw)
    except json.JSONDecodeError as e:
        raise DatasetError(f"invalid JSON ({e.msg} at column {e.colno})", number) from None
    except RecursionError:
        raise DatasetError("invalid JSON (nested too deeply)", number) from None
    except ValueError as e:  # e.g. an integer longer than Python converts (4300 digits)
        raise DatasetError(f"invalid JSON ({e})", number) from None


def _write_atomic(folder: Path, name: str, body: bytes) -> Path:
    target = folder / name
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(body)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


def upload_path(record: DatasetRecord) -> Path:
    """The bytes as uploaded (datasets imported before uploads were kept: the stored file)."""
    original = Path(record.path).with_suffix(UPLOAD_SUFFIX)
    return original if original.is_file() else Path(record.path)


def remove_files(record: DatasetRecord) -> None:
    """Delete a dataset's files (after its row left the store)."""
    Path(record.path).with_suffix(UPLOAD_SUFFIX).unlink(missing_ok=True)
    Path(record.path).unlink(missing_ok=True)


def import_dataset(
    store: JobStore,
    home: Path,
    data: bytes,
    fmt: str | None = None,
    filename: str | None = None,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> DatasetRecord:
    """Validate ``data`` fully, write it atomically under ``home/datasets`` and register it."""
    if len(data) > max_bytes:
        raise DatasetTooLargeError(f"the file is {len(data)} bytes; the limit is {max_bytes}")
    stored, records = parse_jsonl(data, fmt)
    body = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode()
    dataset_id = new_id("ds")
    folder = Path(home) / "datasets"
    folder.mkdir(parents=True, exist_ok=True)
    target = _write_atomic(folder, f"{dataset_id}.jsonl", body)
    try:
        _write_atomic(folder, f"{dataset_id}{UPLOAD_SUFFIX}", data)
    except BaseException:
        target.unlink(missing_ok=True)
        raise
    record = DatasetRecord(
        id=dataset_id, format=stored, path=str(target), records=len(records),
        sha256=hashlib.sha256(body).hexdigest(), bytes=len(body), filename=filename,
        created_at=time.time(),
    )
    try:
        store.add_dataset(record)
    except BaseException:
        remove_files(record)
        raise
    return record


def import_path(
    store: JobStore, home: Path, path: Path, fmt: str | None = None,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> DatasetRecord:
    """Import a server-side JSONL file (``{"path": ...}`` in the API; the CLI)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise DatasetError(f"no such file: {path}", field="path")
    if path.stat().st_size > max_bytes:
        raise DatasetTooLargeError(f"{path} is {path.stat().st_size} bytes; limit {max_bytes}")
    return import_dataset(store, home, path.read_bytes(), fmt, path.name, max_bytes)


def load_records(path: str | Path) -> list[dict[str, Any]]:
    """Read a stored (already validated) dataset."""
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]
