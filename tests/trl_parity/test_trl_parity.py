"""align_core's log-probs and DPO losses match TRL 0.28 on a real (tiny) model forward pass.

The comparison runs in a subprocess inside an isolated venv (``provision.py``): TRL 0.28 cannot
be imported next to the project's transformers 5.x, and the project environment stays clean.
Skipped, with the command to run, when that venv has not been provisioned.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.trl_parity.provision import TRL_VERSION, is_ready, venv_dir, venv_python

REPO_ROOT = Path(__file__).resolve().parents[2]
SCRIPT = Path(__file__).with_name("compare_trl.py")
TOL = 1e-6


@pytest.fixture(scope="module")
def parity() -> dict[str, Any]:
    root = venv_dir()
    if not is_ready(root):
        pytest.skip(
            f"TRL {TRL_VERSION} parity venv not provisioned at {root}; "
            "run: python tests/trl_parity/provision.py"
        )
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    done = subprocess.run(
        [str(venv_python(root)), str(SCRIPT)], cwd=REPO_ROOT, env=env, capture_output=True,
        text=True, timeout=600, check=False,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def test_trl_version_is_pinned(parity: dict[str, Any]) -> None:
    assert parity["trl_version"] == TRL_VERSION


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_sequence_logps_match_trl(parity: dict[str, Any], dtype: str) -> None:
    """Summed completion log-probs (policy and reference) and IPO's per-token means."""
    diffs = parity[dtype]
    keys = [k for k in diffs if k.endswith("_logps") and not k.startswith("control")]
    assert len(keys) == 6
    assert {k: diffs[k] for k in keys if diffs[k] > TOL} == {}
    assert diffs["control_abs_policy_chosen_logps"] > 1.0
    assert diffs["control_unmasked_prompt_diff"] > 1.0


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_losses_and_rewards_match_trl(parity: dict[str, Any], dtype: str) -> None:
    """sigmoid (ε = 0 and cDPO ε = 0.1), robust (ε = 0.1), IPO; end to end and on TRL's inputs."""
    diffs = parity[dtype]
    keys = [k for k in diffs if k.startswith(("loss_", "chosen_rewards_", "rejected_rewards_"))]
    assert len(keys) == 16
    assert {k: diffs[k] for k in keys if diffs[k] > TOL} == {}


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_parameter_gradients_match_trl(parity: dict[str, Any], dtype: str) -> None:
    assert parity[dtype]["grad_cdpo_params"] <= TOL


def test_spec_vectors_through_trl(parity: dict[str, Any]) -> None:
    """ALGORITHMS.md §0 table values agree with TRL's own dpo_loss (to the table's rounding)."""
    assert {k: v for k, v in parity["spec_vectors"].items() if v > TOL} == {}
