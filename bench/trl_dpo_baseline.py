"""TRL 0.28 ``DPOTrainer`` side of ``bench/training.py`` (steps per second on the same job).

Runs inside the isolated TRL parity venv (``tests/trl_parity/provision.py``: TRL 0.28.0 and
transformers 4.57.6, the project's torch), never in the project environment, and imports nothing
from the project. ``bench/training.py`` starts it as a subprocess::

    <trl venv>/bin/python bench/trl_dpo_baseline.py --input job.json --output result.json

``job.json`` holds the model folder, the hyperparameters and the preference records already in
the order our loop trains them (``{"messages", "chosen", "rejected"}``). peft comes from an extra
``--target`` folder on ``PYTHONPATH`` (the parity venv has none), same version as the project's.

Lock-step protocol (so both trainers see the same machine load, step by step): after building
the trainer it writes ``{"event": "ready"}`` and waits for a ``go`` line on stdin; after every
optimizer step it writes ``{"event": "step", "step", "start", "end"}`` (``start``/``end``: wall
clock, own CPU seconds, machine busy/total jiffies) and waits for the next ``go``. A step's span
runs from its ``go`` to its ``on_step_end``, so it includes TRL's logging of the previous step
and this step's batch collation. ``--free-run`` skips the waiting (standalone use).

The TRL job matches ours: the model in fp32 with a fresh LoRA adapter (peft ``LoraConfig``) and
the reference = the adapter disabled (no reference copy, no precomputed reference log-probs);
prompt = the model's chat template with ``add_generation_prompt``, completion = text + EOS
(``DPOTrainer.tokenize_row`` on a non-conversational dataset, as ``trainers.modeling.encode``);
prompt kept to its last ``max_prompt_length`` tokens, the whole sequence cut at ``max_length``
from the start (``truncation_mode="keep_start"``); sigmoid loss; ``torch.optim.AdamW``
(``optim="adamw_torch"``), constant learning rate, no weight decay, clip at our
``max_grad_norm``; fp32 (``bf16=False``; TRL's default would autocast to bf16) and no gradient
checkpointing (TRL's default is on; our loop has none); batches in the given order (sequential
sampler), no gradient accumulation; logging every step, ``report_to="none"``, ``use_cpu``.

Written to ``--output``: the step spans, the exact loss of every step, the first batch's
per-example summed log-probs (policy and reference, from ``concatenated_forward``) and the token
ids TRL trains on.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
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


def load_tokenizer(model_dir: Path) -> Any:
    """The model's ``tokenizer.json`` as a ``PreTrainedTokenizerFast``.

    The folder was saved by transformers 5 (``"tokenizer_class": "TokenizersBackend"``, which
    4.57 cannot resolve), so the fast tokenizer is built from the same files by hand.
    """
    from transformers import PreTrainedTokenizerFast

    config = json.loads((model_dir / "tokenizer_config.json").read_text())
    specials = {k: config[k] for k in ("bos_token", "eos_token", "pad_token", "unk_token")
                if config.get(k)}
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_file=str(model_dir / "tokenizer.json"),
        model_max_length=config.get("model_max_length", 8192), **specials,
    )
    template = model_dir / "chat_template.jinja"
    if template.is_file():
        tokenizer.chat_template = template.read_text()
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(model_dir: Path) -> Any:
    """The base model in fp32. transformers 5 writes ``rope_parameters``; 4.57 reads
    ``rope_theta`` (and would silently use its 10000 default), so it is carried over."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(model_dir, local_files_only=True)
    rope = json.loads((model_dir / "config.json").read_text()).get("rope_parameters") or {}
    if "rope_theta" in rope:
        config.rope_theta = float(rope["rope_theta"])
    if rope.get("rope_type", "default") != "default":
        raise SystemExit(f"unsupported rope_parameters for transformers 4.57: {rope}")
    return AutoModelForCausalLM.from_pretrained(
        model_dir, config=config, torch_dtype=torch.float32, local_files_only=True
    )


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


