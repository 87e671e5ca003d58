"""TRL 1.16 ``DPOTrainer`` side of ``bench/training.py`` (steps per second on the same job).

Runs inside the TRL venv (``tests/trl_parity/provision.py``: TRL 1.16.0 with the project's own
torch, transformers, peft and accelerate versions), never in the project environment, and
imports nothing from the project. ``bench/training.py`` and the parity test start it as a
subprocess::

    <trl venv>/bin/python bench/trl_dpo_baseline.py --input job.json --output result.json

``job.json`` holds the model folder, the hyperparameters, the TRL speed settings and the
preference records already in the order our loop trains them (``{"messages", "chosen",
"rejected"}``).

Lock-step protocol (so both trainers see the same machine load): with
``precompute_ref_log_probs`` on, TRL's reference pass over the whole dataset (inside
``DPOTrainer.__init__``) first writes ``{"event": "precompute_wait"}``, waits for ``go``, runs,
and writes ``{"event": "precompute", "start", "end"}``. After building the trainer it writes
``{"event": "ready"}`` and waits for ``go``; after every optimizer step it writes
``{"event": "step", "step", "start", "end"}`` and waits for the next ``go`` (``start``/``end``:
wall clock, own CPU seconds, machine busy/total jiffies). A step's span runs from its ``go`` to
its ``on_step_end``: TRL's collation, forward/backward, clipping, AdamW and logging.
``--free-run`` skips the waiting (standalone use, the parity test).

The TRL job matches ours: the model in fp32 (``bf16=False``; TRL's default autocasts to bf16;
``job["trl"]["bf16"]`` turns it on for a side measurement) with a fresh LoRA adapter (peft
``LoraConfig``), the reference = the adapter disabled; prompt = the model's chat template with
``add_generation_prompt`` (a non-conversational dataset: TRL appends the EOS text to the
completion, as ``trainers.modeling.encode`` appends the EOS id); the sequence cut at
``max_length`` from the start (``truncation_mode="keep_start"``; TRL 1.16 has no
``max_prompt_length``, so the driver checks that no prompt of the run is longer than ours keeps);
sigmoid loss; ``torch.optim.AdamW`` (``optim="adamw_torch"``), constant learning rate, no weight
decay, clip at our ``max_grad_norm``; no gradient checkpointing (TRL's default is on; it saves
memory and costs a recomputed forward); batches in the given order (sequential sampler), no
gradient accumulation; ``report_to="none"``, ``use_cpu`` unless CUDA is asked for.

Written to ``--output``: the step spans, the precompute span, the exact loss of every step, the
first batch's per-example summed log-probs (policy and reference, from TRL's own forward calls)
and the token ids TRL trains on.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

logger = logging.getLogger("bench.trl_dpo_baseline")


def tick() -> list[float]:
    """Wall clock, this process's CPU seconds and machine-wide busy / total jiffies (the same
    tuple as ``bench.training.Tick``; this file cannot import the project)."""
    try:
        with open("/proc/stat") as f:
            values = [int(v) for v in f.readline().split()[1:]]
        idle = values[3] + (values[4] if len(values) > 4 else 0)
        busy, total = sum(values) - idle, sum(values)
    except OSError:
        busy = total = 0
    return [time.perf_counter(), time.process_time(), busy, total]


class Channel:
    """Line-delimited JSON to the driver on a private copy of stdout (fd 1 itself is pointed
    at stderr, so prints from the libraries cannot corrupt it); "go" lines from stdin."""

    def __init__(self, lockstep: bool) -> None:
        self.lockstep = lockstep
        self._out = os.fdopen(os.dup(sys.stdout.fileno()), "w", buffering=1)
        sys.stdout.flush()
        os.dup2(sys.stderr.fileno(), sys.stdout.fileno())

    def send(self, message: dict[str, Any]) -> None:
        if self.lockstep:
            self._out.write(json.dumps(message) + "\n")
            self._out.flush()

    def wait(self) -> None:
        if self.lockstep and sys.stdin.readline().strip() != "go":
            raise SystemExit("driver went away")


class TrlProcess:
    """The driver's end (``bench/training.py``, the parity test): this script in the TRL venv,
    released one step at a time. ``spans``: (start, end) tick lists of every step."""

    def __init__(self, job: dict[str, Any], folder: Path, free_run: bool = False) -> None:
        from tests.trl_parity.provision import TRL_VERSION, is_ready, venv_dir, venv_python

        root = venv_dir()
        if not is_ready(root):
            raise SystemExit(f"TRL {TRL_VERSION} venv missing at {root}; run: "
                             ".venv/bin/python tests/trl_parity/provision.py")
        job_path, self.out_path = folder / "job.json", folder / "result.json"
        job_path.write_text(json.dumps(job))
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
               "HF_HUB_DISABLE_TELEMETRY": "1", "TRANSFORMERS_OFFLINE": "1",
               "TOKENIZERS_PARALLELISM": "false", "TQDM_DISABLE": "1"}
        env.pop("PYTHONPATH", None)
        command = [str(venv_python(root)), str(Path(__file__).resolve()), "--input",
                   str(job_path), "--output", str(self.out_path)]
        self.proc = subprocess.Popen(
            command + (["--free-run"] if free_run else []), cwd=Path(__file__).parent,
            env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1,
        )
        self.spans: list[tuple[list[float], list[float]]] = []
        self.precompute_s = 0.0
        self.started = False

    def _read(self, event: str) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"TRL process ended early (exit {self.proc.wait()})")
        message: dict[str, Any] = json.loads(line)
        if message.get("event") != event:
            raise RuntimeError(f"expected {event!r} from TRL, got {message}")
        return message

    def _go(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()

    def start(self, precompute: bool) -> None:
        """Let TRL run its reference precompute (the driver idle), then wait until ready."""
        if precompute:
            self._read("precompute_wait")
            self._go()
            message = self._read("precompute")
            self.precompute_s = message["end"][0] - message["start"][0]
            logger.info("TRL  reference precompute: %.1f s", self.precompute_s)
        self._read("ready")
        self.started = True

    def step(self) -> None:
        """Release one TRL optimizer step and wait for it to end."""
        self._go()
        message = self._read("step")
        self.spans.append((message["start"], message["end"]))
        logger.info("TRL  step %d: %.1f s", message["step"], message["end"][0]
                    - message["start"][0])

    def finish(self, timeout: float) -> dict[str, Any]:
        if self.proc.wait(timeout=timeout) != 0:
            raise RuntimeError(f"TRL process failed with exit {self.proc.returncode}")
        result: dict[str, Any] = json.loads(self.out_path.read_text())
        return result

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def trl_config(job: dict[str, Any], out_dir: str) -> Any:
    """``DPOConfig``: the job's hyperparameters plus the speed settings in ``job["trl"]``."""
    from trl import DPOConfig

    hp: dict[str, Any] = job["hyperparameters"]
    speed: dict[str, Any] = job.get("trl", {})
    cuda = job.get("device", "cpu") == "cuda"
    # RPO (docs/algorithms.md §0.2): TRL 1.16 spells rpo_alpha as an "sft" term with its weight.
    rpo_alpha = job.get("rpo_alpha")
    losses = ["sigmoid", "sft"] if rpo_alpha else ["sigmoid"]
    weights = [1.0, float(rpo_alpha)] if rpo_alpha else None
    return DPOConfig(
        output_dir=out_dir, max_steps=int(hp["max_steps"]),
        per_device_train_batch_size=int(hp["batch_size"]), gradient_accumulation_steps=1,
        learning_rate=float(hp["learning_rate"]), lr_scheduler_type="constant",
        warmup_steps=0, weight_decay=float(hp["weight_decay"]),
        max_grad_norm=float(hp["max_grad_norm"]), optim="adamw_torch",
        beta=float(hp["beta"]), loss_type=losses, loss_weights=weights,
        max_length=int(hp["max_length"]),
        truncation_mode="keep_start",
        precompute_ref_log_probs=bool(speed.get("precompute_ref_log_probs", True)),
        precompute_ref_batch_size=speed.get("precompute_ref_batch_size"),
        gradient_checkpointing=False, bf16=bool(speed.get("bf16", False)), fp16=False,
        use_cpu=not cuda, logging_steps=int(speed.get("logging_steps", 10)), report_to="none",
        save_strategy="no", eval_strategy="no", dataloader_num_workers=0,
        seed=int(hp["seed"]), disable_dropout=True, disable_tqdm=True,
    )


