"""Our DPO optimizer steps per second versus TRL 1.16's ``DPOTrainer`` on the same job.

Same model (the embedded SmolLM2-135M-Instruct, fp32, LoRA r=8 / alpha=16 on q/k/v/o, dropout 0),
data (the first ``batch_size * (warmup + steps)`` pairs of the development ``dpo_pairs.jsonl``
whose prompt fits ``max_prompt_length``, since TRL 1.16 has no prompt cut; trained once each, in
the same order), batch, beta, learning rate, optimizer (``torch.optim.AdamW``, constant LR) and
hardware, in one lock-step run; the reference is the base model (adapter disabled) on both sides.
TRL uses its documented speed settings that work on a CPU (see ``docs/benchmarks.md``):
``precompute_ref_log_probs`` (its time charged to TRL's timed steps pro rata), no gradient
checkpointing, its fused LM head; fp32 like ours (``--trl-bf16``: a side measurement).

    .venv/bin/python tests/trl_parity/provision.py   # once: the TRL 1.16 venv (~1.5 min)
    .venv/bin/python bench/training.py --output /tmp/bench_training.json

Ours runs in-process (``trainers.loop.train``, ``dpo`` recipe), TRL in its venv as a subprocess
(``bench/trl_dpo_baseline.py``), one optimizer step each in turn, the other blocked. Checks: the
first step's losses agree (log 2), so do the first batch's log-probs and all token ids.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import logging
import math
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch

from bench.trl_dpo_baseline import TrlProcess, tick
from contracts.specs import DPOSpec, parse_spec
from trainers.loop import TrainContext, batch_indices, train
from trainers.modeling import encode, load_policy, load_tokenizer, render_prompt
from trainers.recipes import RECIPES, stages

logger = logging.getLogger("bench.training")
REPO_ROOT = Path(__file__).resolve().parent.parent
LOSS_TOL = 1e-4
LOGPS_TOL = 5e-3  # summed fp32 log-probs over up to 512 tokens, padded vs unpadded


@dataclass
class Tick:
    """One instant: wall clock, this process's CPU seconds, machine-wide busy / total jiffies."""

    wall: float
    cpu: float
    busy: int
    total: int

    @staticmethod
    def now() -> Tick:
        wall, cpu, busy, total = tick()
        return Tick(wall, cpu, int(busy), int(total))


@dataclass
class SideResult:
    """One trainer's timed steps."""

    name: str
    steps_per_s: float
    step_s: list[float]  # every step, warm-up included
    cpu_s_per_step: float  # own CPU seconds per timed step (all threads)
    losses: list[float]
    first_batch_logps: dict[str, list[float]]
    load: dict[str, float]
    extra: dict[str, Any] = field(default_factory=dict)


def side_result(
    name: str, spans: list[tuple[Tick, Tick]], warmup: int, steps: int, losses: list[float],
    first_logps: dict[str, list[float]], extra: dict[str, Any], overhead: float = 0.0,
) -> SideResult:
    """``overhead``: seconds of one-off work charged to the timed steps (TRL's precompute)."""
    if len(spans) < warmup + steps:
        raise RuntimeError(f"{name}: {len(spans)} steps timed, wanted {warmup + steps}")
    timed = spans[warmup : warmup + steps]
    wall = sum(e.wall - s.wall for s, e in timed)
    cpu = sum(e.cpu - s.cpu for s, e in timed)
    busy = sum(e.busy - s.busy for s, e in timed)
    total = sum(e.total - s.total for s, e in timed)
    machine = (os.cpu_count() or 1) * busy / total if total > 0 else float("nan")
    load = {"machine_busy_cores": machine, "own_cores": cpu / wall,
            "other_busy_cores": machine - cpu / wall}
    return SideResult(name, steps / (wall + overhead), [e.wall - s.wall for s, e in spans],
                      cpu / steps, losses[: warmup + steps], first_logps, load,
                      {**extra, "steps_only_per_s": steps / wall, "charged_overhead_s": overhead})


def trl_job(spec: DPOSpec, ordered: list[dict[str, Any]], model: Path,
            speed: dict[str, Any]) -> dict[str, Any]:
    """The job ``bench/trl_dpo_baseline.py`` reads (also used by the parity test)."""
    return {"model": str(model), "threads": torch.get_num_threads(),
            "lora": spec.lora.model_dump(), "hyperparameters": spec.hyperparameters.model_dump(),
            "rpo_alpha": spec.rpo_alpha, "records": ordered, "trl": speed}