def run(job: dict[str, Any], channel: Channel) -> dict[str, Any]:
    import peft
    import torch
    import transformers
    import trl
    from datasets import Dataset
    from peft import LoraConfig
    from torch.utils.data import SequentialSampler
    from transformers import TrainerCallback
    from trl import DPOConfig, DPOTrainer

    hp: dict[str, Any] = job["hyperparameters"]
    lora: dict[str, Any] = job["lora"]
    model_dir = Path(job["model"])
    torch.set_num_threads(int(job["threads"]))
    tokenizer = load_tokenizer(model_dir)
    model = load_model(model_dir)
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
    losses: list[float] = []
    first: dict[str, list[float]] = {}

    class Lockstep(TrainerCallback):
        """Times each optimizer step from the "go" that releases it (or the previous step's end)
        to its ``on_step_end``; that span includes the previous step's logging and this step's
        batch collation. Blocks after each step until the driver says "go"."""

        def __init__(self) -> None:
            self.start = tick()

        def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            channel.send({"event": "ready"})
            channel.wait()
            self.start = tick()

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            end = tick()
            record = {"event": "step", "step": state.global_step, "start": self.start,
                      "end": end}
            steps.append(record)
            channel.send(record)
            if state.global_step < state.max_steps:
                channel.wait()
            self.start = tick()

    class OrderedDPOTrainer(DPOTrainer):
        """Trains the examples in the given order (our loop's batches) and records the exact
        per-step loss and the first batch's log-probs; otherwise TRL's own code."""

        def _get_train_sampler(self, train_dataset: Any = None) -> Any:
            return SequentialSampler(train_dataset if train_dataset is not None
                                     else self.train_dataset)

        def concatenated_forward(self, model: Any, batch: Any,
                                 is_ref_model: bool = False) -> Any:
            out = super().concatenated_forward(model, batch, is_ref_model=is_ref_model)
            key = "reference" if is_ref_model else "policy"
            if f"{key}_chosen" not in first:
                first[f"{key}_chosen"] = out["chosen_logps"].detach().double().tolist()
                first[f"{key}_rejected"] = out["rejected_logps"].detach().double().tolist()
            return out

        def compute_loss(self, model: Any, inputs: Any, return_outputs: bool = False,
                         num_items_in_batch: Any = None) -> Any:
            result = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            loss = result[0] if return_outputs else result
            losses.append(float(loss.detach()))
            return result

    with tempfile.TemporaryDirectory(prefix="trl-dpo-bench-") as out_dir:
        config = DPOConfig(
            output_dir=out_dir, max_steps=int(hp["max_steps"]),
            per_device_train_batch_size=int(hp["batch_size"]), gradient_accumulation_steps=1,
            learning_rate=float(hp["learning_rate"]), lr_scheduler_type="constant",
            warmup_steps=0, weight_decay=float(hp["weight_decay"]),
            max_grad_norm=float(hp["max_grad_norm"]), optim="adamw_torch",
            beta=float(hp["beta"]), loss_type="sigmoid", max_length=int(hp["max_length"]),
            max_prompt_length=int(hp["max_prompt_length"]), truncation_mode="keep_start",
            precompute_ref_log_probs=False, gradient_checkpointing=False, bf16=False,
            fp16=False, use_cpu=True, logging_steps=1, report_to="none", save_strategy="no",
            eval_strategy="no", dataloader_num_workers=0, seed=int(hp["seed"]),
            disable_dropout=True, disable_tqdm=True,
        )
        torch.manual_seed(int(hp["seed"]))
        trainer = OrderedDPOTrainer(
            model=model, ref_model=None, args=config, train_dataset=Dataset.from_list(rows),
            processing_class=tokenizer, peft_config=peft_config, callbacks=[Lockstep()],
        )
        data = trainer.train_dataset
        tokens = [
            {"prompt": list(data[i]["prompt_input_ids"]),
             "chosen": list(data[i]["chosen_input_ids"]),
             "rejected": list(data[i]["rejected_input_ids"])}
            for i in range(len(data))
        ]
        started = time.perf_counter()
        trainer.train()
        logger.info("TRL trained %d steps in %.1f s", len(steps), time.perf_counter() - started)
        optimizer_class = type(getattr(trainer.optimizer, "optimizer", trainer.optimizer)).__name__
    return {
        "versions": {"trl": trl.__version__, "transformers": transformers.__version__,
                     "peft": peft.__version__, "torch": torch.__version__},
        "threads": torch.get_num_threads(), "optimizer": optimizer_class,
        "steps": steps, "losses": losses,
        "first_batch_logps": first, "tokens": tokens,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--input", type=Path, required=True, help="job JSON from training.py")
    parser.add_argument("--output", type=Path, required=True, help="where to write the result")
    parser.add_argument("--free-run", action="store_true",
                        help="do not wait for the driver between steps (standalone use)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    job: dict[str, Any] = json.loads(args.input.read_text())
    result = run(job, Channel(lockstep=not args.free_run))
    args.output.write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
