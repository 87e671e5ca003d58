"""Our DPO optimizer steps per second versus TRL 0.28's ``DPOTrainer`` on the same job.

Same model (the embedded SmolLM2-135M-Instruct, fp32, LoRA r=8 / alpha=16 on q/k/v/o, dropout 0),
same data (the first ``batch_size * (warmup + steps)`` pairs of the development
``dpo_pairs.jsonl``, trained in the same order), same batch size, beta, learning rate, optimizer
(``torch.optim.AdamW``, constant LR, no weight decay, same clipping), lengths and hardware, in one
run. The reference is the base model (adapter disabled) on both sides, computed per batch (each
example is seen once, so our lazy reference cache never hits and TRL precomputes nothing).

    .venv/bin/python tests/trl_parity/provision.py   # once: the TRL 0.28 venv (~1.5 min)
    .venv/bin/python bench/training.py --output /tmp/bench_training.json

Ours runs in this process through the real code path a worker uses (``trainers.loop.train`` on
the ``dpo`` recipe's stages, with a ``TrainContext`` built as ``trainers.runner.run_job`` builds
it, minus the job store and the final checkpoint). TRL runs in its venv as a subprocess
(``bench/trl_dpo_baseline.py``; TRL 0.28 cannot be imported beside transformers 5); peft, which
that venv lacks, is installed once into a side folder with ``pip --no-deps --target``.

Timing, in lock-step: the two trainers run at the same time but take turns, one optimizer step
each (TRL first on odd steps, ours first on even ones), the other blocked meanwhile, so a
drifting load on this shared machine hits both alike. Our step runs from the loop's
``Control.check()`` to its ``Control.report()`` (batch, forward, reference, backward, clipping,
AdamW, metrics); TRL's from the ``go`` that releases it to ``on_step_end`` (so also its logging
of the step before and its collation). Steps/s = timed steps / summed step time over steps
``warmup+1 .. warmup+steps`` (model loading, tokenisation and warm-up steps untimed). Both sides
train the same batches, so per-step batch lengths cancel. Machine-wide busy cores during each
side's steps are recorded, the benchmarked process subtracted, because the host is shared.

Checks: the first step's losses agree (both log 2: with a fresh adapter the policy is the
reference), the first batch's per-example summed log-probs (policy and reference) agree, and the
token ids both sides train on are the same, example by example.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import logging
import math
import os
import statistics
import subprocess
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

from tests.trl_parity.provision import TRL_VERSION, is_ready, venv_dir, venv_python
from trainers.loop import TrainContext, batch_indices, train
from trainers.modeling import encode, load_policy, load_tokenizer
from trainers.recipes import RECIPES, stages
from contracts.specs import DPOSpec, parse_spec

logger = logging.getLogger("bench.training")
REPO_ROOT = Path(__file__).resolve().parent.parent
TRL_SCRIPT = Path(__file__).with_name("trl_dpo_baseline.py")
LOSS_TOL = 1e-4
LOGPS_TOL = 5e-3  # summed fp32 log-probs over up to 512 tokens, two transformers versions


def default_home() -> Path:
    return Path(os.environ.get("ALIGNSERVE_HOME", REPO_ROOT / ".home"))


# -- machine load -----------------------------------------------------------------------------
@dataclass
class Tick:
    """One instant: wall clock, this process's CPU seconds, machine-wide busy / total jiffies."""

    wall: float
    cpu: float
    busy: int
    total: int

    @staticmethod
    def now() -> Tick:
        busy, total = _proc_stat()
        return Tick(time.perf_counter(), time.process_time(), busy, total)


def _proc_stat() -> tuple[int, int]:
    try:
        with open("/proc/stat") as f:
            values = [int(v) for v in f.readline().split()[1:]]
    except OSError:
        return 0, 0
    idle = values[3] + (values[4] if len(values) > 4 else 0)  # idle + iowait
    return sum(values) - idle, sum(values)


# -- results ----------------------------------------------------------------------------------
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
    first_logps: dict[str, list[float]], extra: dict[str, Any],
) -> SideResult:
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
    return SideResult(name, steps / wall, [e.wall - s.wall for s, e in spans], cpu / steps,
                      losses[: warmup + steps], first_logps, load, extra)


