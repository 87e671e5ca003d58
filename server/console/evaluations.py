"""Read-only view of the runs ``alignserve eval`` left under ``$ALIGNSERVE_HOME/eval/<run>/``.

Only what a run publishes as aggregates is served: ``report.json``, the table of ``results.md``
and the chart PNGs. ``results.jsonl`` (answers to harmful prompts) and ``judgments.jsonl`` are
never read here. Runs written elsewhere with ``--output`` are not listed.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from server.errors import NotFoundError
from server.evaluation.report import REPORT_FILE, TABLE_FILE

# The charts server/evaluation/report.py writes; nothing else in a run folder is served.
CHARTS = ("refusal.png", "length.png", "offensive.png", "winrate.png")
_RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
# `alignserve eval --api-key KEY` lands in the recorded command line: never echo a key.
_KEY_ARG = re.compile(r"(--api-key(?:=|\s+))(\S+)")


class EvaluationRuns:
    def __init__(self, home: Path):
        self.root = home / "eval"

    def list(self) -> list[dict[str, Any]]:
        """Every run with a report, newest first."""
        runs = []
        if self.root.is_dir():
            for folder in self.root.iterdir():
                if _RUN_ID.match(folder.name) and (folder / REPORT_FILE).is_file():
                    report = self._report(folder)
                    if report is not None:
                        runs.append(_summary(folder, report))
        runs.sort(key=lambda r: r["modified_at"], reverse=True)
        return runs

    def get(self, run: str) -> dict[str, Any]:
        folder = self._folder(run)
        report = self._report(folder)
        if report is None:
            raise NotFoundError(f"evaluation run '{run}' has no readable report", param="run")
        if isinstance(report.get("command"), str):
            report["command"] = _KEY_ARG.sub(r"\1***", report["command"])
        return {**_summary(folder, report), "report": report, "table": _table(folder)}

    def chart(self, run: str, name: str) -> Path:
        if name not in CHARTS:
            raise NotFoundError(f"no chart named '{name}'", param="name")
        path = self._folder(run) / name
        if not path.is_file():
            raise NotFoundError(f"run '{run}' has no chart '{name}'", param="name")
        return path

    def _folder(self, run: str) -> Path:
        # The pattern admits no separator and no leading dot: the folder stays under root.
        folder = self.root / run
        if not _RUN_ID.match(run) or not (folder / REPORT_FILE).is_file():
            raise NotFoundError(f"evaluation run '{run}' not found", param="run")
        return folder

    @staticmethod
    def _report(folder: Path) -> dict[str, Any] | None:
        try:
            report = json.loads((folder / REPORT_FILE).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None  # a run being written, or damaged: listed again once readable
        return report if isinstance(report, dict) else None


def _summary(folder: Path, report: dict[str, Any]) -> dict[str, Any]:
    configs = report.get("configs") or []
    return {
        "id": folder.name,
        "object": "evaluation",
        "created": report.get("created"),
        "modified_at": int((folder / REPORT_FILE).stat().st_mtime),
        "configs": [c.get("name") for c in configs if isinstance(c, dict)],
        "suites": report.get("suites") or {},
        "elapsed_s": report.get("elapsed_s"),
        "charts": [c for c in CHARTS if (folder / c).is_file()],
    }


def _table(folder: Path) -> dict[str, Any] | None:
    """``results.md`` (one markdown table, written by ``render_markdown``) as headers and rows."""
    try:
        lines = (folder / TABLE_FILE).read_text(encoding="utf-8").splitlines()
    except OSError:
        return None
    rows = [[cell.strip() for cell in line.strip().strip("|").split("|")]
            for line in lines if line.startswith("|")]
    if len(rows) < 2:
        return None
    return {"headers": rows[0], "rows": rows[2:]}  # rows[1] is the |---| rule
