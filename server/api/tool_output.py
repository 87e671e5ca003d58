"""Model output -> OpenAI ``tool_calls``, whole (responses) or as stream deltas.

Named and ``required`` calls were decoded under a grammar (``server/api/tools.py``); their text
is read here with a small JSON scanner that also works on an unfinished prefix, so streaming
sends each call's ``id``/``type``/``function.name`` once and its ``arguments`` piece by piece,
exactly the text the model wrote (a response carries the same strings). ``auto`` output goes
through the configured vLLM tool parser (``server/engine/tool_parsing.py``).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from server.api.tools import ToolPlan
from server.engine.base import ToolCallParser


def call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


@dataclass
class PartialCall:
    name: str | None = None
    arguments: str = ""  # raw JSON text of the value, possibly unfinished


def scan_call_array(text: str) -> list[PartialCall]:
    """The calls in (a prefix of) ``[{"name": "f", "arguments": {...}}, ...]``, in order.

    A character scanner rather than a JSON parser so that a prefix gives what is known so far:
    a call's name once its string closed, its arguments as the raw text written up to here.
    Keys may come in either order; other keys are skipped.
    """
    calls: list[PartialCall] = []
    depth = 0  # 1: inside the array, 2: inside a call object
    in_string = escaped = False
    string_start = 0
    key: str | None = None  # the last key read at depth 2
    expecting_key = False
    reading: str | None = None  # the key whose value is being read at depth 2
    value_start = -1
    for i, ch in enumerate(text):
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
                if depth == 2:
                    literal = text[string_start : i + 1]
                    if expecting_key:
                        key, expecting_key = json.loads(literal), False
                    elif reading == "name":
                        calls[-1].name, reading = json.loads(literal), None
                    elif reading == "arguments" and value_start == string_start:
                        calls[-1].arguments, reading = literal, None
        elif ch == '"':
            in_string, string_start = True, i
            if depth == 2 and reading == "arguments" and value_start < 0:
                value_start = i
        elif ch in "[{":
            depth += 1
            if depth == 2 and ch == "{":
                calls.append(PartialCall())
                expecting_key, reading = True, None
            elif depth == 3 and reading == "arguments" and value_start < 0:
                value_start = i
        elif ch in "]}":
            if depth == 2 and reading == "arguments" and value_start >= 0:  # a bare literal
                calls[-1].arguments, reading = text[value_start:i], None
            depth -= 1
            if depth == 2 and reading == "arguments":
                calls[-1].arguments, reading = text[value_start : i + 1], None
        elif depth == 2:
            if ch == ":":
                reading, key, value_start = key, None, -1
            elif ch == ",":
                if reading == "arguments" and value_start >= 0:
                    calls[-1].arguments = text[value_start:i]
                reading, expecting_key = None, True
            elif reading == "arguments" and value_start < 0 and not ch.isspace():
                value_start = i
        if reading == "arguments" and value_start >= 0:  # unfinished: what is written so far
            calls[-1].arguments = text[value_start : i + 1]
    return calls


def whole_calls(plan: ToolPlan, text: str, parser: ToolCallParser | None
                ) -> tuple[str | None, list[dict[str, Any]]]:
    """(content, tool_calls) of a finished choice."""
    if plan.mode == "auto":
        assert parser is not None
        return parser.extract(text)
    if plan.mode == "named":
        return None, [_call(call_id(), plan.function or "", text)]
    calls = [c for c in scan_call_array(text) if c.name is not None]
    if not calls:  # cut off before a name was complete: return what there is as text
        return text, []
    return None, [_call(call_id(), c.name or "", c.arguments) for c in calls]


def _call(cid: str, name: str, arguments: str) -> dict[str, Any]:
    return {"id": cid, "type": "function", "function": {"name": name, "arguments": arguments}}


@dataclass
class ToolCallStream:
    """One choice's output -> the ``delta`` objects of its stream chunks."""

    plan: ToolPlan
    parser: ToolCallParser | None = None
    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    called: bool = False
    _ids: list[str] = field(default_factory=list)  # per call index, once its header went out
    _sent: list[str] = field(default_factory=list)  # argument text sent per call

    def feed(self, text: str, token_ids: Sequence[int]) -> list[dict[str, Any]]:
        previous, previous_ids = self.text, list(self.token_ids)
        self.text += text
        self.token_ids.extend(token_ids)
        if self.plan.mode == "auto":
            assert self.parser is not None
            delta = self.parser.extract_streaming(
                previous, self.text, text, previous_ids, self.token_ids, token_ids
            )
            if delta is not None and delta.get("tool_calls"):
                self.called = True
            return [delta] if delta is not None else []
        if self.plan.mode == "named":
            calls = [PartialCall(self.plan.function, self.text)]
        else:
            calls = scan_call_array(self.text)
        return [{"tool_calls": items}] if (items := self._diff(calls)) else []

    def _diff(self, calls: list[PartialCall]) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = []
        for index, call in enumerate(calls):
            if call.name is None:
                break  # a later call cannot be announced before this one
            if index == len(self._ids):
                self._ids.append(call_id())
                self._sent.append(call.arguments)
                self.called = True
                items.append({"index": index, "id": self._ids[index], "type": "function",
                              "function": {"name": call.name, "arguments": call.arguments}})
                continue
            new = call.arguments[len(self._sent[index]):]
            if new:
                self._sent[index] = call.arguments
                items.append({"index": index, "function": {"arguments": new}})
        return items