# -- TRL, in its venv -------------------------------------------------------------------------
def peft_overlay(python: Path) -> Path:
    """A folder with the project's peft version for the TRL venv (which has none); its
    dependencies are all in that venv already, so ``--no-deps``."""
    version = importlib.metadata.version("peft")
    target = Path.home() / ".cache" / "alignserve" / f"trl-bench-peft-{version}"
    if not (target / f"peft-{version}.dist-info").is_dir():
        logger.info("installing peft==%s into %s for the TRL venv", version, target)
        subprocess.run(
            [str(python), "-m", "pip", "install", "--quiet", "--no-deps", "--target",
             str(target), f"peft=={version}"],
            check=True,
        )
    return target


class TrlProcess:
    """``bench/trl_dpo_baseline.py`` in the TRL venv, driven one step at a time."""

    def __init__(self, spec: DPOSpec, ordered: list[dict[str, Any]], folder: Path,
                 model: Path) -> None:
        root = venv_dir()
        if not is_ready(root):
            raise SystemExit(f"TRL {TRL_VERSION} venv missing at {root}; run: "
                             ".venv/bin/python tests/trl_parity/provision.py")
        python = venv_python(root)
        overlay = peft_overlay(python)
        job = {"model": str(model), "threads": torch.get_num_threads(),
               "lora": spec.lora.model_dump(), "hyperparameters": spec.hyperparameters.model_dump(),
               "records": ordered}
        job_path, self.out_path = folder / "job.json", folder / "result.json"
        job_path.write_text(json.dumps(job))
        env = {**os.environ, "PYTHONPATH": str(overlay), "HF_HUB_OFFLINE": "1",
               "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
               "TOKENIZERS_PARALLELISM": "false"}
        self.proc = subprocess.Popen(
            [str(python), str(TRL_SCRIPT), "--input", str(job_path), "--output",
             str(self.out_path)],
            cwd=REPO_ROOT, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
            bufsize=1,
        )
        self.spans: list[tuple[Tick, Tick]] = []

    def _read(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"TRL process ended early (exit {self.proc.wait()})")
        message: dict[str, Any] = json.loads(line)
        return message

    def wait_ready(self) -> None:
        message = self._read()
        if message.get("event") != "ready":
            raise RuntimeError(f"unexpected message from TRL: {message}")

    def step(self) -> None:
        """Release one TRL optimizer step and wait for it to end."""
        assert self.proc.stdin is not None
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()
        message = self._read()
        self.spans.append((Tick(*message["start"]), Tick(*message["end"])))
        logger.info("TRL  step %d: %.1f s", message["step"], self.spans[-1][1].wall
                    - self.spans[-1][0].wall)

    def finish(self, timeout: float) -> dict[str, Any]:
        if self.proc.wait(timeout=timeout) != 0:
            raise RuntimeError(f"TRL process failed with exit {self.proc.returncode}")
        result: dict[str, Any] = json.loads(self.out_path.read_text())
        return result

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


# -- our trainer, in lock-step with TRL -------------------------------------------------------
class LockstepControl:
    """The loop's ``Control``: never stops; times each of our steps from ``check()`` to
    ``report()`` and lets TRL take its step k before ours on odd k, after ours on even k."""

    def __init__(self, trl: TrlProcess) -> None:
        self.trl = trl
        self.spans: list[tuple[Tick, Tick]] = []
        self.metrics: list[dict[str, float]] = []
        self._step = 0
        self._start = Tick.now()

    def check(self) -> None:
        self._step += 1
        if self._step % 2 == 1:
            self.trl.step()
        self._start = Tick.now()

    def report(self, step: int, metrics: dict[str, float]) -> None:
        end = Tick.now()
        self.spans.append((self._start, end))
        self.metrics.append({"step": float(step), **metrics})
        logger.info("ours step %d: %.1f s, loss %.6f", step, end.wall - self._start.wall,
                    metrics["loss"])
        if step % 2 == 0:
            self.trl.step()

    def event(self, message: str, data: dict[str, Any] | None = None) -> None:
        logger.debug("ours: %s", message)

    def resume_point(self, step: int, path: str) -> None:
        return None


