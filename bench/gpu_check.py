"""GPU check: DPO and ULMA steps/s and peak memory, ours vs TRL 1.16, on random-weight models.

One command for a short GPU slot (``--budget-s`` 420, split over the runs: under 8 minutes on one
H200). Random weights from a config (SmolLM2-135M's architecture, a ~1.1B Llama) and random token
ids behind a word-level tokenizer built here, so nothing travels. Per model: our DPO, TRL's
``DPOTrainer`` on the same batches, our ULMA (TRL has none). See docs/benchmarks.md (it also
gives the command that downloads the wheels ``--wheels`` needs: TRL, datasets, pydantic).

    python3 bench/gpu_check.py --wheels .whl --output $OUT/gpu_check.json     # on the GPU
    .venv/bin/python bench/gpu_check.py --device cpu --tiny                    # smoke test
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gc
import glob
import importlib
import json
import logging
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch

logger = logging.getLogger("bench.gpu_check")
TRL_VERSION = "1.16.0"
FIELDS = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
          "num_key_value_heads", "vocab_size")  # of LlamaConfig
ARCH = {name: dict(zip(FIELDS, values, strict=True)) for name, values in {
    "smollm2-135m": (576, 1536, 30, 9, 3, 49152), "llama-1b": (2048, 8192, 16, 32, 8, 49152),
    "tiny": (64, 128, 2, 4, 2, 512)}.items()}
LORA = {"r": 16, "alpha": 32, "dropout": 0.0, "target_modules": ["q_proj", "k_proj", "v_proj",
                                                                 "o_proj"]}


def install_wheels(folder: Path) -> str | None:
    """Install ``folder``'s wheels into a temporary site folder first on ``sys.path``, when
    TRL, datasets or pydantic is missing."""
    if all(importlib.util.find_spec(m) for m in ("trl", "datasets", "pydantic")):
        return None
    wheels = sorted(glob.glob(str(folder / "*.whl")))
    if not wheels:
        return f"no wheels in {folder}"
    target = Path(tempfile.mkdtemp(prefix="gpu-check-site-"))
    done = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index",
                           "--no-deps", "--no-compile", "--target", str(target), *wheels],
                          capture_output=True, text=True, check=False)
    if done.returncode:
        return f"pip could not install {folder}'s wheels: {done.stderr.strip()[-500:]}"
    sys.path.insert(0, str(target))
    importlib.invalidate_caches()
    return f"installed {len(wheels)} wheels from {folder}"


def import_trl() -> dict[str, Any]:
    try:
        import datasets  # noqa: F401  (TRL imports it lazily; fail here, not mid-run)
        import trl
        from trl import DPOConfig, DPOTrainer  # noqa: F401
    except Exception as exc:  # absent, or an import error in a dependency
        return {"available": False, "reason": f"cannot import trl: {exc!r}"}
    return {"available": True, "version": trl.__version__,
            "expected": trl.__version__ == TRL_VERSION}


def word_tokenizer(vocab_size: int) -> Any:
    """``<pad>`` = 0, ``</s>`` = 1 (EOS), ``t<i>`` = i: text of ``t`` words tokenises to ids."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "</s>": 1, **{f"t{i}": i for i in range(2, vocab_size)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="</s>", pad_token="<pad>")
    tokenizer.chat_template = "{% for m in messages %}{{ m['content'] }} {% endfor %}"
    return tokenizer


