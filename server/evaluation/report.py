"""Per-suite metrics from finished answers, and the files a run leaves: JSON, markdown, PNGs.

Only aggregate numbers are written here; answer texts stay in ``results.jsonl``.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from server.evaluation.metrics import mean, rate, word_count

REPORT_FILE = "report.json"
TABLE_FILE = "results.md"


def suite_metrics(
    texts: Sequence[str],
    completion_tokens: Sequence[int],
    finish_reasons: Sequence[str],
    refusals: Sequence[bool],
    offensive: Sequence[float] | None = None,
    rewards: Sequence[float] | None = None,
    keyword_refusals: Sequence[bool] | None = None,
) -> dict[str, Any]:
    """The numbers of one configuration on one suite (definitions: docs/evaluation.md)."""
    words = [word_count(t) for t in texts]
    out: dict[str, Any] = {
        "n": len(texts),
        "refusal_rate": rate(refusals).as_dict(),
        "mean_words": mean(words),
        "mean_completion_tokens": mean(completion_tokens),
        "truncated_rate": rate([f == "length" for f in finish_reasons]).as_dict(),
    }
    if keyword_refusals is not None:  # the keyword path alone: a cross-check of the detector
        out["keyword_refusal_rate"] = rate(keyword_refusals).as_dict()
    if offensive is not None:
        out["offensive_mean"] = mean(offensive)
        out["offensive_rate"] = rate([p >= 0.5 for p in offensive]).as_dict()
    if rewards is not None:
        out["reward_mean"] = mean(rewards)
    return out


def _fmt(x: float, digits: int = 2) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def _rate_cell(r: Mapping[str, Any]) -> str:
    return f"{_fmt(r['value'])} ({r['k']}/{r['n']})"


def render_markdown(report: Mapping[str, Any]) -> str:
    """One table: a row per configuration, refusal and length per suite, offense, win rate."""
    suites = list(report["suites"])
    results = report["results"]
    judged = report.get("win_rates") or {}
    judge_suites = sorted({s for per in judged.values() for s in per})
    headers = ["configuration"]
    headers += [("over-refusal" if not report["suites"][s]["harmful"] else "refusal") + f" {s}"
                for s in suites]
    headers += [f"words {s}" for s in suites]
    has_offense = any("offensive_mean" in m for per in results.values() for m in per.values())
    if has_offense:
        headers.append("offensive p (mean, all)")
    if any("reward_mean" in m for per in results.values() for m in per.values()):
        headers.append("reward (mean, all)")
    for s in judge_suites:
        headers += [f"win rate vs {report['judge']['baseline']} ({s})",
                    f"debiased win rate ({s})", f"judge consistency ({s})"]
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    for name, per in results.items():
        row = [name]
        row += [_rate_cell(per[s]["refusal_rate"]) for s in suites]
        row += [_fmt(per[s]["mean_words"], 1) for s in suites]
        if has_offense:
            row.append(_weighted(per, "offensive_mean"))
        if "reward (mean, all)" in headers:
            row.append(_weighted(per, "reward_mean"))
        for s in judge_suites:
            w = judged.get(name, {}).get(s)
            row += ([_fmt(w["win_rate"]), _fmt(w["debiased_win_rate"]), _fmt(w["consistency"])]
                    if w else ["-", "-", "-"])
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def _weighted(per: Mapping[str, Mapping[str, Any]], key: str) -> str:
    """Mean over all answers of a configuration (suites weighted by their size)."""
    pairs = [(m[key], m["n"]) for m in per.values() if key in m and m["n"]]
    total = sum(n for _, n in pairs)
    return _fmt(sum(v * n for v, n in pairs) / total, 3) if total else "n/a"


def write_text_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


def write_report(report: Mapping[str, Any], out_dir: Path) -> list[Path]:
    """report.json, results.md and the charts; returns the paths written."""
    written = [out_dir / REPORT_FILE, out_dir / TABLE_FILE]
    write_text_atomic(written[0], json.dumps(report, indent=2, sort_keys=False) + "\n")
    write_text_atomic(written[1], render_markdown(report))
    return written + write_charts(report, out_dir)


def _grouped_bars(
    path: Path, title: str, ylabel: str, configs: Sequence[str], series: Mapping[str, Any],
) -> Path:
    """Bars per configuration, one colour per series; series values: (value, low, high)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.0, 3.4), dpi=100)
    width = 0.8 / max(len(series), 1)
    for i, (label, values) in enumerate(series.items()):
        xs = [c + (i - (len(series) - 1) / 2) * width for c in range(len(configs))]
        heights = [v[0] for v in values]
        errors = [[max(v[0] - v[1], 0) for v in values], [max(v[2] - v[0], 0) for v in values]]
        has_err = any(v[1] != v[0] or v[2] != v[0] for v in values)
        ax.bar(xs, heights, width, label=label, yerr=errors if has_err else None, capsize=2)
    ax.set_xticks(range(len(configs)), configs, rotation=20, ha="right", fontsize=8)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7, frameon=False)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def write_charts(report: Mapping[str, Any], out_dir: Path) -> list[Path]:
    results = report["results"]
    configs = list(results)
    suites = list(report["suites"])
    if not configs:
        return []
    out_dir.mkdir(parents=True, exist_ok=True)

    def rate_series(s: str) -> list[tuple[float, float, float]]:
        return [(r["value"], *r["ci95"]) for r in (results[c][s]["refusal_rate"] for c in configs)]

    paths = [
        _grouped_bars(out_dir / "refusal.png", "Refusal rate (95% Wilson CI)", "refusal rate",
                      configs, {s if report["suites"][s]["harmful"] else f"{s} (over-refusal)":
                                rate_series(s) for s in suites}),
        _grouped_bars(out_dir / "length.png", "Mean answer length", "words", configs,
                      {s: [(results[c][s]["mean_words"],) * 3 for c in configs] for s in suites}),
    ]
    if all("offensive_mean" in results[c][s] for c in configs for s in suites):
        paths.append(_grouped_bars(
            out_dir / "offensive.png", "Offensive-language probability (mean)", "p(offensive)",
            configs, {s: [(results[c][s]["offensive_mean"],) * 3 for c in configs]
                      for s in suites}))
    judged = report.get("win_rates") or {}
    if judged:
        names = list(judged)
        series = {
            f"{label} ({s})": [(judged[c].get(s, {}).get(key, float("nan")),) * 3 for c in names]
            for s in sorted({s for per in judged.values() for s in per})
            for label, key in (("letters", "win_rate"), ("debiased", "debiased_win_rate"))
        }
        paths.append(_grouped_bars(
            out_dir / "winrate.png", f"Win rate vs {report['judge']['baseline']} "
            "(judge, both answer orders)", "win rate", names, series))
    return paths