def make_spec(args: argparse.Namespace) -> DPOSpec:
    spec = parse_spec({
        "method": "dpo", "dataset": "bench", "model": str(args.model),
        "lora": {"r": 8, "alpha": 16, "dropout": 0.0,
                 "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"]},
        "hyperparameters": {
            "max_steps": args.warmup + args.steps, "batch_size": args.batch_size,
            "learning_rate": args.learning_rate, "beta": args.beta,
            "max_length": args.max_length, "max_prompt_length": args.max_prompt_length,
            "seed": args.seed, "checkpoint_every": 1_000_000,  # no resume points mid-run
        },
    })
    assert isinstance(spec, DPOSpec)
    return spec


def training_order(spec: DPOSpec, n: int, steps: int) -> list[int]:
    """Record indices in the order our loop trains them (stage 0's batches)."""
    hp = spec.hyperparameters
    return [i for s in range(steps) for i in batch_indices(s, n, hp.batch_size, hp.seed)]


@contextmanager
def recording_first_logps(found: dict[str, list[float]]) -> Iterator[None]:
    """Record the per-example log-probs of the loop's first batch as ``PairStage`` computes
    them: the policy's ``batch_logps`` call and the reference's two ``frozen_logps`` calls
    (chosen, then rejected). The calls themselves are unchanged; only their first results are
    copied (this avoids extra untimed forward passes on a 2-core machine)."""
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


def run_both(
    args: argparse.Namespace, spec: DPOSpec, records: list[dict[str, Any]], tokenizer: Any,
) -> tuple[SideResult, SideResult, list[dict[str, list[int]]]]:
    ordered = [records[i] for i in training_order(spec, len(records), args.warmup + args.steps)]
    with tempfile.TemporaryDirectory(prefix="dpo-bench-") as tmp:
        trl = TrlProcess(spec, ordered, Path(tmp), args.model)  # loads while we load
        try:
            torch.manual_seed(spec.hyperparameters.seed)  # as trainers.runner.run_job
            policy = load_policy(str(args.model), spec.finetuning, spec.lora)
            first_logps: dict[str, list[float]] = {}
            control = LockstepControl(trl)
            ctx = TrainContext("bench", spec, str(args.model), Path(tmp) / "work", tokenizer,
                               {"policy": policy}, control)
            pair_stages = RECIPES.get("dpo").stages(ctx, records)
            trl.wait_ready()
            with recording_first_logps(first_logps):
                train(ctx, pair_stages, None)
            result = trl.finish(args.timeout)
        finally:
            trl.kill()
    ours = side_result("alignserve", control.spans, args.warmup, args.steps,
                       [m["loss"] for m in control.metrics], first_logps,
                       {"threads": torch.get_num_threads()})
    theirs = side_result(
        "trl", trl.spans, args.warmup, args.steps, result["losses"],
        result["first_batch_logps"],
        {"versions": result["versions"], "threads": result["threads"],
         "optimizer": result["optimizer"]},
    )
    return ours, theirs, result["tokens"]


# -- checks -----------------------------------------------------------------------------------
def compare_tokens(
    spec: DPOSpec, tokenizer: Any, ordered: list[dict[str, Any]],
    trl_tokens: list[dict[str, list[int]]],
) -> int:
    """Examples whose (prompt, chosen, rejected) token ids differ between the two trainers, after
    TRL's ``keep_start`` cut at ``max_length`` (TRL cuts in ``concatenated_forward``)."""
    hp = spec.hyperparameters
    mismatches = 0
    for record, theirs in zip(ordered, trl_tokens, strict=True):
        for key in ("chosen", "rejected"):
            ours = encode(tokenizer, record["messages"], record[key], hp.max_length,
                          hp.max_prompt_length)
            keep = hp.max_length - len(theirs["prompt"])
            if list(ours.prompt) != theirs["prompt"] or list(ours.completion) != theirs[key][
                :keep
            ]:
                mismatches += 1
                break
    return mismatches


