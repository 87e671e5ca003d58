"""The ``reward_model`` method: a Bradley–Terry reward model on preference pairs.

Its spec and the job API (no deploy, pairs only, bounded held-out share), its split (whole
conversations, seeded), its stage's micro-batch shares, a whole job through the worker (the loss
falls, pairs are ranked right on held-out prompts, the checkpoint's reward model loads and scores
chosen answers above rejected ones, the policy adapter is untouched), and a resume from the last
step.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from pydantic import ValidationError
from safetensors.torch import load_file

from contracts.datasets import import_dataset
from contracts.specs import LoraSpec, RewardModelSpec, parse_spec, total_steps
from contracts.store import Job, SqliteJobStore
from server.errors import InvalidRequestError
from server.training import TrainingService
from tests.trainers.conftest import SMALL, jsonl, run_job
from trainers.devices import Placement
from trainers.loop import TrainContext
from trainers.modeling import load_policy, load_tokenizer
from trainers.parallel import Parallel
from trainers.recipes.reward_model import BradleyTerryStage, reward_model_stages, split_pairs
from trainers.reward import RewardModel
from trainers.runner import train_job, write_model

POLITE = ["Hello there, how are you today?", "I am fine, thank you.",
          "I'm sorry, I can't help with that.", "Here is how to bake bread: mix flour and water."]
GIBBERISH = ["zzzz zzzz zzzz zzzz", "qqqqqqqqqqqqqqqq", "xk xk xk xk xk xk", "#### #### ####"]


def contrast_pairs(n: int = 16) -> list[dict[str, Any]]:
    """Chosen answers are polite sentences, rejected ones gibberish: a rule a reward model can
    learn from the answers alone, so held-out prompts are ranked right too."""
    return [{"prompt": f"question {i} please", "chosen": POLITE[i % 4],
             "rejected": GIBBERISH[(i + i // 4) % 4]} for i in range(n)]


def _messages(i: int) -> list[dict[str, str]]:
    return [{"role": "user", "content": f"question {i} please"}]


# -- the spec -------------------------------------------------------------------------------------

def test_spec_defaults_and_steps() -> None:
    spec = parse_spec({"method": "reward_model", "dataset": "d",
                       "hyperparameters": {"max_steps": 7}})
    assert isinstance(spec, RewardModelSpec)
    assert spec.held_out_fraction == 0.1 and spec.deploy is None and total_steps(spec) == 7


def test_deploy_is_refused_with_the_way_to_use_it() -> None:
    with pytest.raises(ValidationError, match="cannot be deployed") as err:
        parse_spec({"method": "reward_model", "dataset": "d", "deploy": {"name": "rm"}})
    assert "/v1/rewards" in str(err.value)
    assert err.value.errors()[0]["loc"] == ("reward_model", "deploy")  # the param of the 400


def test_the_job_api_answers_deploy_with_a_400_on_deploy(
    store: SqliteJobStore, home: Path, tiny_model: Path
) -> None:
    """What ``POST /admin/v1/jobs`` answers: a 400 whose ``param`` is ``deploy``; and a
    reward_model trains on preference pairs only."""
    service = TrainingService(store, home, base_model=str(tiny_model))
    pairs_id = import_dataset(store, home, jsonl(contrast_pairs(4))).id
    with pytest.raises(InvalidRequestError, match="cannot be deployed") as err:
        service.create_job({"method": "reward_model", "dataset": pairs_id,
                            "deploy": {"name": "rm"}})
    assert err.value.param == "deploy" and err.value.status_code == 400
    demos = import_dataset(store, home, jsonl([{"prompt": "q", "completion": "a"}])).id
    with pytest.raises(InvalidRequestError, match="needs a dataset in format pairs"):
        service.create_job({"method": "reward_model", "dataset": demos})
    assert service.create_job({"method": "reward_model", "dataset": pairs_id}).method == \
        "reward_model"


@pytest.mark.parametrize("fraction", [-0.1, 0.6, 1.0, "lots"])
def test_bad_held_out_fraction_is_refused(fraction: object) -> None:
    with pytest.raises(ValidationError, match="held_out_fraction"):
        parse_spec({"method": "reward_model", "dataset": "d", "held_out_fraction": fraction})


def test_full_finetuning_is_refused() -> None:
    with pytest.raises(ValidationError, match="LoRA adapter and a scalar head"):
        parse_spec({"method": "reward_model", "dataset": "d", "finetuning": "full"})


# -- the split ------------------------------------------------------------------------------------

def _records(prompts: list[int]) -> list[dict[str, Any]]:
    return [{"messages": _messages(p), "chosen": "a", "rejected": "b"} for p in prompts]


def test_split_keeps_conversations_together_and_is_seeded() -> None:
    records = _records([0, 0, 1, 1, 2, 2, 3, 3, 4, 4])  # two pairs per prompt
    train, held = split_pairs(records, 0.2, seed=3)
    assert len(held) == 2 and sorted(train + held) == list(range(10))
    assert {records[i]["messages"][0]["content"] for i in held}.isdisjoint(
        {records[i]["messages"][0]["content"] for i in train})
    assert split_pairs(records, 0.2, seed=3) == (train, held)  # a resumed job splits the same


@pytest.mark.parametrize(("prompts", "fraction", "held"), [
    ([0, 1, 2, 3, 4, 5, 6, 7], 0.1, 1),  # round(0.8) = 1
    ([0, 1, 2, 3, 4, 5, 6, 7], 0.01, 1),  # round(0.08) = 0, but asked for: one
    ([0, 1, 2, 3, 4, 5, 6, 7], 0.0, 0),  # none asked for
    ([0, 1], 0.5, 1),
    ([0], 0.5, 0),  # a single pair always trains
    ([5, 5, 5, 5], 0.5, 2),  # one conversation: pairs are split one by one
])
def test_split_sizes(prompts: list[int], fraction: float, held: int) -> None:
    train, out = split_pairs(_records(prompts), fraction, seed=0)
    assert len(out) == held and len(train) == len(prompts) - held


# -- the stage: micro-batch shares add up to the batch's loss and gradient ------------------------

class _Quiet:
    def check(self) -> None:
        return None

    def report(self, step: int, metrics: dict[str, float]) -> None:
        return None

    def event(self, message: str, data: dict[str, Any] | None = None) -> None:
        return None

    def resume_point(self, step: int, path: str) -> None:
        return None


def test_micro_batches_give_the_step_of_the_whole_batch(tiny_model: Path, tmp_path: Path) -> None:
    spec = parse_spec({"method": "reward_model", "dataset": "d", "model": str(tiny_model),
                       "hyperparameters": SMALL, "held_out_fraction": 0.0})
    policy = load_policy(str(tiny_model), "lora", LoraSpec())
    ctx = TrainContext("job", spec, str(tiny_model), tmp_path, load_tokenizer(str(tiny_model)),
                       {"policy": policy}, _Quiet())
    records = [{**r, "messages": _messages(i)} for i, r in enumerate(contrast_pairs(8))]
    (stage,) = reward_model_stages(ctx, records)
    assert isinstance(stage, BradleyTerryStage)
    stage.prepare(ctx)
    assert stage.size() == 8
    params = [p for p in ctx.modules["reward_model"].parameters() if p.requires_grad]

    def step(split: list[list[int]], batch: list[int]) -> tuple[float, list[torch.Tensor]]:
        total, grads = 0.0, [torch.zeros_like(p) for p in params]
        for micro in split:
            loss, metrics = stage.loss(ctx, micro, batch)
            assert 0.0 <= metrics["rm/accuracy"] <= 1.0
            total += float(loss.detach())
            for g, d in zip(grads, torch.autograd.grad(loss, params), strict=True):
                g += d
        return total, grads

    batch = [5, 1, 7, 0, 2, 6]
    whole, whole_grads = step([batch], batch)
    parts, part_grads = step([[5, 1, 7], [0], [2, 6]], batch)
    assert parts == pytest.approx(whole, rel=1e-5, abs=1e-6)
    assert any(float(g.abs().max()) > 0 for g in whole_grads)
    for a, b in zip(part_grads, whole_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


# -- a whole job ----------------------------------------------------------------------------------

def _run(store: SqliteJobStore, home: Path, job: Job) -> tuple[list[dict[str, Any]], Path]:
    _, folder = run_job(store, home, job)
    return store.metrics(job.id), folder


def test_reward_model_learns_to_rank_chosen_over_rejected(
    make_job: Callable[..., Job], store: SqliteJobStore, home: Path
) -> None:
    rows = contrast_pairs(16)
    job = make_job("reward_model", rows, held_out_fraction=0.25,
                   hyperparameters={"max_steps": 12, "learning_rate": 1e-2})
    history, folder = _run(store, home, job)
    losses = [m["loss"] for m in history]
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3 - 0.1  # the BT loss falls
    assert history[-1]["rm/accuracy"] > 0.5 and history[-1]["rm/margin"] > 0

    manifest = json.loads((folder / "manifest.json").read_text())
    summary = manifest["summary"]["reward_model"]
    assert (summary["heldout_pairs"], summary["train_pairs"]) == (4, 12)
    assert summary["heldout_accuracy"] > 0.5  # above chance on prompts it never saw
    info = json.loads((folder / "reward_model" / "reward_model.json").read_text())
    assert info["kind"] == "bradley_terry"
    assert info["heldout_accuracy"] == summary["heldout_accuracy"]

    # The policy adapter every checkpoint carries is untouched: LoRA B starts (and stays) zero.
    adapter = load_file(folder / "adapter_model.safetensors")
    assert all(float(v.abs().max()) == 0 for k, v in adapter.items() if "lora_B" in k)

    # The deployable reward model (what /v1/rewards and Best-of-N load) ranks training pairs.
    reward = RewardModel.load(folder / "reward_model", Path(manifest["base_model"]["path"]))
    records = [{"messages": _messages(i), **r} for i, r in enumerate(rows)]
    train, _ = split_pairs(records, 0.25, seed=0)
    for i in train:
        chosen, rejected = reward.score(_messages(i), [rows[i]["chosen"], rows[i]["rejected"]])
        assert float(chosen) > float(rejected), (i, rows[i])


def test_resume_from_the_last_step_still_saves_the_trained_reward_model(
    tiny_model: Path, tmp_path: Path
) -> None:
    """A resume point at the last step (checkpoint_every divides max_steps): a worker that died
    while writing the checkpoint resumes with no stage left to run, and must still write the
    reward model it trained, not a fresh one."""
    spec = parse_spec({"method": "reward_model", "dataset": "d", "model": str(tiny_model),
                       "hyperparameters": {**SMALL, "max_steps": 2, "checkpoint_every": 2,
                                           "learning_rate": 1e-2}})
    records = [{**r, "messages": _messages(i)} for i, r in enumerate(contrast_pairs(8))]
    work = tmp_path / "work"

    def run(resume: str | None, out: Path) -> dict[str, torch.Tensor]:
        ctx, recipe, _ = train_job("job", spec, str(tiny_model), records, work, _Quiet(),
                                   Placement.cpu(), Parallel(), resume)
        out.mkdir()
        write_model(ctx, recipe, out)
        assert json.loads((out / "reward_model" / "reward_model.json").read_text())[
            "heldout_pairs"] == 1
        return load_file(out / "reward_model" / "adapter_model.safetensors")

    first = run(None, tmp_path / "first")
    (point,) = (work / "resume").iterdir()
    assert point.name == "step-00000002"
    again = run(str(point), tmp_path / "again")
    assert first.keys() == again.keys()
    for name, value in first.items():
        torch.testing.assert_close(again[name], value)

