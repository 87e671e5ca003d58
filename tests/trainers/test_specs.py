"""Job specs: the minimal body, forbidden extras, loss names read from the registries."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from align_core import PAIR_LOSSES, POINTWISE_LOSSES, WEIGHTINGS
from contracts.specs import METHODS, AfDSpec, DPOSpec, parse_spec, total_steps


def test_minimal_body_is_valid_with_defaults() -> None:
    spec = parse_spec({"method": "dpo", "dataset": "ds-1", "hyperparameters": {"max_steps": 3}})
    assert isinstance(spec, DPOSpec)
    assert (spec.loss, spec.finetuning, spec.hyperparameters.max_steps) == ("dpo", "lora", 3)
    assert spec.model is None and spec.deploy is None


@pytest.mark.parametrize("method", METHODS)
def test_every_method_has_a_spec(method: str) -> None:
    assert parse_spec({"method": method, "dataset": "d"}).method == method


@pytest.mark.parametrize("body", [
    {"method": "dpo", "dataset": "d", "unknown": 1},
    {"method": "dpo", "dataset": "d", "hyperparameters": {"max_step": 3}},
    {"method": "dpo", "dataset": "d", "hyperparameters": {"max_steps": 0}},
    {"method": "nope", "dataset": "d"},
    {"method": "dpo"},
    {"method": "ulma", "dataset": "d", "iterations": 2},  # an ld_align field
])
def test_invalid_bodies_are_refused(body: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        parse_spec(body)


@pytest.mark.parametrize("name", [n for n, e in PAIR_LOSSES.items() if not e.needs_reward_scores])
def test_dpo_accepts_every_unscored_pair_loss(name: str) -> None:
    assert parse_spec({"method": "dpo", "dataset": "d", "loss": name}).loss == name  # type: ignore[attr-defined]


@pytest.mark.parametrize("name", [n for n, e in PAIR_LOSSES.items() if e.needs_reward_scores])
def test_rdpo_accepts_every_scored_pair_loss_and_dpo_refuses_them(name: str) -> None:
    assert parse_spec({"method": "rdpo", "dataset": "d", "loss": name}).loss == name  # type: ignore[attr-defined]
    with pytest.raises(ValidationError, match="not usable here"):
        parse_spec({"method": "dpo", "dataset": "d", "loss": name})


@pytest.mark.parametrize("name", POINTWISE_LOSSES.names())
def test_pointwise_methods_accept_registry_losses(name: str) -> None:
    for method in ("pointwise_dpo", "ulma"):
        assert parse_spec({"method": method, "dataset": "d", "loss": name}).loss == name  # type: ignore[attr-defined]


def test_unknown_loss_lists_the_valid_names() -> None:
    with pytest.raises(ValidationError) as err:
        parse_spec({"method": "dpo", "dataset": "d", "loss": "dop"})
    assert all(name in str(err.value) for name in PAIR_LOSSES.names())


def test_loss_options_are_checked_against_the_registry() -> None:
    ok = parse_spec({"method": "dpo", "dataset": "d", "loss_options": {"label_smoothing": 0.1}})
    assert ok.loss_options == {"label_smoothing": 0.1}  # type: ignore[attr-defined]
    with pytest.raises(ValidationError, match="not accepted"):
        parse_spec({"method": "dpo", "dataset": "d", "loss": "ipo",
                    "loss_options": {"label_smoothing": 0.1}})


@pytest.mark.parametrize("name", WEIGHTINGS.names())
def test_ld_align_weightings_from_registry(name: str) -> None:
    assert parse_spec({"method": "ld_align", "dataset": "d", "weighting": name}).weighting == name  # type: ignore[attr-defined]


def test_deploy_flag_is_stored_in_the_resolved_config() -> None:
    spec = parse_spec({"method": "dpo", "dataset": "d", "deploy": {"name": "safe-v1"}})
    assert spec.model_dump()["deploy"] == {"name": "safe-v1", "mode": None, "gate": None}


def test_total_steps_counts_every_stage() -> None:
    spec = parse_spec({"method": "afd", "dataset": "d", "hyperparameters": {"max_steps": 1}})
    assert isinstance(spec, AfDSpec) and total_steps(spec) == 2


def test_resources_default_to_one_in_process_device() -> None:
    spec = parse_spec({"method": "dpo", "dataset": "d"})
    assert spec.model_dump()["resources"] == {"devices": 1, "strategy": "single", "nodes": 1}
    assert not spec.resources.distributed
    hp = spec.model_dump()["hyperparameters"]
    assert hp["micro_batch_size"] is None and hp["gradient_checkpointing"] is False


@pytest.mark.parametrize(("resources", "strategy", "world"), [
    ({"devices": 2}, "ddp", 2),  # several devices: data-parallel unless told otherwise
    ({"devices": 2, "nodes": 2, "strategy": "fsdp"}, "fsdp", 4),
    ({"devices": 1, "strategy": "ddp"}, "ddp", 1),  # a one-rank torchrun run
])
def test_resources_choose_a_strategy(resources: dict[str, object], strategy: str,
                                     world: int) -> None:
    spec = parse_spec({"method": "dpo", "dataset": "d", "resources": resources,
                       "hyperparameters": {"batch_size": 4}})
    assert spec.resources.strategy == strategy and spec.resources.world_size == world
    assert spec.resources.distributed


@pytest.mark.parametrize(("resources", "hyper", "message"), [
    ({"devices": 2, "strategy": "single"}, {}, "use 'ddp' or 'fsdp'"),
    ({"devices": 0}, {}, "greater than or equal to 1"),
    ({"devices": 2, "strategy": "zero3"}, {}, "'single', 'ddp' or 'fsdp'"),
    ({"devices": 2, "gpus": 2}, {}, "Extra inputs"),
    ({"devices": 2}, {"batch_size": 3}, "multiple of devices x nodes = 2"),
    ({"devices": 2}, {"batch_size": 8, "micro_batch_size": 3}, "divide each process's share"),
    ({}, {"batch_size": 4, "micro_batch_size": 8}, "divide each process's share"),
])
def test_resources_and_micro_batches_are_validated(
    resources: dict[str, object], hyper: dict[str, object], message: str
) -> None:
    with pytest.raises(ValidationError, match=message):
        parse_spec({"method": "dpo", "dataset": "d", "resources": resources,
                    "hyperparameters": hyper})
