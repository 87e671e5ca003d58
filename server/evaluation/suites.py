"""Evaluation suites: the development prompt sets of docs/assets.md as lists of identified items.

Files come from ``pull_datasets`` (the same mechanism as training data), so a fresh machine
fetches them on first use; ``benign_sensitive`` is our own set and ships in the package
(``data/benign_sensitive.jsonl``). Every item has a stable id (``source:index``) that the resumable
results file is keyed by; ``limit`` takes the first N items, and a larger limit extends a
smaller one, so finished items stay valid.

The harmful and jailbreak suites hold harmful text: it is never logged, only counted.
"""

from __future__ import annotations

import json
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from align_core.registry import Registry
from server.assets import ProgressFn
from server.data_pull import PROMPT_PLACEHOLDER, pull_datasets

logger = logging.getLogger(__name__)

# Long in-the-wild templates would crowd out the answer in a 2k context: keep the short ones.
MAX_TEMPLATE_CHARS = 2000
JAILBREAK_SEED = 1234


@dataclass(frozen=True)
class EvalItem:
    item_id: str
    suite: str
    prompt: str
    harmful: bool


Loader = Callable[[dict[str, Path], int], list[EvalItem]]


@dataclass(frozen=True)
class Suite:
    """A prompt set: which pulled datasets it reads and how it turns them into items."""

    datasets: tuple[str, ...]
    load: Loader
    harmful: bool
    description: str


def _prompts(path: Path) -> list[str]:
    return [json.loads(line)["prompt"] for line in path.read_text().splitlines() if line.strip()]


# The harmful suite's prompts: the first DEV_RESERVED items of the harmful pool (and of the
# helpful pool). Training data (server.align_prompts) start past them.
DEV_RESERVED = 200


def harmful_pool(paths: dict[str, Path]) -> list[tuple[str, str]]:
    """(id, prompt) alternating HarmBench and Do-Not-Answer, so any prefix mixes both."""
    hb = [(f"harmbench:{i}", p) for i, p in enumerate(_prompts(paths["harmful_harmbench"]))]
    dna = [(f"donotanswer:{i}", p) for i, p in enumerate(_prompts(paths["harmful_donotanswer"]))]
    pool: list[tuple[str, str]] = []
    for i in range(max(len(hb), len(dna))):
        pool += [src[i] for src in (hb, dna) if i < len(src)]
    return pool


def load_harmful(paths: dict[str, Path], limit: int) -> list[EvalItem]:
    if limit > DEV_RESERVED:
        logger.warning("harmful suite: %d items asked; past the first %d they overlap the "
                       "align training prompts", limit, DEV_RESERVED)
    return [EvalItem(i, "harmful", p, True) for i, p in harmful_pool(paths)[:limit]]


def load_helpful(paths: dict[str, Path], limit: int) -> list[EvalItem]:
    prompts = _prompts(paths["helpful_alpacaeval"])[:limit]
    return [EvalItem(f"alpacaeval:{i}", "helpful", p, False) for i, p in enumerate(prompts)]


BENIGN_SENSITIVE_FILE = "benign_sensitive.jsonl"
BENIGN_SENSITIVE_SPLITS = ("dev", "train")


def benign_sensitive_prompts(split: str) -> list[dict[str, Any]]:
    """Our benign-but-sensitive prompts of one split, in file order (categories interleaved).

    Records: ``{"id", "prompt", "category", "split"}``. ``dev`` is evaluation's, ``train`` is
    for training balance: no prompt is in both (docs/evaluation.md).
    """
    if split not in BENIGN_SENSITIVE_SPLITS:
        raise ValueError(f"split must be one of {BENIGN_SENSITIVE_SPLITS}, not {split!r}")
    text = (resources.files("server.evaluation") / "data" / BENIGN_SENSITIVE_FILE).read_text(
        encoding="utf-8")
    records = [json.loads(line) for line in text.splitlines() if line.strip()]
    return [r for r in records if r["split"] == split]