class LockstepControl:
    """The loop's ``Control``: never stops; times each of our steps from ``check()`` to
    ``report()`` and lets TRL take its step k before ours on odd k, after ours on even k
    (``trl=None``: ours alone, as in the parity test)."""

    def __init__(self, trl: TrlProcess | None, precompute: bool = True) -> None:
        self.trl, self.precompute = trl, precompute
        self.spans: list[tuple[Tick, Tick]] = []
        self.metrics: list[dict[str, float]] = []
        self._step = 0
        self._start = Tick.now()

    def check(self) -> None:
        self._step += 1
        if self.trl is not None and not self.trl.started:
            self.trl.start(self.precompute)  # after our loading and tokenisation
        if self.trl is not None and self._step % 2 == 1:
            self.trl.step()
        self._start = Tick.now()

    def report(self, step: int, metrics: dict[str, float]) -> None:
        end = Tick.now()
        self.spans.append((self._start, end))
        self.metrics.append({"step": float(step), **metrics})
        logger.info("ours step %d: %.1f s, loss %.6f", step, end.wall - self._start.wall,
                    metrics["loss"])
        if self.trl is not None and step % 2 == 0:
            self.trl.step()

    def event(self, message: str, data: dict[str, Any] | None = None) -> None:
        logger.debug("ours: %s", message)

    def resume_point(self, step: int, path: str) -> None:  # never asked for: no checkpoints
        pass


def make_spec(model: Path, steps: int, batch_size: int, learning_rate: float, beta: float,
              max_length: int, max_prompt_length: int, seed: int,
              rpo_alpha: float | None = None) -> DPOSpec:
    spec = parse_spec({
        "method": "dpo", "dataset": "bench", "model": str(model), "rpo_alpha": rpo_alpha,
        "lora": {"r": 8, "alpha": 16, "dropout": 0.0,
                 "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"]},
        "hyperparameters": {
            "max_steps": steps, "batch_size": batch_size, "learning_rate": learning_rate,
            "beta": beta, "max_length": max_length, "max_prompt_length": max_prompt_length,
            "seed": seed, "checkpoint_every": 1_000_000,  # no resume points mid-run
        },
    })
    assert isinstance(spec, DPOSpec)
    return spec


def training_order(spec: DPOSpec, n: int) -> list[int]:
    """Record indices in the order our loop trains them (stage 0's batches)."""
    hp = spec.hyperparameters
    return [i for s in range(hp.max_steps) for i in batch_indices(s, n, hp.batch_size, hp.seed)]


@contextmanager
def recording_first_logps(found: dict[str, list[float]]) -> Iterator[None]:
    """Record the per-example log-probs of the loop's first batch as ``PairStage`` computes
    them (the policy's ``batch_logps`` call, the reference's two ``frozen_logps`` calls); the
    calls are unchanged, only their first results are copied."""
    original_batch, original_frozen = stages.batch_logps, stages.frozen_logps

    def batch(model: torch.nn.Module, items: Any, pad_id: int, **kw: Any) -> torch.Tensor:
        out = original_batch(model, items, pad_id, **kw)
        if "policy_chosen" not in found:
            values = out.detach().double().tolist()
            half = len(values) // 2
            found["policy_chosen"], found["policy_rejected"] = values[:half], values[half:]
        return out

    def frozen(model: torch.nn.Module, items: Any, pad_id: int, **kw: Any) -> torch.Tensor:
        out = original_frozen(model, items, pad_id, **kw)
        key = "reference_chosen" if "reference_chosen" not in found else "reference_rejected"
        found.setdefault(key, out.double().tolist())
        return out

    stages.batch_logps, stages.frozen_logps = batch, frozen
    try:
        yield
    finally:
        stages.batch_logps, stages.frozen_logps = original_batch, original_frozen


def train_ours(spec: DPOSpec, tokenizer: Any, records: list[dict[str, Any]], work: Path,
               control: LockstepControl) -> dict[str, list[float]]:
    """Our DPO job as a worker runs it; returns the first batch's per-example log-probs."""
    torch.manual_seed(spec.hyperparameters.seed)  # as trainers.runner.run_job
    policy = load_policy(spec.model, spec.finetuning, spec.lora)
    ctx = TrainContext("bench", spec, spec.model, work, tokenizer, {"policy": policy}, control)
    first: dict[str, list[float]] = {}
    with recording_first_logps(first):
        train(ctx, RECIPES.get("dpo").stages(ctx, records), None)
    return first


