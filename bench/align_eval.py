"""The evaluation half of ``bench/align_loop.py``: the dev suites on a growing list of
configurations, the helpfulness reward model's verdict, and the docs/alignment.md table."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from pathlib import Path
from typing import Any

import httpx

logger = logging.getLogger("bench.align_loop")
USER = "bench-user"


def helpfulness(base_url: str, home: Path, output: Path, reward: str, limit: int,
                keys: dict[str, str], offset: int = 0) -> dict[str, dict[str, float]]:
    """Each configuration's ordinary (``helpful``) answers against the base model's on the same
    prompts, by the helpfulness reward model: the mean reward, and the share of prompts where
    the configuration's answer scores at least the base's (0.5: as helpful as the base).
    ``keys``: configuration name -> the key of its answers in this run. Scores are stored by
    key, not name: a retrained adapter under an old name has new answers and needs new scores."""
    from server.evaluation.suites import load_suite

    prompts = {i.item_id: i.prompt for i in load_suite("helpful", home, limit, offset=offset)}
    names = {key: name for name, key in keys.items()}
    answers: dict[str, dict[str, str]] = {}  # config key -> {item: text}
    for line in (output / "eval" / "results.jsonl").read_text().splitlines():
        row = json.loads(line) if line.strip() else None
        if (row and row["suite"] == "helpful" and row["item_id"] in prompts
                and row["config_key"] in names):
            answers.setdefault(row["config_key"], {})[row["item_id"]] = row["text"]
    http = httpx.Client(base_url=base_url, timeout=600,
                        headers={"Authorization": f"Bearer {USER}"})
    cache = output / "helpfulness_scores.json"  # {reward: {config key: {item: score}}}
    saved = json.loads(cache.read_text()) if cache.is_file() else {}
    scores: dict[str, dict[str, float]] = saved.setdefault(reward, {})
    for key, texts in answers.items():
        ids = sorted(texts)
        if sorted(scores.get(key, {})) == ids:
            continue
        got: list[float] = []
        for start in range(0, len(ids), 64):
            chunk = ids[start:start + 64]
            r = http.post("/v1/rewards", json={"model": reward, "inputs": [
                {"prompt": prompts[i], "response": texts[i]} for i in chunk]})
            r.raise_for_status()
            got += [float(x) for x in r.json()["scores"]]
        scores[key] = dict(zip(ids, got, strict=True))
        cache.write_text(json.dumps(saved))
    base = scores.get(keys.get("base", ""), {})
    out: dict[str, dict[str, float]] = {}
    for key in answers:
        by_item = scores[key]
        shared = [i for i in by_item if i in base]
        out[names[key]] = {
            "n": float(len(by_item)),
            "mean_reward": sum(by_item.values()) / len(by_item),
            "at_least_base": (sum(by_item[i] >= base[i] for i in shared) / len(shared)
                              if shared else float("nan")),
        }
    return out


def table(result: dict[str, Any]) -> str:
    """The docs/alignment.md table: refusal rates with Wilson 95% intervals, the length of
    ordinary answers relative to the base, and the helpfulness reward model's verdict."""
    def rate(m: dict[str, Any]) -> str:
        r = m["refusal_rate"]
        lo, hi = r["ci95"]
        return f"{100 * r['value']:.0f}% [{100 * lo:.0f}, {100 * hi:.0f}]"

    results = result["eval"]["results"]
    help_rm = result.get("helpfulness", {})
    base_words = results.get("base", {}).get("helpful", {}).get("mean_words") or float("nan")
    lines = ["| configuration | harmful refused | helpful refused | benign-sensitive refused "
             "| helpful words (x base) | helpful RM >= base | helpful mean reward |",
             "|---|---|---|---|---|---|---|"]
    for name, suites in results.items():
        h = help_rm.get(name, {})
        words = suites["helpful"]["mean_words"]
        lines.append(
            f"| {name} | {rate(suites['harmful'])} | {rate(suites['helpful'])} | "
            f"{rate(suites['benign_sensitive'])} | {words:.0f} ({words / base_words:.2f}) | "
            + (f"{100 * h['at_least_base']:.0f}% | {h['mean_reward']:.2f} |" if h else "- | - |"))
    return "\n".join(lines) + "\n"


class Evaluation:
    """The dev suites (prompts no training used) on a growing list of configurations; answers
    are cached by configuration, so each call generates only for the new ones."""

    def __init__(self, base_url: str, home: Path, model: str, args: argparse.Namespace) -> None:
        from server.evaluation.configs import EvalConfig, SamplingParams
        from server.evaluation.evaluate import build_scorers
        from server.evaluation.runner import OpenAIGenerator
        from server.evaluation.suites import load_suite

        self.config_type, self.model, self.args = EvalConfig, model, args
        self.principle = {"preset": args.preset}
        self.configs: list[Any] = []
        # --eval-offset 60 with --eval-limit 40: the evaluation gate's validation prompts.
        self.suites = {s: load_suite(s, home, args.eval_limit, offset=args.eval_offset)
                       for s in ("harmful", "helpful", "benign_sensitive")}
        self.sampling = SamplingParams(args.max_tokens, 0.0, 1.0, 0)
        self.scorers = build_scorers(home, logger.info)
        self.connect = lambda: OpenAIGenerator.connect(f"{base_url}/v1", USER)

    def baselines(self) -> list[Any]:
        c, a = self.config_type, self.args
        rows = [c("base", self.model),
                c("principle in prompt", self.model, {**self.principle, "alpha": 0.0}),
                c(f"LA alpha={a.la_alpha:g}", self.model, {**self.principle, "alpha": a.la_alpha}),
                c(a.align_name, a.align_name)]
        rows.append(self.with_alignment(a.align_name, a.align_name, a.aligned_alpha))
        return rows

    def adapter(self, name: str, deployment: str) -> Any:
        return self.config_type(name, deployment)

    def with_alignment(self, name: str, deployment: str, alpha: float) -> Any:
        return self.config_type(f"{name} + LA alpha={alpha:g}", deployment,
                                {**self.principle, "alpha": alpha})

    def with_contrast(self, name: str, deployment: str, alpha: float) -> Any:
        """The adapter decoded against the base model (adapter contrast): z_adapter + alpha
        (z_adapter - z_base), the conversation as sent, no principle in any prompt."""
        return self.config_type(f"{name} vs base, contrast alpha={alpha:g}", deployment,
                                {"contrast": {"against": self.model}, "alpha": alpha})

    def best_of_n(self, reward: str) -> Any:
        n = self.args.best_of
        return self.config_type(f"afd best-of-{n}", self.model,
                                best_of_n={"n": n, "reward_model": reward}, temperature=0.7)

    def add(self, configs: list[Any]) -> dict[str, Any]:
        from server.evaluation.evaluate import EvalPlan, evaluate_and_close

        self.configs += configs
        plan = EvalPlan(configs=tuple(self.configs), suites=self.suites, sampling=self.sampling,
                        output=Path(self.args.output) / "eval", concurrency=16,
                        meta={"command": " ".join(sys.argv)})
        # A client per run: an async client belongs to the event loop it first ran in.
        report = asyncio.run(evaluate_and_close(plan, self.connect(), self.scorers, logger.info))
        return {"results": report["results"],
                "keys": {c["name"]: c["key"] for c in report["configs"]},
                "table": str(Path(self.args.output) / "eval" / "results.md")}
