"""A small name -> entry registry, one per call signature (pair losses, point-wise losses,
weightings, principle presets); a duplicate name is an error, an unknown name lists the valid ones.

Trainers and config validation read the valid names from a registry instead of typing lists of
names by hand. Each registry stores frozen dataclass entries that carry the function and its
capability flags (e.g. ``needs_reference``), so a training loop branches on flags, never on a
loss's name.

Example::

    PAIR_LOSSES: Registry[PairLoss] = Registry("pair loss")
    PAIR_LOSSES.register("dpo", PairLoss(fn=dpo_loss, ...))
    PAIR_LOSSES.get("dpo").needs_reference     # True
    PAIR_LOSSES.get("dop")                      # UnknownNameError: lists the valid names
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Generic, TypeVar

T = TypeVar("T")


class DuplicateNameError(ValueError):
    """Raised when a name is registered twice in the same registry."""


class UnknownNameError(KeyError, ValueError):
    """Raised for a name that is not registered; the message lists the valid names.

    It is both a ``KeyError`` (a failed lookup) and a ``ValueError`` (bad config value), so
    callers and validators can catch whichever they expect.
    """

    def __str__(self) -> str:
        # KeyError.__str__ would wrap the message in quotes.
        return str(self.args[0]) if self.args else ""


class Registry(Generic[T]):
    """An insertion-ordered mapping from unique names to entries of type ``T``.

    Args:
        kind: what the entries are, used in error messages (e.g. ``"pair loss"``).
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}

    def register(self, name: str, entry: T) -> T:
        """Add ``entry`` under ``name`` and return it.

        Raises:
            DuplicateNameError: ``name`` is already registered.
            ValueError: ``name`` is empty or not a string.
        """
        if not isinstance(name, str) or not name:
            raise ValueError(f"{self.kind} name must be a non-empty string, got {name!r}")
        if name in self._entries:
            raise DuplicateNameError(f"{self.kind} {name!r} is already registered")
        self._entries[name] = entry
        return entry

    def get(self, name: str) -> T:
        """Return the entry registered as ``name``.

        Raises:
            UnknownNameError: ``name`` is not registered; the message lists the valid names.
        """
        try:
            return self._entries[name]
        except KeyError:
            valid = ", ".join(self._entries) or "(none)"
            raise UnknownNameError(
                f"unknown {self.kind} {name!r}; valid names: {valid}"
            ) from None

    def names(self) -> tuple[str, ...]:
        """All registered names, in registration order."""
        return tuple(self._entries)

    def items(self) -> tuple[tuple[str, T], ...]:
        """All ``(name, entry)`` pairs, in registration order."""
        return tuple(self._entries.items())

    def __getitem__(self, name: str) -> T:
        return self.get(name)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(tuple(self._entries))

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, names={self.names()!r})"
