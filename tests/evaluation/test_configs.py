"""Configurations: answer-relevant keys, strict parsing, the standard comparison rows."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from server.evaluation.configs import (
    ConfigError,
    EvalConfig,
    SamplingParams,
    config_from_dict,
    load_config_file,
    parse_config_arg,
    standard_configs,
)

S = SamplingParams()


def test_key_ignores_the_name_but_not_alpha_or_sampling() -> None:
    a = EvalConfig("a", "m", {"preset": "harmless", "alpha": 3.0})
    assert a.key(S) == EvalConfig("renamed", "m", {"alpha": 3.0, "preset": "harmless"}).key(S)
    assert a.key(S) != EvalConfig("a", "m", {"preset": "harmless", "alpha": 5.0}).key(S)
    assert a.key(S) != a.key(SamplingParams(max_tokens=64))
    assert len(a.key(S)) == 12


def test_request_parts() -> None:
    c = EvalConfig("c", "m", {"preset": "concise"}, system="Be brief.")
    assert c.messages("hi") == [{"role": "system", "content": "Be brief."},
                                {"role": "user", "content": "hi"}]
    assert c.extra_body() == {"alignment": {"preset": "concise"}}
    assert EvalConfig("b", "m").extra_body() is None


def test_unknown_keys_and_missing_model_fail() -> None:
    with pytest.raises(ConfigError, match="unknown config key"):
        config_from_dict({"name": "x", "model": "m", "alpha": 3})
    with pytest.raises(ConfigError, match="'model' is missing"):
        config_from_dict({"name": "x"})
    assert config_from_dict({"name": "x"}, default_model="m").model == "m"


def test_parse_config_arg_and_file(tmp_path: Path) -> None:
    c = parse_config_arg('la3={"alignment": {"preset": "harmless", "alpha": 3}}', "m")
    assert (c.name, c.model, c.alignment) == ("la3", "m", {"preset": "harmless", "alpha": 3})
    with pytest.raises(ConfigError):
        parse_config_arg("no-equals-sign", "m")
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"configs": [{"name": "base"}, {"name": "ck", "model": "ckpt"}]}))
    assert [(c.name, c.model) for c in load_config_file(path, "m")] == [
        ("base", "m"), ("ck", "ckpt")]


def test_standard_rows() -> None:
    rows = standard_configs("m", {"preset": "harmless"}, (1, 3, 5), checkpoints=["dpo-ckpt"])
    assert [r.name for r in rows] == [
        "base", "principle in prompt", "LA alpha=1", "LA alpha=3", "LA alpha=5",
        "dpo-ckpt", "dpo-ckpt + LA alpha=3"]
    assert rows[0].alignment is None
    assert rows[1].alignment == {"preset": "harmless", "alpha": 0.0}  # z_p alone
    assert rows[6].model == "dpo-ckpt" and rows[6].alignment == {"preset": "harmless", "alpha": 3.0}


def test_best_of_n_rows_sample_and_send_the_reward_model() -> None:
    rows = standard_configs("m", {"preset": "harmless"}, (3,), reward_models=["ckpt-afd"],
                            best_of=4, best_of_temperature=0.7)
    row = rows[-1]
    assert row.name == "best-of-4 (ckpt-afd)" and row.model == "m"
    assert row.extra_body() == {"best_of_n": {"n": 4, "reward_model": "ckpt-afd"}}
    assert row.temperature == 0.7
    greedy = SamplingParams()
    assert row.key(greedy) != EvalConfig("x", "m").key(greedy)


def test_unset_best_of_n_and_temperature_leave_existing_keys_unchanged() -> None:
    """Stored answers of a run made before these fields existed must still be found."""
    config = EvalConfig("base", "m", {"preset": "harmless", "alpha": 3.0})
    assert config.key(SamplingParams()) == "c3efda81c08a"


def test_config_dict_validates_best_of_n_and_temperature() -> None:
    ok = config_from_dict({"name": "b", "model": "m", "best_of_n": {"n": 2, "reward_model": "r"},
                           "temperature": 1})
    assert ok.temperature == 1.0 and ok.best_of_n == {"n": 2, "reward_model": "r"}
    with pytest.raises(ConfigError, match="best_of_n"):
        config_from_dict({"name": "b", "model": "m", "best_of_n": 4})
    with pytest.raises(ConfigError, match="temperature"):
        config_from_dict({"name": "b", "model": "m", "temperature": "hot"})
