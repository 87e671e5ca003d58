"""Our DPO trainer and TRL 1.16's ``DPOTrainer`` agree on the same job, step by step.

Same tiny random Llama and tokenizer (``tests/trainers/tiny.py``), same six preference pairs in
the same order, LoRA (r 8 on q/k/v/o), batch 2, beta 0.1, ``torch.optim.AdamW`` at a constant
1e-2 (large, so that later steps move the loss well away from log 2), clipping and seed. Ours
runs in this process through ``trainers.loop.train`` (the ``dpo`` recipe), exactly as
``bench/training.py`` runs it; TRL runs ``bench/trl_dpo_baseline.py`` in its own venv
(``provision.py``), with and without ``precompute_ref_log_probs``. Checked: the first step's loss
(log 2 on both sides: a fresh adapter makes the policy the reference), the loss of every later
step (which depends on both trainers' log-probs, loss, gradients, clipping and AdamW update
agreeing), the first batch's per-example log-probs and the token ids of every example.

The ``rpo`` case adds the chosen-answer NLL (``rpo_alpha``; TRL 1.16: ``loss_type=["sigmoid",
"sft"]``, ``loss_weights=[1, rpo_alpha]``) and checks the same things.

Skipped, with the command to run, when the TRL venv has not been provisioned.

Why TRL 0.28 is no longer compared: TRL 1.16 removed the functions that test called
(``concatenated_forward``, ``dpo_loss``) and cDPO (``label_smoothing`` on the sigmoid loss); the
loss formulas themselves, cDPO included, are pinned by the docs/algorithms.md §0 vectors in
``tests/align_core/test_pair_losses.py``, and this end-to-end check against the current TRL
covers log-probs, gradients and updates on real trainer code. Keeping 0.28 would cost a second
1.4 GB venv on a transformers 4.57 that the project no longer runs, for no check this one lacks
but cDPO against an implementation TRL itself has dropped.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest

from bench.training import (
    LockstepControl,
    compare_tokens,
    make_spec,
    train_ours,
    training_order,
    trl_job,
)
from bench.trl_dpo_baseline import TrlProcess
from tests.trainers.tiny import build_tiny_model
from tests.trl_parity.provision import TRL_VERSION, is_ready, venv_dir
from trainers.modeling import load_tokenizer

STEPS = 3
PAIRS = [
    {"messages": [{"role": "user", "content": f"question {i} please"}],
     "chosen": "I'm sorry, I can't help with that." if i % 2 else "Hello there, friend.",
     "rejected": f"Here is how to bake bread {i}: mix flour, water and salt."}
    for i in range(2 * STEPS)
]


RPO_ALPHA = 0.5


@pytest.fixture(scope="module", params=[(True, None), (False, None), (True, RPO_ALPHA)],
                ids=["precompute", "per-step-ref", "rpo"])
def parity(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
           ) -> dict[str, Any]:
    root = venv_dir()
    if not is_ready(root):
        pytest.skip(f"TRL {TRL_VERSION} venv not provisioned at {root}; "
                    "run: .venv/bin/python tests/trl_parity/provision.py")
    tmp = tmp_path_factory.mktemp("trl-parity")
    model = build_tiny_model(tmp / "model")
    tokenizer = load_tokenizer(str(model))
    precompute, rpo_alpha = request.param
    spec = make_spec(model, STEPS, batch_size=2, learning_rate=1e-2, beta=0.1, max_length=64,
                     max_prompt_length=32, seed=0, rpo_alpha=rpo_alpha)
    ordered = [PAIRS[i] for i in training_order(spec, len(PAIRS))]
    speed = {"precompute_ref_log_probs": precompute}
    trl = TrlProcess(trl_job(spec, ordered, model, speed), tmp, free_run=True)
    try:
        control = LockstepControl(None)
        first = train_ours(spec, tokenizer, PAIRS, Path(tmp) / "work", control)
        result = trl.finish(timeout=600)
    finally:
        trl.kill()
    return {"ours": [m["loss"] for m in control.metrics], "first": first, "trl": result,
            "token_mismatches": compare_tokens(spec, tokenizer, ordered, result["tokens"]),
            "precompute": precompute, "rpo_alpha": rpo_alpha}


def test_trl_version_and_settings(parity: dict[str, Any]) -> None:
    trl = parity["trl"]
    assert trl["versions"]["trl"] == TRL_VERSION
    assert trl["optimizer"] == "AdamW"
    assert trl["settings"]["precompute_ref_log_probs"] is parity["precompute"]
    assert trl["settings"]["bf16"] is False


def test_first_step_loss_equal(parity: dict[str, Any]) -> None:
    ours, theirs = parity["ours"][0], parity["trl"]["losses"][0]
    if parity["rpo_alpha"] is None:
        assert ours == pytest.approx(math.log(2), abs=1e-6)
    else:  # log 2 plus rpo_alpha x the chosen answers' token-mean NLL (docs/algorithms.md §0.2)
        assert ours > math.log(2) + 0.1
    assert abs(ours - theirs) < 1e-6


def test_every_step_loss_equal(parity: dict[str, Any]) -> None:
    ours, theirs = parity["ours"], parity["trl"]["losses"]
    assert len(ours) == len(theirs) == STEPS
    assert max(abs(a - b) for a, b in zip(ours, theirs, strict=True)) < 1e-4
    assert abs(ours[-1] - math.log(2)) > 1e-2  # the updates moved the loss: the check has teeth


def test_first_batch_logps_equal(parity: dict[str, Any]) -> None:
    ours, theirs = parity["first"], parity["trl"]["first_batch_logps"]
    assert sorted(ours) == sorted(theirs) == [
        "policy_chosen", "policy_rejected", "reference_chosen", "reference_rejected"]
    for key, values in ours.items():
        assert len(values) == 2
        assert values == pytest.approx(theirs[key], abs=1e-4), key
    assert min(abs(v) for v in ours["policy_chosen"]) > 1.0  # real sums, not zeros


def test_tokens_equal(parity: dict[str, Any]) -> None:
    assert parity["token_mismatches"] == 0
    assert len(parity["trl"]["tokens"]) == len(PAIRS)
