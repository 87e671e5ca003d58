"""Registry behaviour and the invariants of the shipped registries."""

from __future__ import annotations

from dataclasses import FrozenInstanceError, dataclass

import pytest

from align_core import (
    PAIR_LOSSES,
    POINTWISE_LOSSES,
    WEIGHTINGS,
    DuplicateNameError,
    Registry,
    UnknownNameError,
)


@dataclass(frozen=True)
class Entry:
    value: int
    needs_reference: bool = True


def test_register_get_and_names_keep_order() -> None:
    reg: Registry[Entry] = Registry("thing")
    reg.register("b", Entry(2))
    reg.register("a", Entry(1))
    assert reg.names() == ("b", "a")
    assert reg.get("a").value == 1
    assert reg["b"].value == 2
    assert "a" in reg and "c" not in reg
    assert list(reg) == ["b", "a"] and len(reg) == 2
    assert [name for name, _ in reg.items()] == ["b", "a"]


def test_duplicate_name_is_an_error() -> None:
    reg: Registry[Entry] = Registry("thing")
    reg.register("a", Entry(1))
    with pytest.raises(DuplicateNameError, match="already registered"):
        reg.register("a", Entry(2))
    assert reg.get("a").value == 1


def test_unknown_name_lists_valid_names() -> None:
    reg: Registry[Entry] = Registry("thing")
    reg.register("alpha", Entry(1))
    reg.register("beta", Entry(2))
    with pytest.raises(UnknownNameError) as info:
        reg.get("gamma")
    message = str(info.value)
    assert "gamma" in message and "alpha, beta" in message
    # Catchable as either KeyError or ValueError.
    with pytest.raises(KeyError):
        reg["gamma"]
    with pytest.raises(ValueError):
        reg.get("gamma")


def test_empty_name_rejected() -> None:
    reg: Registry[Entry] = Registry("thing")
    with pytest.raises(ValueError):
        reg.register("", Entry(1))


def test_entries_are_frozen() -> None:
    entry = PAIR_LOSSES.get("dpo")
    with pytest.raises(FrozenInstanceError):
        entry.needs_reference = False  # type: ignore[misc]


def test_shipped_registry_names() -> None:
    assert PAIR_LOSSES.names() == (
        "dpo", "ipo", "robust_dpo", "rdpo", "rdpo_filter", "rdpo_weighted", "rdpo_margin",
    )
    assert POINTWISE_LOSSES.names() == (
        "pointwise_dpo", "pointwise_dpo_continuous", "ulma", "ulma_beta_logloss",
        "ulma_continuous", "unlikelihood",
    )
    assert WEIGHTINGS.names() == ("softmax", "mean", "sigmoid", "uniform")


def test_capability_flags() -> None:
    assert all(PAIR_LOSSES.get(n).needs_reference for n in PAIR_LOSSES)
    scored = {n for n in PAIR_LOSSES if PAIR_LOSSES.get(n).needs_reward_scores}
    assert scored == {"rdpo", "rdpo_filter", "rdpo_weighted", "rdpo_margin"}
    assert not POINTWISE_LOSSES.get("unlikelihood").needs_reference
    assert not POINTWISE_LOSSES.get("pointwise_dpo_continuous").group_wise
    # Gallego's rDPO and Chowdhury's robust DPO are distinct entries.
    assert PAIR_LOSSES.get("rdpo").fn is not PAIR_LOSSES.get("robust_dpo").fn