def run(job: dict[str, Any], channel: Channel) -> dict[str, Any]:
    import peft
    import torch
    import transformers
    import trl
    from datasets import Dataset
    from peft import LoraConfig
    from torch.utils.data import SequentialSampler
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import DPOTrainer

    hp: dict[str, Any] = job["hyperparameters"]
    lora: dict[str, Any] = job["lora"]
    torch.set_num_threads(int(job["threads"]))
    tokenizer = AutoTokenizer.from_pretrained(job["model"], local_files_only=True)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(job["model"], dtype=torch.float32,
                                                 local_files_only=True)
    if job.get("device", "cpu") == "cuda":
        model = model.to("cuda")
    rows = [
        {"prompt": tokenizer.apply_chat_template(r["messages"], add_generation_prompt=True,
                                                 tokenize=False),
         "chosen": r["chosen"], "rejected": r["rejected"]}
        for r in job["records"]
    ]
    peft_config = LoraConfig(
        r=lora["r"], lora_alpha=lora["alpha"], lora_dropout=lora["dropout"],
        target_modules=list(lora["target_modules"]), task_type="CAUSAL_LM",
    )
    steps: list[dict[str, Any]] = []
    precompute: list[dict[str, Any]] = []
    losses: list[float] = []
    first: dict[str, list[float]] = {}
    batch_size = int(hp["batch_size"])

    def keep_first(key: str, chosen: Any, rejected: Any) -> None:
        if f"{key}_chosen" not in first:
            first[f"{key}_chosen"] = chosen.detach().double().tolist()[:batch_size]
            first[f"{key}_rejected"] = rejected.detach().double().tolist()[:batch_size]

    class Lockstep(TrainerCallback):
        """Times each optimizer step from the "go" that releases it to its ``on_step_end``;
        blocks after each step until the driver says "go"."""

        def __init__(self) -> None:
            self.start = tick()

        def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            channel.send({"event": "ready"})
            channel.wait()
            self.start = tick()

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            record = {"event": "step", "step": state.global_step, "start": self.start,
                      "end": tick()}
            steps.append(record)
            channel.send(record)
            if state.global_step < state.max_steps:
                channel.wait()
            self.start = tick()

    class OrderedDPOTrainer(DPOTrainer):
        """Trains the examples in the given order (our loop's batches) and records the exact
        per-step loss, the precompute span and the first batch's log-probs, from TRL's own
        calls; otherwise TRL's own code."""

        def _get_train_sampler(self, train_dataset: Any = None) -> Any:
            return SequentialSampler(train_dataset if train_dataset is not None
                                     else self.train_dataset)

        def _precompute_ref_logps(self, dataset: Any, name: str, size: int) -> Any:
            channel.send({"event": "precompute_wait"})
            channel.wait()
            start = tick()
            out = super()._precompute_ref_logps(dataset, name, size)
            record = {"event": "precompute", "start": start, "end": tick()}
            precompute.append(record)
            channel.send(record)
            return out

        def compute_ref_log_probs(self, model: Any, inputs: Any) -> Any:
            chosen, rejected = super().compute_ref_log_probs(model, inputs)
            keep_first("reference", chosen, rejected)
            return chosen, rejected

        def compute_loss(self, model: Any, inputs: Any, return_outputs: bool = False,
                         num_items_in_batch: Any = None) -> Any:
            calls: list[Any] = []
            handle = None
            if "policy_chosen" not in first:  # the policy (then the reference) forward
                handle = model.register_forward_hook(lambda m, a, out: calls.append(out))
            try:
                result = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            finally:
                if handle is not None:
                    handle.remove()
            for key, out in zip(("policy", "reference"), calls, strict=False):
                keep_first(key, *out.log_probs.sum(dim=1).chunk(2, dim=0))
            loss = result[0] if return_outputs else result
            losses.append(float(loss.detach()))
            return result

    with tempfile.TemporaryDirectory(prefix="trl-dpo-bench-") as out_dir:
        config = trl_config(job, out_dir)
        trainer = OrderedDPOTrainer(
            model=model, ref_model=None, args=config, train_dataset=Dataset.from_list(rows),
            processing_class=tokenizer, peft_config=peft_config, callbacks=[Lockstep()],
        )
        data = trainer.train_dataset
        tokens = [
            {"prompt": list(data[i]["prompt_ids"]), "chosen": list(data[i]["chosen_ids"]),
             "rejected": list(data[i]["rejected_ids"])}
            for i in range(len(data))
        ]
        started = time.perf_counter()
        trainer.train()
        logger.info("TRL trained %d steps in %.1f s", len(steps), time.perf_counter() - started)
        optimizer_class = type(getattr(trainer.optimizer, "optimizer", trainer.optimizer)).__name__
    peak = torch.cuda.max_memory_allocated() if torch.cuda.is_available() else None
    return {
        "versions": {"trl": trl.__version__, "transformers": transformers.__version__,
                     "peft": peft.__version__, "torch": torch.__version__},
        "threads": torch.get_num_threads(), "optimizer": optimizer_class,
        "settings": {k: getattr(config, k) for k in (
            "precompute_ref_log_probs", "precompute_ref_batch_size", "padding_free", "bf16",
            "gradient_checkpointing", "optim", "max_length", "truncation_mode", "use_cpu")},
        "steps": steps, "precompute": precompute, "losses": losses,
        "first_batch_logps": first, "tokens": tokens, "cuda_max_memory_allocated": peak,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--input", type=Path, required=True, help="job JSON from training.py")
    parser.add_argument("--output", type=Path, required=True, help="where to write the result")
    parser.add_argument("--free-run", action="store_true",
                        help="do not wait for the driver (standalone use, parity test)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE",
                 "HF_HUB_DISABLE_TELEMETRY"):
        os.environ.setdefault(name, "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    job: dict[str, Any] = json.loads(args.input.read_text())
    result = run(job, Channel(lockstep=not args.free_run))
    args.output.write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