def build_model(name: str, device: str, seed: int) -> tuple[Any, int]:
    """Random weights from the config; the frozen base in bf16 on CUDA (our placement's
    ``frozen_dtype``), fp32 on CPU. Returns the model and its parameter count."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(**ARCH[name], tie_word_embeddings=True, max_position_embeddings=4096,
                         pad_token_id=0, eos_token_id=1, bos_token_id=None)
    torch.manual_seed(seed)
    with torch.device(device):
        model = LlamaForCausalLM(config)
    params = sum(p.numel() for p in model.parameters())
    if device == "cuda":
        model.to(torch.bfloat16)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()  # the peak counts the bf16 weights, not the build
    return model.train(), params


def random_records(vocab: int, n: int, batch: int, prompt: int, completion: int, seed: int
                   ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """``n`` DPO pairs; ``batch`` point-wise records, half positive (ULMA's batch loss depends on
    its mix of labels: one fixed batch keeps its steps comparable). Lengths: half to full."""
    gen = torch.Generator().manual_seed(seed)

    def text(longest: int) -> str:
        length = int(torch.randint(longest // 2, longest + 1, (1,), generator=gen))
        return " ".join(f"t{i}" for i in torch.randint(2, vocab, (length,), generator=gen))

    pairs, points = [], []
    for k in range(n):
        messages = [{"role": "user", "content": text(prompt)}]
        pairs.append({"messages": messages, "chosen": text(completion),
                      "rejected": text(completion)})
        if k < batch:
            points.append({"messages": messages, "completion": text(completion),
                           "label": k % 2})
    return pairs, points


class Clock:
    """Per-step end times (after a device sync) and losses; stops the run past ``deadline`` once
    ``min_steps`` are done (our loop: as its ``Control``; TRL: from a callback)."""

    def __init__(self, device: str, deadline: float, min_steps: int) -> None:
        self.device, self.deadline, self.min_steps = device, deadline, min_steps
        self.ends: list[float] = []
        self.losses: list[float] = []
        self.start = time.perf_counter()
        self.stop = False
        gc.collect()  # the previous run's model and optimizer are gone
        if device == "cuda":
            torch.cuda.empty_cache()

    def sync(self) -> float:
        if self.device == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter()

    def step_done(self, loss: float) -> bool:
        self.ends.append(self.sync())
        self.losses.append(loss)
        self.stop = len(self.ends) >= self.min_steps and time.perf_counter() > self.deadline
        return self.stop

    def check(self) -> None:  # the loop's ``Control`` protocol, for our runs
        if self.stop:
            from trainers.loop import Stop

            raise Stop("time budget")

    def report(self, step: int, metrics: dict[str, float]) -> None:
        self.step_done(float(metrics["loss"]))

    def event(self, message: str, data: dict[str, Any] | None = None) -> None:
        logger.debug("ours: %s", message)

    def resume_point(self, step: int, path: str) -> None:  # never asked for: no checkpoints
        pass

    def result(self, epoch: int) -> dict[str, Any]:
        """``epoch``: steps per epoch; the first ``max(epoch, 2)`` steps are untimed. The loss
        falls if the mean of the last complete epoch is below the first epoch's (each epoch
        trains every example once; with one-step epochs, the first vs the last 3 steps)."""
        peak = torch.cuda.max_memory_allocated() if self.device == "cuda" else None
        times = [b - a for a, b in zip([self.start, *self.ends], self.ends, strict=False)]
        warmup = max(epoch, 2)
        timed = times[warmup:]
        end = len(self.losses) - len(self.losses) % epoch
        window = epoch if epoch > 1 else min(3, max(end // 3, 1))
        first, last = self.losses[:window], self.losses[end - window : end]
        return {
            "steps": len(times), "timed_steps": len(timed), "warmup_steps": warmup,
            "steps_per_s": len(timed) / sum(timed) if timed else None,
            "step_s": [round(t, 4) for t in times], "losses": self.losses,
            "loss_finite": all(math.isfinite(v) for v in self.losses),
            "mean_loss": {"first": sum(first) / window, "last": sum(last) / window},
            "loss_decreasing": end >= 2 * window and sum(last) < sum(first),
            "peak_memory_bytes": peak,
        }


def lora_config() -> Any:
    from peft import LoraConfig

    return LoraConfig(r=LORA["r"], lora_alpha=LORA["alpha"], lora_dropout=LORA["dropout"],
                      target_modules=LORA["target_modules"], task_type="CAUSAL_LM")


def spec_for(method: str, args: argparse.Namespace) -> Any:
    from contracts.specs import parse_spec

    return parse_spec({"method": method, "dataset": "gpu-check", "model": "random", "lora": LORA,
                       "hyperparameters": {
        "max_steps": args.max_steps, "batch_size": args.batch_size, "beta": 0.1,
        "learning_rate": args.learning_rate, "seed": args.seed, "checkpoint_every": 1_000_000,
        "max_length": args.prompt_len + args.completion_len, "max_prompt_length": args.prompt_len,
    }})


def run_ours(method: str, name: str, records: list[dict[str, Any]], tokenizer: Any,
             args: argparse.Namespace, clock: Clock) -> dict[str, Any]:
    from peft import get_peft_model

    from trainers.loop import Stop, TrainContext, train
    from trainers.recipes import RECIPES

    model, params = build_model(name, args.device, args.seed)
    torch.manual_seed(args.seed)
    policy = get_peft_model(model, lora_config())
    spec = spec_for(method, args)
    extra: dict[str, Any] = {}
    if any(f.name == "placement" for f in dataclasses.fields(TrainContext)):
        from trainers.devices import Placement  # bf16 autocast on CUDA, as a worker places it

        dtype = torch.bfloat16 if args.device == "cuda" else torch.float32
        extra["placement"] = Placement(torch.device(args.device), dtype)
    clock.start = clock.sync()
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as work:
        ctx = TrainContext(f"gpu-check-{method}", spec, "random", Path(work), tokenizer,
                           {"policy": policy}, clock, **extra)
        with contextlib.suppress(Stop):
            train(ctx, RECIPES.get(method).stages(ctx, records), None)
    del ctx, policy, model
    return {**clock.result(len(records) // args.batch_size), "params": params}


def run_trl(name: str, records: list[dict[str, Any]], tokenizer: Any,
            args: argparse.Namespace, clock: Clock) -> dict[str, Any]:
    from datasets import Dataset
    from torch.utils.data import SequentialSampler
    from transformers import TrainerCallback
    from trl import DPOConfig, DPOTrainer

    from trainers.loop import batch_indices

    model, _ = build_model(name, args.device, args.seed)
    n, steps, bs = len(records), args.max_steps, args.batch_size
    order = [i for s in range(steps) for i in batch_indices(s, n, bs, args.seed)]  # our batches
    rows = [{"prompt": tokenizer.apply_chat_template(records[i]["messages"], tokenize=False,
                                                     add_generation_prompt=True),
             "chosen": records[i]["chosen"], "rejected": records[i]["rejected"]} for i in order]

    losses: list[float] = []

    class Timing(TrainerCallback):
        def on_step_end(self, args_: Any, state: Any, control: Any, **kw: Any) -> None:
            control.should_training_stop = clock.step_done(losses[-1])

    class OrderedDPO(DPOTrainer):
        def _get_train_sampler(self, train_dataset: Any = None) -> Any:
            return SequentialSampler(self.train_dataset)

        def compute_loss(self, model: Any, inputs: Any, return_outputs: bool = False,
                         num_items_in_batch: Any = None) -> Any:
            out = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            losses.append(float((out[0] if return_outputs else out).detach()))
            return out

    cuda = args.device == "cuda"
    with tempfile.TemporaryDirectory(prefix="gpu-check-trl-") as out_dir:
        config = DPOConfig(
            output_dir=out_dir, max_steps=steps, per_device_train_batch_size=bs,
            learning_rate=args.learning_rate, lr_scheduler_type="constant", warmup_steps=0,
            weight_decay=0.0, max_grad_norm=10.0, optim="adamw_torch", beta=0.1,
            loss_type=["sigmoid"], max_length=args.prompt_len + args.completion_len,
            precompute_ref_log_probs=True, gradient_checkpointing=False, bf16=cuda,
            use_cpu=not cuda, logging_steps=10, report_to="none", save_strategy="no",
            dataloader_num_workers=0, seed=args.seed, disable_dropout=True, disable_tqdm=True)
        began = time.perf_counter()
        trainer = OrderedDPO(model=model, args=config, train_dataset=Dataset.from_list(rows),
                             processing_class=tokenizer, peft_config=lora_config(),
                             callbacks=[Timing()])
        init_s = time.perf_counter() - began
        clock.start = clock.sync()
        trainer.train()
    result = clock.result(n // bs)
    del trainer, model
    return {**result, "init_s_tokenise_and_precompute": init_s}


def main() -> int:
    args = parse_args()
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(name)s %(message)s")
    with contextlib.redirect_stdout(sys.stderr):  # Trainer prints its logs: keep stdout JSON
        summary = run_all(args)
    text = json.dumps(summary, indent=1)
    if args.output:
        args.output.write_text(text)
    print(text)
    return 0 if summary["checks"]["runs"] and summary["checks"]["all_finite"] else 1


def run_all(args: argparse.Namespace) -> dict[str, Any]:
    started = time.perf_counter()
    for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "HF_HUB_DISABLE_TELEMETRY",
                 "TQDM_DISABLE"):  # no network there: TRL's telemetry ping would only wait
        os.environ.setdefault(name, "1")
    wheels = install_wheels(args.wheels) if args.wheels else None
    for site in args.trl_site:
        sys.path.append(str(site))
    trl = import_trl() if not args.no_trl else {"available": False, "reason": "--no-trl"}
    import peft
    import transformers

    names = ["tiny"] if args.tiny else args.models
    deadline = started + args.budget_s
    runs = [(name, kind) for name in names for kind in ("dpo", "trl", "ulma")
            if kind != "trl" or trl["available"]]
    summary: dict[str, Any] = {
        "device": args.device, "budget_s": args.budget_s, "wheels": wheels, "trl": trl,
        "gpu": torch.cuda.get_device_name() if args.device == "cuda" else None,
        "versions": {m.__name__: m.__version__ for m in (torch, transformers, peft)},
        "settings": {**{k: getattr(args, k) for k in ("batch_size", "prompt_len", "completion_len",
                                                        "examples", "learning_rate")}, "lora": LORA,
                     "dtype": "bf16 base, fp32 LoRA, bf16 autocast" if args.device == "cuda"
                     else "fp32"},
        "models": {}}
    for k, (name, kind) in enumerate(runs):
        vocab = ARCH[name]["vocab_size"]
        if name not in summary["models"]:
            tokenizer = word_tokenizer(vocab)
            pairs, points = random_records(vocab, args.examples, args.batch_size,
                                           args.prompt_len, args.completion_len, args.seed)
            summary["models"][name] = {"config": ARCH[name], "dpo": {}, "ulma": {
                "trl": "TRL has no ULMA (or point-wise DPO) trainer"}}
            if not trl["available"]:
                summary["models"][name]["dpo"]["trl"] = f"not run: {trl['reason']}"
        method = "ulma" if kind == "ulma" else "dpo"
        side = "trl" if kind == "trl" else "alignserve"
        now = time.perf_counter()
        share = (deadline - now) / (len(runs) - k)  # this run's slice of what is left
        if share < 5:
            summary["models"][name][method][side] = "skipped: time budget spent"
            continue
        logger.info("%s %s: %.0f s", name, kind, share)
        clock = Clock(args.device, now + share, args.min_steps)
        try:
            summary["models"][name][method][side] = (
                run_trl(name, pairs, tokenizer, args, clock) if kind == "trl" else
                run_ours(kind, name, pairs if kind == "dpo" else points, tokenizer, args, clock))
        except Exception as exc:  # one failed run (e.g. out of memory) must not lose the rest
            logger.exception("%s %s failed", name, kind)
            summary["models"][name][method][side] = f"failed: {exc!r}"[:1000]
    for entry in summary["models"].values():
        ours, theirs = entry["dpo"].get("alignserve"), entry["dpo"].get("trl")
        if isinstance(ours, dict) and isinstance(theirs, dict) and theirs["steps_per_s"]:
            entry["dpo"]["ratio_steps_per_s"] = (ours["steps_per_s"] or 0) / theirs["steps_per_s"]
            entry["dpo"]["first_step_loss_equal"] = abs(
                ours["losses"][0] - theirs["losses"][0]) < 1e-3
            if theirs["peak_memory_bytes"]:
                entry["dpo"]["ratio_peak_memory"] = ours["peak_memory_bytes"] / theirs[
                    "peak_memory_bytes"]
    done = [r for e in summary["models"].values() for m in ("dpo", "ulma")
            for r in e[m].values() if isinstance(r, dict)]
    summary["checks"] = {"runs": len(done), "all_finite": all(r["loss_finite"] for r in done),
                         "all_decreasing": all(r["loss_decreasing"] for r in done)}
    summary["wall_s"] = time.perf_counter() - started
    return summary


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    parser.add_argument("--tiny", action="store_true", help="a 2-layer model (smoke test)")
    parser.add_argument("--models", nargs="+", choices=list(ARCH)[:2], default=list(ARCH)[:2])
    parser.add_argument("--budget-s", type=float, default=420.0, help="for the whole check")
    for flag, default in (("--batch-size", 8), ("--examples", 32), ("--prompt-len", 192),
                          ("--completion-len", 320), ("--max-steps", 60), ("--min-steps", 0),
                          ("--seed", 0)):
        parser.add_argument(flag, type=int, default=default)
    parser.add_argument("--learning-rate", type=float, default=5e-4)
    parser.add_argument("--wheels", type=Path, default=None, help="folder of wheels to use")
    parser.add_argument("--trl-site", type=Path, action="append", default=[],
                        help="appended to sys.path to find TRL")
    parser.add_argument("--no-trl", action="store_true", help="ours only")
    parser.add_argument("--output", type=Path, default=None, help="also write the JSON here")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("CUDA is not available: use --device cpu")
    if args.tiny:
        args.batch_size, args.examples, args.prompt_len, args.completion_len = 2, 4, 8, 8
        args.max_steps, args.learning_rate = min(args.max_steps, 10), 2e-2
    if args.examples % args.batch_size:
        parser.error("--examples must be a multiple of --batch-size")
    args.min_steps = args.min_steps or 2 * args.examples // args.batch_size
    return args


if __name__ == "__main__":
    sys.exit(main())
