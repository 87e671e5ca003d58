"""The built-in training prompts of ``alignserve align``: harmful and benign requests that no
evaluation suite asks (docs/alignment.md).

* harmful: the harmful pool (HarmBench and Do-Not-Answer, alternating) after the
  ``DEV_RESERVED`` items the ``harmful`` suite reads; the ``jailbreak`` suite wraps only
  HarmBench requests from that reserved part. So training sees both kinds of request: short
  imperative ones (HarmBench) and the wider Do-Not-Answer risk areas.
* harmful, written: our own requests (``harmful_written.jsonl``, training only) in the risk
  areas that Do-Not-Answer keeps almost entirely inside its reserved part (adult content,
  graphic violence and animal cruelty, body shaming, harassment, loaded stereotypes about
  groups): Do-Not-Answer is ordered by risk area, so without them training would barely see
  those areas.
* benign: AlpacaEval instructions after the first ``DEV_RESERVED`` (the ``helpful`` suite reads
  from the start), and the ``train`` split of our benign-but-sensitive set (the
  ``benign_sensitive`` suite reads the ``dev`` split), so the data also teach what *not* to
  refuse.

Half the prompts are harmful and half benign; of the benign half, the benign-sensitive share is
``sensitive_share``. Every prompt carries its ``kind`` and ``source``.
"""

from __future__ import annotations

import json
import random
from importlib import resources
from pathlib import Path
from typing import Any

from server.assets import ProgressFn
from server.data_pull import pull_datasets
from server.evaluation.suites import DEV_RESERVED, benign_sensitive_prompts, harmful_pool


def _prompts(path: Path) -> list[str]:
    return [json.loads(line)["prompt"] for line in path.read_text().splitlines() if line.strip()]


HARMFUL_WRITTEN_FILE = "harmful_written.jsonl"


def written_harmful_prompts() -> list[dict[str, Any]]:
    """Our harmful training requests, ``{"id", "prompt", "category", "split": "train"}``."""
    text = (resources.files("server.evaluation") / "data" / HARMFUL_WRITTEN_FILE).read_text(
        encoding="utf-8")
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def training_prompts(
    home: Path, count: int, seed: int = 0, sensitive_share: float = 0.5,
    progress: ProgressFn | None = None,
) -> list[dict[str, Any]]:
    """``count`` prompts, half harmful and half benign, shuffled with ``seed``."""
    if count < 2:
        raise ValueError("align needs at least 2 prompts (one harmful, one benign)")
    paths = pull_datasets(home, names=("harmful_harmbench", "harmful_donotanswer",
                                       "helpful_alpacaeval"), progress=progress)
    rng = random.Random(seed)
    by_source: dict[str, list[str]] = {}
    for item_id, prompt in harmful_pool(paths)[DEV_RESERVED:]:
        by_source.setdefault(item_id.partition(":")[0], []).append(prompt)
    by_source["written"] = [r["prompt"] for r in written_harmful_prompts()]
    for pool in by_source.values():
        rng.shuffle(pool)
    # Round-robin over the sources: each is as present as the others while it lasts.
    harmful: list[str] = []
    source: dict[str, str] = {}
    for i in range(max(map(len, by_source.values()), default=0)):
        for name, pool in by_source.items():
            if i < len(pool):
                harmful.append(pool[i])
                source[pool[i]] = name
    alpaca = _prompts(paths["helpful_alpacaeval"])[DEV_RESERVED:]
    sensitive = [r["prompt"] for r in benign_sensitive_prompts("train")]
    for pool in (alpaca, sensitive):
        rng.shuffle(pool)
    n_harmful = count // 2
    n_sensitive = min(len(sensitive), round((count - n_harmful) * sensitive_share))
    n_alpaca = count - n_harmful - n_sensitive
    if n_harmful > len(harmful) or n_alpaca > len(alpaca):
        raise ValueError(f"the built-in pools hold {len(harmful)} harmful and "
                         f"{len(alpaca) + len(sensitive)} benign training prompts; asked for "
                         f"{n_harmful} and {count - n_harmful}")
    rows = ([{"prompt": p, "kind": "harmful", "source": source[p]} for p in harmful[:n_harmful]]
            + [{"prompt": p, "kind": "benign", "source": "alpacaeval"} for p in alpaca[:n_alpaca]]
            + [{"prompt": p, "kind": "benign", "source": "benign_sensitive"}
               for p in sensitive[:n_sensitive]])
    rng.shuffle(rows)
    return rows


def to_jsonl(rows: list[dict[str, Any]]) -> bytes:
    """The prompts dataset file (``prompts`` format with ``kind``)."""
    return "".join(json.dumps({"prompt": r["prompt"], "kind": r["kind"]}) + "\n"
                   for r in rows).encode()
