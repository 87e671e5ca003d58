"""Which weights answer which model name: the base model, adapter and full-weight versions.

Owned by the API process's event loop (lookups at admission and every change run there), so an
alias moves atomically with respect to admission: a request is bound to exactly one version when
it is admitted and keeps it to its last token.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from server.engine.types import ModelCard
from server.errors import ModelNotFoundError

Mode = Literal["base", "adapter", "full"]
State = Literal["staged", "live", "retired", "failed"]


@dataclass(eq=False)
class ModelVersion:
    name: str
    version: int
    mode: Mode
    path: Path
    lora_id: int | None = None
    state: State = "staged"
    inflight: int = 0
    loaded: bool = False
    created: int = 0

    @property
    def label(self) -> str:
        return self.name if self.mode == "base" else f"{self.name}@{self.version}"


@dataclass
class DeploymentTable:
    base: ModelVersion
    aliases: dict[str, ModelVersion] = field(default_factory=dict)
    versions: dict[str, ModelVersion] = field(default_factory=dict)
    history: dict[str, list[ModelVersion]] = field(default_factory=dict)  # live order
    next_lora_id: int = 1

    def __post_init__(self) -> None:
        self.weights: ModelVersion = self.base  # whose weights the base model runs now

    @property
    def weights_label(self) -> str:
        return self.weights.label

    def label_for(self, version: ModelVersion) -> str:
        """What produced a response: the version, plus the base weights under an adapter when
        a full deployment replaced them (``ad@2+fw@1``)."""
        if version.mode == "base" or version.mode == "full":
            return self.weights.label
        if self.weights is self.base:
            return version.label
        return f"{version.label}+{self.weights.label}"

    def lookup(self, model: str, allow_staged: bool = False) -> ModelVersion:
        """The version a request for ``model`` runs on now (``name``, ``name@k`` or the base)."""
        if model == self.base.name:
            return self.base
        found = self.versions.get(model) if "@" in model else self.aliases.get(model)
        usable = found is not None and (
            found.state == "live"
            or (allow_staged and found.state == "staged")
            or (found.mode == "adapter" and found.state == "retired" and found.loaded)
        )
        if found is not None and found.mode == "full" and found is not self.weights:
            usable = allow_staged and found.state == "staged"
        if not usable or found is None:
            raise ModelNotFoundError(
                f"The model '{model}' does not exist or is not live. Available models: "
                f"{', '.join(card.id for card in self.cards())}.",
                param="model",
            )
        return found

    def new_version(
        self, name: str, mode: Mode, path: Path, created: int, number: int | None = None
    ) -> ModelVersion:
        """A staged version. ``number`` comes from the durable deployment records (so numbers
        never restart); without it, one past the highest number this table has seen."""
        if name == self.base.name:
            raise ValueError(f"'{name}' is the base model's name")
        if number is None:
            number = 1 + max(
                (v.version for v in self.versions.values() if v.name == name), default=0
            )
        else:
            known = self.versions.get(f"{name}@{number}")
            if known is not None and known.state != "failed":
                raise ValueError(f"version {name}@{number} already exists")
        version = ModelVersion(name, number, mode, path, created=created)
        if mode == "adapter":
            version.lora_id = self.next_lora_id
            self.next_lora_id += 1
        self.versions[version.label] = version
        return version

    def make_live(self, version: ModelVersion) -> ModelVersion | None:
        """Point ``name`` at ``version``; returns the version it replaces."""
        previous = self.aliases.get(version.name)
        if previous is not None and previous is not version:
            previous.state = "retired"
        version.state = "live"
        self.aliases[version.name] = version
        self.history.setdefault(version.name, []).append(version)
        return previous

    def cards(self) -> list[ModelCard]:
        base = self.base
        cards = [ModelCard(id=base.name, root=str(base.path), version=None, created=base.created)]
        for name, live in sorted(self.aliases.items()):
            cards.append(
                ModelCard(
                    id=name,
                    root=base.name,
                    parent=base.name,
                    version=live.version,
                    created=live.created,
                )
            )
            for v in sorted(self.versions.values(), key=lambda v: v.version):
                if v.name == name and (v.state == "live" or (v.mode == "adapter" and v.loaded)):
                    cards.append(
                        ModelCard(
                            id=v.label,
                            root=base.name,
                            parent=name,
                            version=v.version,
                            created=v.created,
                        )
                    )
        return cards
