"""What one evaluation run asks the server for: configurations and the shared sampling settings.

A configuration is a model name plus what a client can add to a chat request: a system message
and the ``alignment`` extension (sent through ``extra_body``). Its key hashes everything that
changes the answers (the name is only a label), so renaming a configuration reuses its results
and changing alpha does not. A deployment name is pinned to the version it serves when a run starts
(``runner.pin_versions``), so a retrained adapter under the same name gets fresh answers.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

_CONFIG_FIELDS = {"name", "model", "alignment", "system", "best_of_n", "temperature"}


class ConfigError(ValueError):
    """A configuration or config file is malformed; the message says which field."""


@dataclass(frozen=True)
class SamplingParams:
    """Run-level decoding settings, the same for every configuration (greedy by default)."""

    max_tokens: int = 96
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0
    top_logprobs: int | None = None  # the judge reads the first token's alternatives


@dataclass(frozen=True)
class EvalConfig:
    name: str
    model: str
    alignment: Mapping[str, Any] | None = field(default=None, hash=False)
    system: str | None = None
    best_of_n: Mapping[str, Any] | None = field(default=None, hash=False)  # {"n", "reward_model"}
    temperature: float | None = None  # overrides the run's (Best-of-N needs sampling)
    # Creation time of the adapter version ``model`` was pinned to (``runner.pin_versions``):
    # version numbers are per home, so this keeps two homes' "name@1" apart in one results file.
    revision: int | None = None

    def key(self, sampling: SamplingParams) -> str:
        """12 hex digits of sha256 over the answer-relevant fields (not the name)."""
        payload: dict[str, Any] = {
            "model": self.model,
            "alignment": dict(self.alignment) if self.alignment is not None else None,
            "system": self.system,
            "sampling": sampling.__dict__,
        }
        # Only when set, so the keys (and stored answers) of other configurations stay valid.
        if self.best_of_n is not None:
            payload["best_of_n"] = dict(self.best_of_n)
        if self.temperature is not None:
            payload["temperature"] = self.temperature
        if self.revision is not None:
            payload["revision"] = self.revision
        canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:12]

    def messages(self, prompt: str) -> list[dict[str, str]]:
        user = {"role": "user", "content": prompt}
        return [{"role": "system", "content": self.system}, user] if self.system else [user]

    def extra_body(self) -> dict[str, Any] | None:
        body: dict[str, Any] = {}
        if self.alignment is not None:
            body["alignment"] = dict(self.alignment)
        if self.best_of_n is not None:
            body["best_of_n"] = dict(self.best_of_n)
        return body or None

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "model": self.model, "alignment": self.extra_body(),
                "system": self.system, "temperature": self.temperature}


def config_from_dict(data: Mapping[str, Any], default_model: str | None = None) -> EvalConfig:
    """Build a config from ``{"name", "model"?, "alignment"?, "system"?}``; unknown keys fail."""
    unknown = sorted(set(data) - _CONFIG_FIELDS)
    if unknown:
        raise ConfigError(f"unknown config key(s) {unknown}; valid: {sorted(_CONFIG_FIELDS)}")
    name = data.get("name")
    if not isinstance(name, str) or not name.strip():
        raise ConfigError("every config needs a non-empty 'name'")
    model = data.get("model", default_model)
    if not isinstance(model, str) or not model:
        raise ConfigError(f"config {name!r}: 'model' is missing (or give --model)")
    alignment = data.get("alignment")
    if alignment is not None and not isinstance(alignment, dict):
        raise ConfigError(f"config {name!r}: 'alignment' must be a JSON object")
    system = data.get("system")
    if system is not None and not isinstance(system, str):
        raise ConfigError(f"config {name!r}: 'system' must be a string")
    best_of_n = data.get("best_of_n")
    if best_of_n is not None and not isinstance(best_of_n, dict):
        raise ConfigError(f"config {name!r}: 'best_of_n' must be a JSON object")
    temperature = data.get("temperature")
    if temperature is not None and (
        isinstance(temperature, bool) or not isinstance(temperature, int | float)
    ):
        raise ConfigError(f"config {name!r}: 'temperature' must be a number")
    return EvalConfig(
        name=name, model=model, alignment=alignment, system=system, best_of_n=best_of_n,
        temperature=float(temperature) if temperature is not None else None,
    )


def parse_alignment(text: str | None) -> dict[str, Any] | None:
    """``--alignment '{"preset": "harmless", "alpha": 3}'`` -> dict (validated by the server)."""
    if text is None:
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"--alignment is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise ConfigError("--alignment must be a JSON object")
    return value


def parse_config_arg(text: str, default_model: str | None) -> EvalConfig:
    """``name=JSON`` (the JSON may hold model, alignment, system) -> config."""
    name, sep, body = text.partition("=")
    if not sep or not name.strip():
        raise ConfigError(f"--config expects name=JSON, got {text!r}")
    try:
        data = json.loads(body) if body.strip() else {}
    except json.JSONDecodeError as exc:
        raise ConfigError(f"--config {name}: invalid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"--config {name}: the JSON must be an object")
    return config_from_dict({"name": name.strip(), **data}, default_model)


def load_config_file(path: Path, default_model: str | None) -> list[EvalConfig]:
    """A JSON list of configs, or ``{"configs": [...]}``."""
    data = json.loads(path.read_text())
    items = data.get("configs") if isinstance(data, dict) else data
    if not isinstance(items, list) or not items:
        raise ConfigError(f"{path}: expected a non-empty list of configs")
    return [config_from_dict(item, default_model) for item in items]


def standard_configs(
    model: str,
    principle: Mapping[str, str],
    alphas: Sequence[float] = (1.0, 3.0, 5.0),
    checkpoints: Iterable[str] = (),
    checkpoint_alpha: float = 3.0,
    reward_models: Iterable[str] = (),
    best_of: int = 4,
    best_of_temperature: float = 0.7,
) -> list[EvalConfig]:
    """The comparison table's rows: base, principle in prompt, LA per alpha, checkpoints (+LA),
    and Best-of-N with each reward model (``reward_models``: AfD checkpoint ids).

    ``principle`` is ``{"preset": name}`` or ``{"principle": text}``. "Principle in prompt" is
    alignment with alpha 0: the server decodes from z_p alone, the very context linear alignment
    uses (the principle appended to the model's default system prompt), without knowing that
    prompt on the client side. With greedy decoding the nucleus filter cannot change the argmax.
    """
    rows = [
        EvalConfig("base", model),
        EvalConfig("principle in prompt", model, {**principle, "alpha": 0.0}),
    ]
    rows += [EvalConfig(f"LA alpha={a:g}", model, {**principle, "alpha": float(a)}) for a in alphas]
    for ckpt in checkpoints:
        rows.append(EvalConfig(f"{ckpt}", ckpt))
        rows.append(EvalConfig(f"{ckpt} + LA alpha={checkpoint_alpha:g}", ckpt,
                               {**principle, "alpha": float(checkpoint_alpha)}))
    for reward in reward_models:  # AfD: the base policy, N samples, the reward model picks
        rows.append(EvalConfig(
            f"best-of-{best_of} ({reward})", model,
            best_of_n={"n": best_of, "reward_model": reward}, temperature=best_of_temperature,
        ))
    check_unique(rows)
    return rows


def check_unique(configs: Sequence[EvalConfig]) -> None:
    names = [c.name for c in configs]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ConfigError(f"duplicate configuration name(s): {dupes}")
