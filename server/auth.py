"""API keys with two scopes. Only SHA-256 digests are kept; comparison is constant-time."""

from __future__ import annotations

import base64
import enum
import hashlib
import logging
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)


class Scope(enum.IntEnum):
    """Ordered: a higher scope may do everything a lower one may."""

    USER = 1
    ADMIN = 2


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


def _split(keys: str) -> list[str]:
    return [k.strip() for k in keys.split(",") if k.strip()]


def configured_keys(
    api_keys: str, admin_keys: str, keys_file: Path | None
) -> tuple[list[str], list[str]]:
    """(user keys, admin keys) from the settings' lists and the keys file."""
    users, admins = _split(api_keys), _split(admin_keys)
    if keys_file is not None:
        for lineno, raw in enumerate(keys_file.read_text().splitlines(), 1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            scope, sep, key = line.partition(":")
            if not sep or scope not in ("user", "admin") or not key.strip():
                raise ValueError(f"{keys_file}:{lineno}: expected 'user:KEY' or 'admin:KEY'")
            (admins if scope == "admin" else users).append(key.strip())
    return users, admins


@dataclass(frozen=True)
class KeyRing:
    """Hashed keys by scope. Empty means development mode (open access)."""

    entries: tuple[tuple[bytes, Scope], ...]

    @classmethod
    def build(cls, user_keys: Iterable[str], admin_keys: Iterable[str]) -> KeyRing:
        entries = [(_digest(k), Scope.USER) for k in user_keys]
        entries += [(_digest(k), Scope.ADMIN) for k in admin_keys]
        return cls(tuple(entries))

    @classmethod
    def from_settings(cls, api_keys: str, admin_keys: str, keys_file: Path | None) -> KeyRing:
        return cls.build(*configured_keys(api_keys, admin_keys, keys_file))

    @property
    def open_access(self) -> bool:
        return not self.entries

    def scope_of(self, key: str | None) -> Scope | None:
        """The scope of ``key``, or None. Every entry is compared, so timing leaks nothing."""
        if self.open_access:
            return Scope.ADMIN
        if not key:
            return None
        digest = _digest(key)
        found: Scope | None = None
        for stored, scope in self.entries:
            if secrets.compare_digest(stored, digest) and (found is None or scope > found):
                found = scope
        return found


def bearer_token(authorization: str | None) -> str | None:
    if not authorization:
        return None
    kind, _, token = authorization.partition(" ")
    if kind.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def request_key(authorization: str | None, x_api_key: str | None) -> str | None:
    """The key a request presents: ``Authorization: Bearer``, else ``X-API-Key``."""
    token = bearer_token(authorization)
    return token if token is not None else (x_api_key or None)


def basic_password(authorization: str | None) -> str | None:
    """The password of ``Authorization: Basic`` (any user name). Only the docs pages accept it:
    a browser can send it on a page load, where it cannot add a bearer header."""
    if not authorization:
        return None
    kind, _, encoded = authorization.partition(" ")
    if kind.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
    except (ValueError, UnicodeDecodeError):
        return None
    _, sep, password = decoded.partition(":")
    return password if sep and password else None