def load_benign_sensitive(paths: dict[str, Path], limit: int) -> list[EvalItem]:
    """The dev split only (``paths`` is unused: the set ships with the package)."""
    return [EvalItem(f"benign_sensitive:{r['id']}", "benign_sensitive", r["prompt"], False)
            for r in benign_sensitive_prompts("dev")[:limit]]


def wrap(template: str, request: str) -> str:
    """Put the request into the template's slot (str.replace: templates hold other braces)."""
    return template.replace(PROMPT_PLACEHOLDER, request)


def sample_pairs(
    n_templates: int, n_prompts: int, limit: int, seed: int = JAILBREAK_SEED
) -> list[tuple[int, int]]:
    """Distinct (template, prompt) index pairs drawn one by one from a seeded generator.

    Drawing sequentially makes every shorter sample a prefix of a longer one.
    """
    rng = random.Random(seed)
    limit = min(limit, n_templates * n_prompts)
    seen: set[tuple[int, int]] = set()
    pairs: list[tuple[int, int]] = []
    while len(pairs) < limit:
        pair = (rng.randrange(n_templates), rng.randrange(n_prompts))
        if pair not in seen:
            seen.add(pair)
            pairs.append(pair)
    return pairs


def load_jailbreak(paths: dict[str, Path], limit: int) -> list[EvalItem]:
    templates = [
        (i, t) for i, t in enumerate(json.loads(paths["jailbreak_templates"].read_text()))
        if PROMPT_PLACEHOLDER in t and len(t) <= MAX_TEMPLATE_CHARS
    ]
    # HarmBench requests only: short imperative requests, the form role-play templates expect;
    # from the harmful suite's reserved part (the rest are align training prompts).
    pool = [(i, p) for i, p in harmful_pool(paths)[:DEV_RESERVED] if i.startswith("harmbench:")]
    items = []
    for t, p in sample_pairs(len(templates), len(pool), limit):
        (t_index, template), (prompt_id, request) = templates[t], pool[p]
        item_id = f"jailbreak:t{t_index}:{prompt_id}"
        items.append(EvalItem(item_id, "jailbreak", wrap(template, request), True))
    return items


SUITES: Registry[Suite] = Registry("evaluation suite")
SUITES.register("harmful", Suite(
    ("harmful_harmbench", "harmful_donotanswer"), load_harmful, True,
    "HarmBench and Do-Not-Answer requests, alternating",
))
SUITES.register("helpful", Suite(
    ("helpful_alpacaeval",), load_helpful, False, "AlpacaEval instructions (benign)",
))
SUITES.register("jailbreak", Suite(
    ("harmful_harmbench", "harmful_donotanswer", "jailbreak_templates"), load_jailbreak, True,
    f"HarmBench requests in role-play templates (<= {MAX_TEMPLATE_CHARS} chars, seed "
    f"{JAILBREAK_SEED})",
))
SUITES.register("benign_sensitive", Suite(
    (), load_benign_sensitive, False,
    "Benign requests that look sensitive (our own set, dev split; over-refusal)",
))


def load_suite(
    name: str, home: Path, limit: int, progress: ProgressFn | None = None, offset: int = 0
) -> list[EvalItem]:
    """Items ``offset`` to ``offset + limit`` of suite ``name`` (fewer where the suite ends),
    pulling its datasets when missing."""
    suite = SUITES.get(name)
    paths = pull_datasets(home, names=suite.datasets, progress=progress) if suite.datasets else {}
    return suite.load(paths, offset + limit)[offset:]


def parse_suite_spec(spec: str, default_limit: int) -> tuple[str, int]:
    """``harmful`` or ``harmful:40`` -> (name, limit); the name must be registered."""
    name, _, limit = spec.partition(":")
    SUITES.get(name)
    if not limit:
        return name, default_limit
    if not limit.isdigit() or int(limit) < 1:
        raise ValueError(f"suite limit must be a positive integer: {spec!r}")
    return name, int(limit)
