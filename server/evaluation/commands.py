"""``alignserve eval`` (one configuration) and ``alignserve eval compare`` (several, one table).

Both talk to a running server over HTTP with the ``openai`` client, so they measure exactly what
clients get. Progress goes to stderr; the output directory receives results.jsonl (answers,
resumable), judgments.jsonl, report.json, results.md and PNG charts. Heavy imports (torch,
transformers, matplotlib, openai) happen only when a command runs.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import re
import shlex
import sys
from pathlib import Path

from server.assets import ProgressFn
from server.evaluation.configs import (
    ConfigError,
    EvalConfig,
    SamplingParams,
    check_unique,
    load_config_file,
    parse_alignment,
    parse_config_arg,
    standard_configs,
)
from server.evaluation.suites import SUITES, load_suite, parse_suite_spec

DEFAULT_BASE_URL = "http://127.0.0.1:8000/v1"
DEFAULT_SUITES = ("harmful", "helpful", "jailbreak")


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None, help="Served model name (see GET /v1/models).")
    p.add_argument("--suite", action="append", default=None, metavar="NAME[:LIMIT]",
                   help=f"Suite, repeatable ({', '.join(SUITES.names())}); default: all.")
    p.add_argument("--limit", type=int, default=40, help="First N prompts of each suite.")
    p.add_argument("--base-url", default=DEFAULT_BASE_URL)
    p.add_argument("--api-key", default=None, help="Default: $ALIGNSERVE_API_KEY.")
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--max-tokens", type=int, default=96)
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output", type=Path, default=None,
                   help="Output folder (default: $ALIGNSERVE_HOME/eval/<name>); rerun to resume.")
    p.add_argument("--reward-url", default=None, help="Optional reward scoring endpoint.")
    p.add_argument("--reward-model", default=None)


def add_eval_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``alignserve eval`` and its ``compare`` subcommand."""
    _add_common(parser)
    parser.add_argument("--name", default=None, help="Label of the configuration.")
    parser.add_argument("--alignment", default=None,
                        help='Alignment extension as JSON, e.g. \'{"preset": "harmless"}\'.')
    parser.add_argument("--system", default=None, help="System message to send.")
    sub = parser.add_subparsers(dest="eval_action")
    cmp = sub.add_parser("compare", help="Several configurations over the same prompts.")
    _add_common(cmp)
    cmp.add_argument("--config-file", type=Path, default=None,
                     help='JSON list of {"name", "model"?, "alignment"?, "system"?}.')
    cmp.add_argument("--config", action="append", default=[], metavar="NAME=JSON")
    cmp.add_argument("--standard", action="store_true",
                     help="Base, principle in prompt, LA at --alphas, and --checkpoint rows.")
    cmp.add_argument("--preset", default="harmless", help="Principle preset for --standard.")
    cmp.add_argument("--principle", default=None, help="Principle text (instead of --preset).")
    cmp.add_argument("--alphas", default="1,3,5")
    cmp.add_argument("--checkpoint", action="append", default=[],
                     help="Served name of a trained checkpoint (adds it and it + LA).")
    cmp.add_argument("--best-of-n", action="append", default=[], metavar="REWARD_CHECKPOINT",
                     help="An AfD reward-model checkpoint id: adds a Best-of-N row on --model.")
    cmp.add_argument("--best-of-n-count", type=int, default=4, help="N for --best-of-n rows.")
    cmp.add_argument("--best-of-n-temperature", type=float, default=0.7,
                     help="Sampling temperature of the --best-of-n candidates.")
    cmp.add_argument("--judge-model", default=None, help="Judge (default: the first model).")
    cmp.add_argument("--judge-suite", action="append", default=None)
    cmp.add_argument("--baseline", default=None, help="Win-rate baseline (default: first row).")
    cmp.add_argument("--no-judge", action="store_true")


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "run"


def _configs(args: argparse.Namespace) -> list[EvalConfig]:
    if args.eval_action != "compare":
        if not args.model:
            raise ConfigError("--model is required")
        alignment = parse_alignment(args.alignment)
        name = args.name or (args.model if alignment is None else f"{args.model} + alignment")
        return [EvalConfig(name, args.model, alignment, args.system)]
    configs: list[EvalConfig] = []
    if args.standard:
        if not args.model:
            raise ConfigError("--standard needs --model")
        principle = ({"principle": args.principle} if args.principle
                     else {"preset": args.preset})
        alphas = [float(a) for a in args.alphas.split(",") if a.strip()]
        configs += standard_configs(
            args.model, principle, alphas, args.checkpoint, reward_models=args.best_of_n,
            best_of=args.best_of_n_count, best_of_temperature=args.best_of_n_temperature,
        )
    if args.config_file is not None:
        configs += load_config_file(args.config_file, args.model)
    configs += [parse_config_arg(text, args.model) for text in args.config]
    if not configs:
        raise ConfigError("give --standard, --config-file or --config name=JSON")
    check_unique(configs)
    return configs


def run_eval_command(args: argparse.Namespace, home: Path, say: ProgressFn) -> int:
    """Entry point of ``alignserve eval [compare]``; returns the exit status."""
    try:
        configs = _configs(args)
        specs = [parse_suite_spec(s, args.limit) for s in (args.suite or DEFAULT_SUITES)]
    except (ConfigError, ValueError, KeyError) as exc:
        say(f"error: {exc}")
        return 2
    from server.evaluation.evaluate import (
        EvalPlan,
        JudgeSpec,
        build_scorers,
        evaluate_and_close,
    )
    from server.evaluation.reward import HTTPRewardScorer
    from server.evaluation.runner import OpenAIGenerator

    for noisy in ("httpx", "httpx2"):  # one INFO line per request drowns the progress lines
        logging.getLogger(noisy).setLevel(logging.WARNING)

    api_key = args.api_key or os.environ.get("ALIGNSERVE_API_KEY") or "none"
    label = configs[0].name if len(configs) == 1 else "compare"
    output = args.output or home / "eval" / _slug(label)
    suites = {name: load_suite(name, home, limit, say) for name, limit in specs}
    judge = None
    if args.eval_action == "compare" and not args.no_judge and len(configs) > 1:
        judge = JudgeSpec(model=args.judge_model or configs[0].model,
                          baseline=args.baseline or configs[0].name,
                          suites=tuple(args.judge_suite or ("helpful",)))
    reward = (HTTPRewardScorer(args.reward_url, args.reward_model, api_key)
              if args.reward_url else None)
    plan = EvalPlan(
        configs=tuple(configs), suites=suites,
        sampling=SamplingParams(args.max_tokens, args.temperature, 1.0, args.seed),
        output=output, concurrency=args.concurrency, judge=judge,
        meta={"command": " ".join(shlex.quote(a) for a in ["alignserve", *sys.argv[1:]]),
              "base_url": args.base_url},
    )
    say(f"output: {output}")
    scorers = build_scorers(home, say, reward)
    generator = OpenAIGenerator.connect(args.base_url, api_key)
    try:
        asyncio.run(evaluate_and_close(plan, generator, scorers, say))
    except KeyboardInterrupt:
        say(f"interrupted: finished answers are kept in {output}; rerun the command to resume")
        return 130
    except Exception as exc:  # a dead server, a rejected request: report, keep what finished
        while isinstance(exc, ExceptionGroup):
            exc = exc.exceptions[0]
        say(f"error: {type(exc).__name__}: {exc}")
        say(f"finished answers are kept in {output}; rerun the command to resume")
        return 1
    say(f"table: {output / 'results.md'}")
    return 0