def forward_tokens(
    spec: DPOSpec, tokenizer: Any, records: list[dict[str, Any]], steps: range,
) -> dict[str, float]:
    """Token positions each trainer runs through the decoder per step (padding included), on
    average over ``steps`` (0-based). TRL runs the policy and the reference on the 2B
    [chosen; rejected] rows padded to the longest; ours runs every sequence unpadded
    (``trainers.modeling.batch_logps``), policy and reference alike."""
    hp = spec.hyperparameters
    real = ours = trl = 0
    for step in steps:
        lengths: dict[str, list[int]] = {"chosen": [], "rejected": []}
        for i in batch_indices(step, len(records), hp.batch_size, hp.seed):
            for key, found in lengths.items():
                e = encode(tokenizer, records[i]["messages"], records[i][key], hp.max_length,
                           hp.max_prompt_length)
                found.append(len(e.prompt) + len(e.completion))
        rows = lengths["chosen"] + lengths["rejected"]
        policy = len(rows) * max(rows)
        real += sum(rows)
        ours += 2 * sum(rows)
        trl += 2 * policy
    n = max(len(steps), 1)
    return {"real_per_pass": real / n, "alignserve": ours / n, "trl": trl / n}


def max_abs_diff(a: list[float], b: list[float]) -> float:
    return max(abs(x - y) for x, y in zip(a, b, strict=True))


def summarise(ours: SideResult, trl: SideResult, warmup: int) -> dict[str, Any]:
    first_ours, first_trl = ours.losses[0], trl.losses[0]
    return {
        "steps_per_s": {"alignserve": ours.steps_per_s, "trl": trl.steps_per_s},
        "ratio": ours.steps_per_s / trl.steps_per_s,
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
    home = default_home()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=home / "models" / "smollm2-135m-instruct")
    parser.add_argument("--data", type=Path, default=home / "data" / "dev" / "dpo_pairs.jsonl")
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps first (>= 0)")
    parser.add_argument("--steps", type=int, default=4, help="timed steps")
    parser.add_argument("--learning-rate", type=float, default=5e-5)
    parser.add_argument("--beta", type=float, default=0.1)
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--max-prompt-length", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads for both sides (default: torch's default)")
    parser.add_argument("--target", type=float, default=1.2, help="wanted ours/TRL ratio")
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
    spec = make_spec(args)
    total = args.warmup + args.steps
    with args.data.open(encoding="utf-8") as f:
        records = [json.loads(line) for line in f if line.strip()][: args.batch_size * total]
    if len(records) < args.batch_size * total:
        raise SystemExit(f"{args.data} has fewer than {args.batch_size * total} pairs")
    tokenizer = load_tokenizer(str(args.model))
    loadavg_start = os.getloadavg()
    logger.info("load average %s on %d CPUs; %d torch threads per trainer", loadavg_start,
                os.cpu_count() or 0, torch.get_num_threads())
    started = time.perf_counter()
    ours, trl, trl_tokens = run_both(args, spec, records, tokenizer)
    ordered = [records[i] for i in training_order(spec, len(records), total)]
    summary = summarise(ours, trl, args.warmup)
    summary["token_mismatched_examples"] = compare_tokens(spec, tokenizer, ordered, trl_tokens)
    summary["forward_tokens_per_step"] = forward_tokens(
        spec, tokenizer, records, range(args.warmup, total))
    summary["checks"] = {
        "first_step_loss_equal": summary["first_step_loss"]["abs_diff"] < LOSS_TOL,
        "first_batch_logps_equal": summary["first_batch_logps_max_abs_diff"] < LOGPS_TOL,
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
                    "torch": torch.__version__,
                    "transformers": importlib.metadata.version("transformers"),
                    "peft": importlib.metadata.version("peft")},
        "summary": summary,
        "runs": [asdict(ours), asdict(trl)],
    }
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(report, indent=1))
    print(json.dumps({k: v for k, v in summary.items() if k != "first_batch_logps"}, indent=1))
    logger.info("ours %.4f steps/s, TRL %.4f steps/s: %.2fx (target %.1fx)",
                ours.steps_per_s, trl.steps_per_s, summary["ratio"], args.target)
    parity = [k for k, ok in summary["checks"].items() if k != "target_met" and not ok]
    if parity:
        logger.error("parity check failed: %s", parity)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
