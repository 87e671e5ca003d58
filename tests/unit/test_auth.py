from pathlib import Path

import pytest

from server.auth import KeyRing, Scope, bearer_token


def test_scopes_and_hashing() -> None:
    ring = KeyRing.build(["u1"], ["a1"])
    assert ring.scope_of("u1") == Scope.USER
    assert ring.scope_of("a1") == Scope.ADMIN
    assert ring.scope_of("nope") is None and ring.scope_of(None) is None
    assert all(b"u1" not in digest for digest, _ in ring.entries)  # only digests are kept


def test_open_access_when_no_keys() -> None:
    assert KeyRing.build([], []).scope_of(None) == Scope.ADMIN


def test_keys_file(tmp_path: Path) -> None:
    f = tmp_path / "keys"
    f.write_text("# comment\nuser:abc\nadmin:def\n")
    ring = KeyRing.from_settings("x", "", f)
    assert ring.scope_of("abc") == Scope.USER and ring.scope_of("def") == Scope.ADMIN
    assert ring.scope_of("x") == Scope.USER
    f.write_text("root:zzz\n")
    with pytest.raises(ValueError, match="keys:1"):
        KeyRing.from_settings("", "", f)


def test_bearer_parsing() -> None:
    assert bearer_token("Bearer abc") == "abc"
    assert bearer_token("Basic abc") is None and bearer_token(None) is None
