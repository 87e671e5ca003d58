"""The eval subcommands parse and build the right configurations (no server involved)."""

from __future__ import annotations

from pathlib import Path

from server.cli import build_parser
from server.evaluation.commands import _configs, run_eval_command


def test_eval_single_configuration() -> None:
    args = build_parser().parse_args(
        ["eval", "--model", "m", "--alignment", '{"preset": "harmless", "alpha": 3}',
         "--suite", "harmful:5", "--limit", "7"])
    assert args.eval_action is None and args.suite == ["harmful:5"] and args.limit == 7
    (config,) = _configs(args)
    assert config.model == "m" and config.alignment == {"preset": "harmless", "alpha": 3}


def test_eval_compare_standard_plus_extra_config(tmp_path: Path) -> None:
    args = build_parser().parse_args(
        ["eval", "compare", "--standard", "--model", "m", "--alphas", "1,3",
         "--checkpoint", "ck", "--config", 'concise={"alignment": {"preset": "concise"}}'])
    names = [c.name for c in _configs(args)]
    assert names == ["base", "principle in prompt", "LA alpha=1", "LA alpha=3", "ck",
                     "ck + LA alpha=3", "concise"]


def test_bad_arguments_exit_2_before_any_request(tmp_path: Path) -> None:
    lines: list[str] = []
    args = build_parser().parse_args(["eval", "--model", "m", "--alignment", "{not json"])
    assert run_eval_command(args, tmp_path, lines.append) == 2
    assert "not valid JSON" in lines[0]
    args = build_parser().parse_args(["eval", "compare", "--model", "m"])
    assert run_eval_command(args, tmp_path, lines.append) == 2