def run_both(args: argparse.Namespace, spec: DPOSpec, records: list[dict[str, Any]],
             tokenizer: Any) -> tuple[SideResult, SideResult, dict[str, Any]]:
    ordered = [records[i] for i in training_order(spec, len(records))]
    speed = {"precompute_ref_log_probs": not args.trl_no_precompute, "bf16": args.trl_bf16,
             "precompute_ref_batch_size": args.trl_precompute_batch_size}
    with tempfile.TemporaryDirectory(prefix="dpo-bench-") as tmp:
        trl = TrlProcess(trl_job(spec, ordered, args.model, speed), Path(tmp))  # loads as we do
        try:
            control = LockstepControl(trl, precompute=not args.trl_no_precompute)
            first_logps = train_ours(spec, tokenizer, records, Path(tmp) / "work", control)
            result = trl.finish(args.timeout)
        finally:
            trl.kill()
    ours = side_result("alignserve", control.spans, args.warmup, args.steps,
                       [m["loss"] for m in control.metrics], first_logps,
                       {"threads": torch.get_num_threads()})
    share = args.steps / (args.warmup + args.steps)
    theirs = side_result(
        "trl", [(Tick(*a), Tick(*b)) for a, b in trl.spans], args.warmup, args.steps,
        result["losses"], result["first_batch_logps"],
        {"versions": result["versions"], "threads": result["threads"],
         "optimizer": result["optimizer"], "settings": result["settings"],
         "precompute_s": trl.precompute_s},
        overhead=trl.precompute_s * share,
    )
    return ours, theirs, result


def compare_tokens(spec: DPOSpec, tokenizer: Any, ordered: list[dict[str, Any]],
                   trl_tokens: list[dict[str, list[int]]]) -> int:
    """Examples whose (prompt, chosen, rejected) token ids differ between the two trainers, after
    TRL's ``keep_start`` cut at ``max_length`` (TRL cuts in its collator; it has no prompt cut,
    so a prompt longer than our ``max_prompt_length`` shows up here)."""
    hp = spec.hyperparameters
    mismatches = 0
    for record, theirs in zip(ordered, trl_tokens, strict=True):
        for key in ("chosen", "rejected"):
            ours = encode(tokenizer, record["messages"], record[key], hp.max_length,
                          hp.max_prompt_length)
            keep = hp.max_length - len(theirs["prompt"])
            if (list(ours.prompt), list(ours.completion)) != (theirs["prompt"], theirs[key][:keep]):
                mismatches += 1
                break
    return mismatches


def forward_tokens(spec: DPOSpec, tokenizer: Any, ordered: list[dict[str, Any]],
                   warmup: int) -> dict[str, float]:
    """Token positions run through the decoder per timed step, policy + reference: ours
    unpadded; TRL's [chosen; rejected] rows padded to the longest (its reference pass is in the
    precompute, over batches of the same size when ``precompute_ref_batch_size`` is unset)."""
    hp = spec.hyperparameters
    real = padded = 0
    steps = range(warmup, hp.max_steps)
    for step in steps:
        batch = ordered[step * hp.batch_size : (step + 1) * hp.batch_size]
        rows = [len(e.prompt) + len(e.completion) for key in ("chosen", "rejected")
                for e in (encode(tokenizer, r["messages"], r[key], hp.max_length,
                                 hp.max_prompt_length) for r in batch)]
        real, padded = real + sum(rows), padded + len(rows) * max(rows)
    n = max(len(steps), 1)
    return {"real_per_pass": real / n, "alignserve": 2 * real / n, "trl": 2 * padded / n}


def fits(tokenizer: Any, record: dict[str, Any], max_prompt_length: int) -> bool:
    """Whether the prompt is kept whole by our ``max_prompt_length`` (TRL 1.16 never cuts it)."""
    prompt = tokenizer(render_prompt(tokenizer, record["messages"]), add_special_tokens=False)
    return len(prompt.input_ids) <= max_prompt_length


def max_abs_diff(a: list[float], b: list[float]) -> float:
    return max(abs(x - y) for x, y in zip(a, b, strict=True))


def summarise(ours: SideResult, trl: SideResult, warmup: int) -> dict[str, Any]:
    first_ours, first_trl = ours.losses[0], trl.losses[0]
    return {
        "steps_per_s": {"alignserve": ours.steps_per_s, "trl": trl.steps_per_s,
                        "trl_steps_only": trl.extra["steps_only_per_s"]},
        "ratio": ours.steps_per_s / trl.steps_per_s,
        "ratio_trl_steps_only": ours.steps_per_s / trl.extra["steps_only_per_s"],
        "trl_precompute_s": trl.extra["precompute_s"],
        "paired_step_ratio_median": statistics.median(
            t / o for o, t in zip(ours.step_s[warmup:], trl.step_s[warmup:], strict=True)
        ),
        "cpu_s_per_step": {"alignserve": ours.cpu_s_per_step, "trl": trl.cpu_s_per_step},
        "other_busy_cores": {"alignserve": ours.load["other_busy_cores"],
                             "trl": trl.load["other_busy_cores"]},
        "first_step_loss": {"alignserve": first_ours, "trl": first_trl,
                            "abs_diff": abs(first_ours - first_trl), "log2": math.log(2)},
        "first_batch_logps": {"alignserve": ours.first_batch_logps,
                              "trl": trl.first_batch_logps},
        "first_batch_logps_max_abs_diff": max(
            max_abs_diff(ours.first_batch_logps[k], trl.first_batch_logps[k])
            for k in ours.first_batch_logps
        ),
        "loss_curve_max_abs_diff": max_abs_diff(ours.losses, trl.losses),
    }


