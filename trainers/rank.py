"""One rank of a distributed job, started by torchrun (``launch.py``): ``python -m
torch.distributed.run --nproc-per-node N ... -m trainers.rank``.

Every rank loads the policy, takes its slice of each global batch and trains it with the shared
loop (``parallel.Distributed``: DDP or FSDP2, NCCL on GPUs, gloo on CPUs). Rank 0 talks to the
worker (``channel.py``): it reads the job's control state between steps and broadcasts it to
every rank, sends metrics, events and resume points, and writes the final model files. A rank
that fails reports its traceback and exits non-zero; torchrun then stops the others.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import sys
import traceback
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from contracts.datasets import load_records
from contracts.specs import parse_spec
from trainers.channel import STATES, RankEnd
from trainers.devices import Placement
from trainers.launch import MODEL_DIR, STOPS
from trainers.loop import Stop
from trainers.parallel import COLLECTIVE_TIMEOUT, Distributed
from trainers.runner import public_summary, train_job, write_model

logger = logging.getLogger("trainers.rank")


class RankControl:
    """The loop's ``Control`` in a rank: rank 0 decides and speaks for all."""

    def __init__(self, channel: RankEnd, parallel: Distributed) -> None:
        self.channel, self.parallel = channel, parallel

    def check(self) -> None:
        # Every rank must stop at the same step, or the others would wait in a collective.
        code = STATES.index(self.channel.state()) if self.parallel.is_main else 0
        state = STATES[self.parallel.broadcast(code)]
        if state in STOPS:
            raise STOPS[state](f"{state} (from the worker)")

    def report(self, step: int, metrics: dict[str, float]) -> None:
        if self.parallel.is_main:
            self.channel.send("report", step=step, metrics=metrics)

    def event(self, message: str, data: dict[str, Any] | None = None) -> None:
        if self.parallel.is_main:
            self.channel.send("event", message=message, data=data)

    def resume_point(self, step: int, path: str) -> None:
        if self.parallel.is_main:
            self.channel.send("resume_point", step=step, path=path)


def _who(channel: RankEnd, parallel: Distributed, device: torch.device) -> None:
    """Rank 0 tells the worker where every rank runs (the worker makes sure that none of those
    on its host outlives the run)."""
    me = {"rank": parallel.rank, "pid": os.getpid(), "agent": os.getppid(),
          "host": socket.gethostname(), "device": str(device)}
    everyone: list[Any] = [None] * parallel.world
    dist.all_gather_object(everyone, me)
    if parallel.is_main:
        channel.send("ranks", ranks=everyone)


def run(channel: RankEnd) -> int:
    plan = channel.plan()
    rank, local_rank = int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"])
    logging.basicConfig(
        level=plan["log_level"], stream=sys.stderr,
        format=f"%(asctime)s rank {rank} %(name)s %(levelname)s: %(message)s",
    )
    channel.watch()
    cuda = plan["device_type"] == "cuda"
    device = torch.device(f"cuda:{local_rank}" if cuda else "cpu")
    placement = Placement.on(device)
    dist.init_process_group("nccl" if cuda else "gloo", timeout=COLLECTIVE_TIMEOUT,
                            device_id=device if cuda else None)
    spec = parse_spec(plan["config"])
    parallel = Distributed(spec.resources.strategy, device)
    _who(channel, parallel, device)
    control = RankControl(channel, parallel)
    work = Path(plan["work_dir"])
    try:
        if parallel.is_main:
            control.event(f"training on {parallel.world} ranks, rank 0 on {placement.describe()}")
        ctx, recipe, last = train_job(
            plan["job_id"], spec, plan["model_path"], load_records(Path(plan["dataset_path"])),
            work, control, placement, parallel, plan["resume_path"],
        )
        if parallel.strategy == "fsdp":  # every rank takes part; rank 0 gets the whole weights
            ctx.full_states = {n: parallel.trainable_state(n, m) for n, m in ctx.modules.items()}
        with parallel.gathered():  # a recipe's extras may run the model (AfD's held-out check)
            if parallel.is_main:
                target = work / MODEL_DIR
                shutil.rmtree(target, ignore_errors=True)
                target.mkdir(parents=True)
                write_model(ctx, recipe, target)
                channel.send("done", last=last, summary=public_summary(ctx))
    except Stop as stop:
        if parallel.is_main:
            reason = next(k for k, v in STOPS.items() if isinstance(stop, v))
            channel.send("stopped", reason=reason)
        logger.info("stopped: %s", stop)
    except Exception as e:
        logger.exception("rank %d failed", rank)
        channel.send("error", rank=rank, error=f"{type(e).__name__}: {e}",
                     traceback=traceback.format_exc()[-4000:])
        return 1  # no teardown: the other ranks may be stuck in a collective; torchrun ends them
    dist.destroy_process_group()
    logger.info("rank %d done", rank)
    return 0


if __name__ == "__main__":
    code = run(RankEnd())
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    # Files and the channel are closed by now; skip the interpreter's teardown of torch and
    # transformers, which takes seconds per rank and delays the job's end for nothing.
    os._exit(code)
