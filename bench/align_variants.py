"""The ablation's variants (bench/align_loop.py): what each trains, and the dataset forms derived
from one align job's distilled pairs."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Mapping
from typing import Any

from trainers.distill import FALLBACK_REFUSALS

Upload = Callable[[str, bytes, str], str]  # (file name, JSONL bytes, dataset format) -> id

ATTENTION = ["q_proj", "k_proj", "v_proj", "o_proj"]
MLP = ["gate_proj", "up_proj", "down_proj"]

# name -> (method, dataset form, spec overrides). The default recipe is the align job itself.
VARIANTS: dict[str, tuple[str, str, dict[str, Any]]] = {
    "dpo": ("dpo", "pairs", {}),
    "dpo+nll0.5": ("dpo", "pairs", {"rpo_alpha": 0.5}),
    "dpo+nll2": ("dpo", "pairs", {"rpo_alpha": 2.0}),
    "dpo+nll1 attn-only": ("dpo", "pairs", {
        "rpo_alpha": 1.0, "lora": {"r": 8, "alpha": 16, "target_modules": ATTENTION}}),
    "dpo+nll1 lr5e-5": ("dpo", "pairs", {"rpo_alpha": 1.0, "lr": 5e-5}),
    "dpo+nll1 half data": ("dpo", "pairs-half", {"rpo_alpha": 1.0}),
    "dpo+nll1 benign x2": ("dpo", "pairs-benign2", {"rpo_alpha": 1.0}),
    "dpo+nll1 lr2e-4": ("dpo", "pairs", {"rpo_alpha": 1.0, "lr": 2e-4}),
    "dpo benign x2": ("dpo", "pairs-benign2", {}),
    "dpo harmful x2": ("dpo", "pairs-harmful2", {}),
    "dpo half canned benign": ("dpo", "pairs-half-canned", {}),
    "dpo attn-only": ("dpo", "pairs", {"lora": {"r": 8, "alpha": 16,
                                                "target_modules": ATTENTION}}),
    "dpo r32": ("dpo", "pairs", {"lora": {"r": 32, "alpha": 64,
                                          "target_modules": ATTENTION + MLP}}),
    "dpo 120 steps": ("dpo", "pairs", {"steps": 120}),
    "dpo no canned benign": ("dpo", "pairs-no-canned", {}),
    "dpo canned chosen": ("dpo", "pairs-canned-chosen", {}),
    "dpo 240 steps": ("dpo", "pairs", {"steps": 240}),
    "dpo 240 steps seed 1": ("dpo", "pairs", {"steps": 240, "seed": 1}),
    "dpo 240 steps seed 2": ("dpo", "pairs", {"steps": 240, "seed": 2}),
    "dpo 240 steps seed 3": ("dpo", "pairs", {"steps": 240, "seed": 3}),
    # After about 120 steps the loss is spent and the chosen answers' reward falls again (by
    # seed: 0.7 -> 0.3, 0.5 -> 0.06); a little chosen NLL holds it up.
    "dpo+nll0.2 240 steps": ("dpo", "pairs", {"steps": 240, "rpo_alpha": 0.2}),
    "dpo+nll0.2 240 steps seed 1": ("dpo", "pairs", {"steps": 240, "rpo_alpha": 0.2, "seed": 1}),
    # Between plain DPO (seed-dependent harmful refusal) and NLL 0.2 (over-refusal up to 20%).
    "dpo+nll0.1 240 steps": ("dpo", "pairs", {"steps": 240, "rpo_alpha": 0.1}),
    "dpo+nll0.1 240 steps seed 1": ("dpo", "pairs", {"steps": 240, "rpo_alpha": 0.1, "seed": 1}),
    "dpo+nll0.05 240 steps": ("dpo", "pairs", {"steps": 240, "rpo_alpha": 0.05}),
    "dpo+nll0.05 240 steps seed 1": ("dpo", "pairs", {"steps": 240, "rpo_alpha": 0.05,
                                                      "seed": 1}),
    "dpo+nll0.05 240 steps seed 2": ("dpo", "pairs", {"steps": 240, "rpo_alpha": 0.05,
                                                      "seed": 2}),
    "dpo own refusals chosen": ("dpo", "pairs-own-chosen", {}),
    "dpo prefilled refusals": ("dpo", "pairs-prefilled", {}),
    # The benign pairs reject the model's own apology-begun refusal ("I'm sorry, but as a
    # chatbot ..."), the habit the adapters show on ordinary prompts, instead of a fallback text.
    "dpo+nll0.05 240 steps prefilled rejections": ("dpo", "pairs-prefilled-rejected", {
        "steps": 240, "rpo_alpha": 0.05}),
    "dpo half data": ("dpo", "pairs-half", {}),
    "dpo lr1e-3": ("dpo", "pairs", {"lr": 1e-3}),
    "dpo+nll0.2": ("dpo", "pairs", {"rpo_alpha": 0.2}),
    "dpo+nll1 lr1e-3": ("dpo", "pairs", {"rpo_alpha": 1.0, "lr": 1e-3}),
    "dpo+nll1 lr5e-4 150 steps": ("dpo", "pairs", {"rpo_alpha": 1.0, "lr": 5e-4, "steps": 150}),
    "sft": ("sft", "demonstrations", {}),
    "sft lr1e-3": ("sft", "demonstrations", {"lr": 1e-3}),
    "ulma": ("ulma", "pointwise", {}),
    "pointwise_dpo": ("pointwise_dpo", "pointwise", {}),
    "rdpo": ("rdpo", "pairs-scored", {}),
    "ld_align": ("ld_align", "demonstrations", {}),
    "afd": ("afd", "demonstrations", {}),
}


def lora(spec: dict[str, Any]) -> dict[str, Any]:
    return spec.get("lora") or {"r": 8, "alpha": 16, "target_modules": ATTENTION + MLP}


def variant_spec(name: str, dataset: str, args: argparse.Namespace,
                 overrides: dict[str, Any]) -> dict[str, Any]:
    method = VARIANTS[name][0]
    hp = {"max_steps": overrides.get("steps", args.steps), "batch_size": args.batch_size,
          "learning_rate": overrides.get("lr", args.lr), "max_length": 384,
          "max_prompt_length": 192, "checkpoint_every": 1000,
          "seed": overrides.get("seed", args.seed)}
    spec: dict[str, Any] = {"method": method, "dataset": dataset, "lora": lora(overrides),
                            "hyperparameters": hp, "deploy": {"name": slug(name)}}
    if "rpo_alpha" in overrides:
        spec["rpo_alpha"] = overrides["rpo_alpha"]
    return spec


def slug(name: str) -> str:
    return "ab-" + "".join(c if c.isalnum() else "-" for c in name.lower()).strip("-")


def _pair(p: dict[str, Any], chosen: str | None = None,
          rejected: str | None = None) -> dict[str, Any]:
    return {"messages": p["messages"], "chosen": chosen or p["chosen"],
            "rejected": rejected or p["rejected"]}


def dataset_forms(
    pairs: list[dict[str, Any]], prefilled: Mapping[int, str] | None = None,
) -> dict[str, tuple[str, list[dict[str, Any]]]]:
    """Every form the variants train on, from one align job's pairs: form -> (format, rows).
    ``prefilled``: pair index -> the model's own refusal of that prompt, elicited by starting
    its answer with an apology (``--prefilled``; the caller keeps only continuations that
    refuse: the apology alone already satisfies the refusal rules)."""
    def harmful(p: dict[str, Any]) -> bool:
        return p.get("kind") == "harmful"

    def benign(p: dict[str, Any]) -> bool:
        return p.get("kind") == "benign"

    rows = [_pair(p) for p in pairs]
    own = prefilled or {}
    canned_benign = [i for i, p in enumerate(pairs)
                     if benign(p) and p["rejected"] in FALLBACK_REFUSALS]
    return {
        "pairs": ("pairs", rows),
        "pairs-half": ("pairs", rows[: len(rows) // 2]),
        # Balance: every benign pair twice (harmful : benign 1 : 2 by weight, same prompts).
        "pairs-benign2": ("pairs", rows + [_pair(p) for p in pairs if benign(p)]),
        "pairs-harmful2": ("pairs", rows + [_pair(p) for p in pairs if harmful(p)]),
        # rDPO's soft labels: the behaviour the prompt's kind calls for scores 1, the other 0
        # (the refusal scorer alone would score a benign prompt's helpful answer 0).
        "pairs-scored": ("pairs", [{**r, "chosen_score": 1.0, "rejected_score": 0.0}
                                   for r in rows]),
        # The fallback refusals are chosen on harmful prompts and rejected on benign ones. These
        # forms take one side away: no benign pair that rejects them (the model's own refusals
        # stay rejected); no harmful pair that chooses them (only the model's own refusals are
        # chosen); or every harmful pair chooses one (linear alignment's "as a chatbot I'm not
        # equipped" refusals are then only ever rejected).
        "pairs-no-canned": ("pairs", [_pair(p) for p in pairs
                                      if not (benign(p) and p["rejected"] in FALLBACK_REFUSALS)]),
        # Half way: every other benign pair that rejects a fallback refusal stays.
        "pairs-half-canned": ("pairs", [_pair(p) for i, p in enumerate(pairs)
                                        if i not in canned_benign[1::2]]),
        "pairs-own-chosen": ("pairs", [_pair(p) for p in pairs
                                       if not (harmful(p) and p["chosen"] in FALLBACK_REFUSALS)]),
        "pairs-canned-chosen": ("pairs", [
            _pair(p, FALLBACK_REFUSALS[i % len(FALLBACK_REFUSALS)] if harmful(p) else None)
            for i, p in enumerate(pairs)]),
        # The model's own refusal in place of a fallback one, where prefilling elicited one.
        "pairs-prefilled": ("pairs", [
            _pair(p, own[i] if p["chosen"] in FALLBACK_REFUSALS and i in own else None)
            for i, p in enumerate(pairs)]),
        "pairs-prefilled-rejected": ("pairs", [
            _pair(p, rejected=own[i] if benign(p) and p["rejected"] in FALLBACK_REFUSALS
                  and i in own else None)
            for i, p in enumerate(pairs)]),
        "pointwise": ("pointwise", [row for p in pairs for row in (
            {"messages": p["messages"], "completion": p["chosen"], "label": True},
            {"messages": p["messages"], "completion": p["rejected"], "label": False})]),
        "demonstrations": ("demonstrations", [{"messages": p["messages"],
                                               "completion": p["chosen"]} for p in pairs]),
    }


def derived_datasets(upload: Upload, pairs: list[dict[str, Any]],
                     prefilled: Mapping[int, str] | None = None) -> dict[str, str]:
    """Every form uploaded as a dataset: form -> dataset id."""
    def jsonl(rows: list[dict[str, Any]]) -> bytes:
        return "".join(json.dumps(r) + "\n" for r in rows).encode()

    return {form: upload(f"{form}.jsonl", jsonl(rows), fmt)
            for form, (fmt, rows) in dataset_forms(pairs, prefilled).items()}
