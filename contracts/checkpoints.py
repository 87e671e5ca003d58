"""The checkpoint format shared by trainers and server: manifest, hashing, verification.

Checkpoints (final ones, and the trainers' resume points) are written into a temporary
directory next to their target and renamed into place, so a half-written checkpoint is never
visible. A final checkpoint's ``manifest.json`` carries the full
resolved job config, the base model identity, metrics, data hashes and the sha256 of every file.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

MANIFEST = "manifest.json"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def swap_into_place(staging: Path, target: Path) -> None:
    """Rename the finished folder in; an old folder is moved aside first, then deleted."""
    old = target.with_name(f".{target.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if target.exists():
        target.rename(old)
    staging.rename(target)
    shutil.rmtree(old, ignore_errors=True)


def write_atomically(target: Path, fill: Callable[[Path], None]) -> Path:
    """Call ``fill(tmp_dir)`` then rename ``tmp_dir`` to ``target`` (replacing it)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.tmp-"))
    try:
        fill(staging)
        swap_into_place(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


def base_model_identity(model_path: str) -> dict[str, Any]:
    """Where the base model lives and what it is (its config hash and pull manifest, if any)."""
    folder = Path(model_path)
    identity: dict[str, Any] = {"path": str(folder), "name": folder.name}
    config = folder / "config.json"
    if config.is_file():
        identity["config_sha256"] = sha256_file(config)
    pulled = folder / "alignserve_model.json"
    if pulled.is_file():
        data = json.loads(pulled.read_text())
        identity["served_name"] = data.get("served_name")
        identity["source"] = data.get("source")
    return identity


def file_hashes(folder: Path) -> dict[str, dict[str, Any]]:
    return {
        str(p.relative_to(folder)): {"bytes": p.stat().st_size, "sha256": sha256_file(p)}
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != MANIFEST
    }


def write_final_checkpoint(
    target: Path, fill: Callable[[Path], None], manifest: Callable[[], dict[str, Any]]
) -> dict[str, Any]:
    """Save the model files with ``fill`` and a manifest with per-file sha256, atomically."""
    written: dict[str, Any] = {}

    def build(tmp: Path) -> None:
        fill(tmp)
        full = {**manifest(), "created_at": time.time(), "files": file_hashes(tmp)}
        (tmp / MANIFEST).write_text(json.dumps(full, indent=2, sort_keys=True) + "\n")
        written.update(full)

    write_atomically(target, build)
    return written


def verify_checkpoint(folder: Path) -> list[str]:
    """Files whose sha256 does not match the manifest (empty when the checkpoint is intact)."""
    manifest = json.loads((folder / MANIFEST).read_text())
    return [
        name for name, info in manifest["files"].items()
        if not (folder / name).is_file() or sha256_file(folder / name) != info["sha256"]
    ]
