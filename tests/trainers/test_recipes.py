"""Each method on the tiny model: parameters change and the loss moves as the method predicts.

Jobs run in-process through the real worker code path (store, loop, checkpoint, manifest).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from contracts.store import Job, SqliteJobStore
from tests.trainers.conftest import demonstrations, pairs, pointwise, run_job
from trainers.worker import Worker, WorkerConfig

LR = {"learning_rate": 1e-2}
GEN = {"generation": {"max_new_tokens": 6}}


def _run(store: SqliteJobStore, home: Path, job: Job) -> tuple[list[dict[str, Any]], Path]:
    done, folder = run_job(store, home, job)
    history = store.metrics(job.id)
    assert [m["step"] for m in history] == list(range(1, done.total_steps + 1))
    return history, folder


def _lora_changed(folder: Path) -> None:
    weights = load_file(folder / "adapter_model.safetensors")
    lora_b = [v for k, v in weights.items() if "lora_B" in k]
    assert lora_b and any(float(v.abs().max()) > 0 for v in lora_b)  # B starts at zero


def _manifest(folder: Path) -> dict[str, Any]:
    manifest: dict[str, Any] = json.loads((folder / "manifest.json").read_text())
    return manifest


def test_dpo_raises_the_chosen_margin(make_job: Callable[..., Job], store: SqliteJobStore,
                                      home: Path) -> None:
    job = make_job("dpo", pairs(), hyperparameters={"max_steps": 6, **LR})
    history, folder = _run(store, home, job)
    assert history[0]["loss"] == pytest.approx(0.693147, abs=1e-4)  # policy == reference
    assert history[-1]["loss"] < history[0]["loss"] - 0.05
    assert history[-1]["rewards/margin"] > 0
    _lora_changed(folder)
    manifest = _manifest(folder)
    assert manifest["config"]["method"] == "dpo" and manifest["format"] == "peft-lora"
    assert manifest["base_model"]["config_sha256"]
    assert manifest["data"]["dataset"]["records"] == 8


def test_dpo_full_finetuning_changes_the_weights(
    make_job: Callable[..., Job], store: SqliteJobStore, home: Path, tiny_model: Path
) -> None:
    job = make_job("dpo", pairs(), finetuning="full",
                   hyperparameters={"max_steps": 3, "learning_rate": 1e-3})
    history, folder = _run(store, home, job)
    assert history[-1]["loss"] < history[0]["loss"]
    before = load_file(tiny_model / "model.safetensors")
    after = load_file(folder / "model.safetensors")
    assert any(not torch.equal(before[k], after[k]) for k in before)


def test_dpo_with_the_chosen_nll_lowers_the_chosen_answers_nll(
        make_job: Callable[..., Job], store: SqliteJobStore, home: Path) -> None:
    job = make_job("dpo", pairs(), rpo_alpha=1.0, hyperparameters={"max_steps": 6, **LR})
    history, _ = _run(store, home, job)
    assert history[0]["loss"] > 0.693147 + 0.1  # log 2 plus the NLL term
    assert history[-1]["nll/chosen"] < history[0]["nll/chosen"]


def test_sft_lowers_the_answers_nll(make_job: Callable[..., Job], store: SqliteJobStore,
                                    home: Path) -> None:
    job = make_job("sft", demonstrations(), hyperparameters={"max_steps": 6, **LR})
    history, folder = _run(store, home, job)
    assert history[-1]["loss"] < history[0]["loss"] - 0.1
    _lora_changed(folder)
    assert _manifest(folder)["config"]["method"] == "sft"


@pytest.mark.parametrize("method", ["pointwise_dpo", "ulma"])
def test_pointwise_methods_push_negatives_down(
    method: str, make_job: Callable[..., Job], store: SqliteJobStore, home: Path
) -> None:
    # batch = whole dataset, so both label groups are in every step (group-wise reduction)
    job = make_job(method, pointwise(), hyperparameters={
        "max_steps": 6, "batch_size": 8, "learning_rate": 3e-3, "beta": 1.0})
    history, folder = _run(store, home, job)
    assert history[-1]["loss"] < history[0]["loss"]
    assert history[-1]["rewards/negative"] < 0  # negatives' implicit reward went down
    if method == "pointwise_dpo":
        assert history[-1]["rewards/positive"] > 0
    else:  # ULMA: positives are plain SFT, their log-likelihood rises
        assert history[-1]["logps/positive"] > history[0]["logps/positive"]
    _lora_changed(folder)


def test_rdpo_scores_pairs_and_trains_with_soft_labels(
    make_job: Callable[..., Job], store: SqliteJobStore, home: Path
) -> None:
    job = make_job("rdpo", pairs(), hyperparameters={"max_steps": 6, "learning_rate": 3e-3})
    history, folder = _run(store, home, job)
    summary = _manifest(folder)["summary"]["rdpo"]
    assert summary["mean_chosen_score"] == 1.0 and summary["mean_rejected_score"] == 0.0
    # Refusal scores (1, 0) give the soft label p = σ(1) ≈ 0.731. The loss starts at log 2 and
    # falls, but never below the label's entropy H(p) ≈ 0.582 (reached at βh = 1).
    p = 1 / (1 + math.exp(-1))
    entropy = -(p * math.log(p) + (1 - p) * math.log(1 - p))
    assert history[0]["loss"] == pytest.approx(0.693147, abs=1e-4)
    assert entropy - 1e-4 < min(m["loss"] for m in history) < history[0]["loss"]
    assert history[-1]["rewards/margin"] > 0
    _lora_changed(folder)


def test_rdpo_synthesises_pairs_by_self_critique(
    make_job: Callable[..., Job], store: SqliteJobStore, home: Path
) -> None:
    prompts = [{"prompt": f"question {i}"} for i in range(4)]
    job = make_job("rdpo", prompts, max_prompts=4, **GEN,
                   hyperparameters={"max_steps": 2, **LR})
    _, folder = _run(store, home, job)
    assert _manifest(folder)["summary"]["rdpo"]["pairs"] == 4
    data = torch.load(home / "jobs" / job.id / "rdpo-data.pt", weights_only=False)
    assert all(p["chosen"] and p["rejected"] and p["critique"] for p in data["pairs"])


def test_ld_align_weights_pairs_and_iterates(
    make_job: Callable[..., Job], store: SqliteJobStore, home: Path
) -> None:
    job = make_job("ld_align", demonstrations(), iterations=2, autoencoder_steps=30,
                   weighting="softmax", **GEN, hyperparameters={"max_steps": 6, **LR})
    history, folder = _run(store, home, job)
    iterations = _manifest(folder)["summary"]["ld_align"]
    assert [it["iteration"] for it in iterations] == [0, 1]
    assert all(it["min_weight"] < it["max_weight"] for it in iterations)  # not uniform
    first = [m for m in history if m["stage"] == 0]
    assert first[-1]["loss"] < first[0]["loss"]  # winners pulled above self-generated losers
    _lora_changed(folder)


def test_afd_trains_sft_then_a_reward_model(
    make_job: Callable[..., Job], store: SqliteJobStore, home: Path
) -> None:
    job = make_job("afd", demonstrations(), max_prompts=8, samples_per_prompt=1,
                   reward_learning_rate=1e-2, **GEN, hyperparameters={"max_steps": 8, **LR})
    history, folder = _run(store, home, job)
    sft = [m for m in history if m["stage"] == 0]
    rm = [m for m in history if m["stage"] == 1]
    assert sft[-1]["loss"] < sft[0]["loss"]  # demonstrations' likelihood rises
    assert rm[-1]["loss"] < rm[0]["loss"]  # the discriminator separates SFT from init samples
    assert (folder / "reward_model" / "adapter_config.json").is_file()
    assert (folder / "reward_model" / "reward_model.json").is_file()
    assert "reward_model_heldout_accuracy" in _manifest(folder)["summary"]["afd"]
    _lora_changed(folder)
    # The deployable reward model scores pairs of different conversations as it scores each.
    from trainers.reward import RewardModel

    reward = RewardModel.load(
        folder / "reward_model", Path(_manifest(folder)["base_model"]["path"])
    )
    hello = [{"role": "user", "content": "Hello there"}]
    bread = [{"role": "user", "content": "How do I bake bread?"}]
    alone = reward.score(hello, ["Hi!", "I am fine, thank you."])
    mixed = reward.score_pairs(
        [(hello, "Hi!"), (bread, "Mix flour and water."), (hello, "I am fine, thank you.")],
        batch_size=2,
    )
    assert mixed.shape == (3,)
    torch.testing.assert_close(mixed[[0, 2]], alone, rtol=1e-5, atol=1e-5)


def test_a_diverged_run_fails_and_leaves_no_checkpoint(
    make_job: Callable[..., Job], store: SqliteJobStore, home: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Fault injection: from its third step on, the DPO loss turns NaN (as a diverged run's does).
    from trainers.recipes import stages

    real_loss = stages.PairStage.loss
    calls = {"n": 0}

    def diverging(self: Any, *args: Any, **kwargs: Any) -> Any:
        loss, extra = real_loss(self, *args, **kwargs)
        calls["n"] += 1
        return (loss * float("nan"), extra) if calls["n"] >= 3 else (loss, extra)

    monkeypatch.setattr(stages.PairStage, "loss", diverging)
    job = make_job("dpo", pairs(), hyperparameters={"max_steps": 6, **LR})
    Worker(store, WorkerConfig(home, worker_id="test")).run_forever(max_jobs=1)
    done = store.get_job(job.id)
    assert done is not None and done.status == "failed", done
    assert done.error is not None and "step 3" in done.error and "learning rate" in done.error
    assert done.checkpoint_id is None
    assert [m["step"] for m in store.metrics(job.id)] == [1, 2]
