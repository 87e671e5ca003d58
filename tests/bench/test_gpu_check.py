"""``bench/gpu_check.py`` in its CPU smoke mode: a 2-layer random model, a few steps each.

Runs the script as the GPU slot would (a subprocess printing one JSON summary) and checks the
summary: our DPO and ULMA trained past their untimed first epoch with finite, falling losses;
TRL's side is reported as not run (or, with the TRL venv provisioned, run on the same batches
with the same losses as ours, step by step).
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.trl_parity.provision import is_ready, venv_dir

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "bench" / "gpu_check.py"


def run_check(*extra: str) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--device", "cpu", "--tiny", "--budget-s", "120", *extra],
        cwd=REPO, capture_output=True, text=True, timeout=600, check=False,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    summary: dict[str, Any] = json.loads(done.stdout)
    return summary


def check_ours(run: dict[str, Any]) -> None:
    assert run["steps"] >= 4 and run["timed_steps"] == run["steps"] - run["warmup_steps"] > 0
    assert run["steps_per_s"] > 0
    assert len(run["losses"]) == run["steps"] == len(run["step_s"])
    assert run["loss_finite"] and run["loss_decreasing"]
    assert run["peak_memory_bytes"] is None  # CPU: no CUDA allocator to ask


def test_tiny_cpu_ours_only() -> None:
    summary = run_check("--no-trl")
    assert summary["device"] == "cpu" and summary["trl"]["available"] is False
    tiny = summary["models"]["tiny"]
    check_ours(tiny["dpo"]["alignserve"])
    check_ours(tiny["ulma"]["alignserve"])
    assert tiny["dpo"]["alignserve"]["losses"][0] == pytest.approx(math.log(2), abs=1e-6)
    assert tiny["dpo"]["trl"].startswith("not run")
    assert "no ULMA" in tiny["ulma"]["trl"]
    assert summary["checks"] == {"runs": 2, "all_finite": True, "all_decreasing": True}


def test_tiny_cpu_against_trl() -> None:
    root = venv_dir()
    if not is_ready(root):
        pytest.skip(f"TRL venv not provisioned at {root}; run: "
                    ".venv/bin/python tests/trl_parity/provision.py")
    site = next((root / "lib").glob("python3*/site-packages"))
    summary = run_check("--trl-site", str(site))
    assert summary["trl"] == {"available": True, "version": "1.16.0", "expected": True}
    dpo = summary["models"]["tiny"]["dpo"]
    ours, trl = dpo["alignserve"], dpo["trl"]
    check_ours(trl)
    assert dpo["first_step_loss_equal"] and dpo["ratio_steps_per_s"] > 0
    steps = min(ours["steps"], trl["steps"])
    assert ours["losses"][:steps] == pytest.approx(trl["losses"][:steps], abs=1e-3)  # fp32 drift
