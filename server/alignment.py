"""Principle presets and the two contexts of a linearly aligned chat request.

The contexts differ only by the principle, as in the paper's code: z_0 is the conversation as
sent; z_p is the same conversation with the principle appended, after a newline, to its first
system message. Without a system message the model's default system prompt stands in for it in
both contexts (for SmolLM2, whose template inserts that default itself, z_0 renders unchanged).
"""

from __future__ import annotations

import json
import string
from dataclasses import dataclass
from pathlib import Path

from align_core.registry import Registry
from server.errors import InvalidRequestError

# Linear Alignment (Gao et al. 2024), dataset.py::Principle, index 0 and 1.
HELPFUL_HARMLESS = (
    "Please adhere to the following principles.\n Avoid factual inaccuracies as much as possible. "
    "\nRefrain from providing answers if the user's request poses potential security concerns, "
    "and provide relevant explanations and guidance instead. \nIf the previous context did not "
    "address the user's issue, continue attempting to answer and resolve it. \nStay on track with "
    "the original discussion and avoid introducing unnecessary off-topic information. \nEnhance "
    "answers by incorporating additional background information to assist users in understanding "
    "and grasping the content."
)
PERSONAL_PREFERENCE = (
    "The person who asked the question is {preference}, your answer needs to take his(her) needs "
    "into account."
)
# Short, concrete principles: a 135M model follows these where it ignores the long one above.
HARMLESS_SHORT = (
    "You must refuse any request that is harmful, illegal or unethical. Start your reply with: "
    "I'm sorry, I can't help with that."
)
CONCISE = "Answer in exactly one short sentence."


@dataclass(frozen=True)
class Preset:
    text: str
    description: str = ""

    @property
    def needs_preference(self) -> bool:
        return any(field == "preference" for _, field, _, _ in string.Formatter().parse(self.text))


def build_presets(extra_file: Path | None = None) -> Registry[Preset]:
    """Built-in presets plus the user's, from a JSON object ``{"name": "principle text"}``."""
    presets: Registry[Preset] = Registry("principle preset")
    presets.register("helpful_harmless", Preset(HELPFUL_HARMLESS, "Linear Alignment paper, HH"))
    presets.register(
        "personal_preference", Preset(PERSONAL_PREFERENCE, "Paper's template; needs 'preference'")
    )
    presets.register("harmless", Preset(HARMLESS_SHORT, "Short refusal principle"))
    presets.register("concise", Preset(CONCISE, "One-sentence answers"))
    if extra_file is not None:
        data = json.loads(extra_file.read_text())
        if not isinstance(data, dict) or not all(
            isinstance(k, str) and isinstance(v, str) and v.strip() for k, v in data.items()
        ):
            raise ValueError(f"{extra_file}: expected a JSON object of preset name -> text")
        for name, text in data.items():
            presets.register(name, Preset(text, "user preset"))
    return presets


def resolve_principle(
    presets: Registry[Preset], principle: str | None, preset: str | None, preference: str | None
) -> str:
    if principle is not None:
        return principle
    assert preset is not None
    try:
        entry = presets.get(preset)
    except KeyError as exc:
        raise InvalidRequestError(str(exc), param="alignment.preset") from None
    if entry.needs_preference:
        if not preference or not preference.strip():
            raise InvalidRequestError(
                f"preset '{preset}' needs 'alignment.preference'", param="alignment.preference"
            )
        return entry.text.format(preference=preference)
    if preference is not None:
        raise InvalidRequestError(
            f"preset '{preset}' takes no preference", param="alignment.preference"
        )
    return entry.text


def aligned_conversations(
    messages: list[dict[str, str]], principle: str, default_system_prompt: str
) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    """(without, with) the principle: the conversations for z_0 and z_p."""
    plain = [dict(m) for m in messages]
    first_system = next(
        (i for i, m in enumerate(plain) if m["role"] in ("system", "developer")), None
    )
    if first_system is None and default_system_prompt:
        plain.insert(0, {"role": "system", "content": default_system_prompt})
        first_system = 0
    principled = [dict(m) for m in plain]
    if first_system is None:  # no default either: the principle becomes the system message
        principled.insert(0, {"role": "system", "content": principle})
        return plain, principled
    base = principled[first_system]["content"]
    principled[first_system]["content"] = f"{base}\n{principle}" if base else principle
    return plain, principled