def parse_args() -> argparse.Namespace:
    home = Path(os.environ.get("ALIGNSERVE_HOME", REPO_ROOT / ".home"))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=home / "models" / "smollm2-135m-instruct")
    parser.add_argument("--data", type=Path, default=home / "data" / "dev" / "dpo_pairs.jsonl")
    for flag, default in (("--batch-size", 2), ("--warmup", 1), ("--steps", 6), ("--seed", 0),
                          ("--max-length", 512), ("--max-prompt-length", 256)):
        parser.add_argument(flag, type=int, default=default)  # warmup: untimed steps first
    parser.add_argument("--learning-rate", type=float, default=5e-5)
    parser.add_argument("--beta", type=float, default=0.1)
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads for both sides (default: torch's default)")
    parser.add_argument("--trl-no-precompute", action="store_true",
                        help="TRL computes the reference every step instead of up front")
    parser.add_argument("--trl-precompute-batch-size", type=int, default=None,
                        help="TRL's precompute_ref_batch_size (default: the batch size)")
    parser.add_argument("--trl-bf16", action="store_true",
                        help="TRL with bf16 autocast (not the job's fp32 arithmetic)")
    parser.add_argument("--target", type=float, default=1.3, help="wanted ours/TRL ratio")
    parser.add_argument("--timeout", type=float, default=300,
                        help="seconds to wait for the TRL process after the last step")
    parser.add_argument("--output", type=Path, default=None, help="JSON with every number")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args()
    if args.warmup < 0 or args.steps < 1:
        parser.error("--warmup must be >= 0 and --steps >= 1")
    return args


def main() -> int:
    args = parse_args()
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(name)s %(message)s")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.threads:
        torch.set_num_threads(args.threads)
    total = args.warmup + args.steps
    spec = make_spec(args.model, total, args.batch_size, args.learning_rate, args.beta,
                     args.max_length, args.max_prompt_length, args.seed)
    tokenizer = load_tokenizer(str(args.model))
    with args.data.open(encoding="utf-8") as f:
        every = [json.loads(line) for line in f if line.strip()]
    records = [r for r in every if fits(tokenizer, r, args.max_prompt_length)]
    records = records[: args.batch_size * total]
    if len(records) < args.batch_size * total:
        raise SystemExit(f"{args.data} has fewer than {args.batch_size * total} usable pairs")
    loadavg_start = os.getloadavg()
    logger.info("load average %s on %d CPUs; %d torch threads per trainer", loadavg_start,
                os.cpu_count() or 0, torch.get_num_threads())
    started = time.perf_counter()
    ours, trl, result = run_both(args, spec, records, tokenizer)
    ordered = [records[i] for i in training_order(spec, len(records))]
    summary = summarise(ours, trl, args.warmup)
    summary["token_mismatched_examples"] = compare_tokens(spec, tokenizer, ordered,
                                                          result["tokens"])
    summary["forward_tokens_per_step"] = forward_tokens(spec, tokenizer, ordered, args.warmup)
    summary["trl_settings"] = result["settings"]
    summary["checks"] = {
        "first_step_loss_equal": summary["first_step_loss"]["abs_diff"] < LOSS_TOL,
        "first_batch_logps_equal": None if args.trl_bf16 else  # bf16 logps: not comparable
        summary["first_batch_logps_max_abs_diff"] < LOGPS_TOL,
        "tokens_equal": summary["token_mismatched_examples"] == 0,
        "target_met": summary["ratio"] >= args.target,
    }
    report = {
        "command": " ".join([".venv/bin/python", "bench/training.py", *sys.argv[1:]]),
        "config": {**spec.model_dump(mode="json"), "warmup_steps_untimed": args.warmup,
                   "timed_steps": args.steps, "examples": len(records),
                   "data": str(args.data), "target": args.target},
        "machine": {"cpus": os.cpu_count(), "loadavg_start": loadavg_start,
                    "loadavg_end": os.getloadavg(), "wall_s": time.perf_counter() - started,
                    **{name: importlib.metadata.version(name)
                       for name in ("torch", "transformers", "peft")}},
        "summary": summary,
        "runs": [asdict(ours), asdict(trl)],
    }
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(report, indent=1))
    print(json.dumps({k: v for k, v in summary.items() if k != "first_batch_logps"}, indent=1))
    logger.info("ours %.4f steps/s, TRL %.4f steps/s (precompute charged): %.2fx (target %.1fx)",
                ours.steps_per_s, trl.steps_per_s, summary["ratio"], args.target)
    parity = [k for k, ok in summary["checks"].items() if k != "target_met" and ok is False]
    if parity:
        logger.error("parity check failed: %s", parity)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
