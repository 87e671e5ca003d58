"""The worker's side of a distributed job: launch torchrun, relay progress, keep job semantics.

``resources.strategy`` ``ddp`` or ``fsdp`` runs the job as ``python -m torch.distributed.run
... -m trainers.rank`` (``rank.py``), one process per device. This process (the worker) keeps
what makes it a job: its lease (the heartbeat thread), cancellation and shutdown (relayed to
rank 0 through ``channel.py`` and broadcast by it to every rank between two steps), and every
write to the job store (rank 0 sends metrics, events and resume points here). Rank 0 alone writes
resume points and the final model files, which the worker turns into the checkpoint.

When a rank dies (a crash, the OOM killer, SIGKILL), torchrun stops the others (``--max-restarts
0``) and exits non-zero; the worker then raises ``RankFailure`` and the job is given back to the
queue, to resume from its last resume point, until it runs out of attempts. The worker makes
sure no torchrun agent or rank outlives the run.

Several hosts: ``resources.nodes > 1`` starts this host's agent with a c10d rendezvous on this
host (``ALIGNSERVE_DIST_HOST``, default its FQDN) and logs, as a job event, the command the other
hosts run to join; they need the same code, model and dataset paths, and ``ALIGNSERVE_HOME`` on a
shared file system (rank 0 may land on any host).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from contracts.specs import Resources
from trainers.channel import CONTROL_ENV, WorkerEnd
from trainers.devices import visible_devices
from trainers.loop import Control, Interrupted, JobCancelled, LeaseLost, Stop

logger = logging.getLogger(__name__)

HOST_ENV = "ALIGNSERVE_DIST_HOST"
MODEL_DIR = "final-model"
ROOT = Path(__file__).resolve().parents[1]
STOPS: dict[str, type[Stop]] = {
    "cancel": JobCancelled, "interrupt": Interrupted, "lost": LeaseLost,
}


class RankFailure(RuntimeError):
    """The distributed run ended without finishing or stopping as asked (a rank died)."""


@dataclass(frozen=True)
class Plan:
    """What every rank needs to train the job (sent through the channel, as JSON)."""

    job_id: str
    config: dict[str, Any]
    model_path: str
    dataset_path: str
    resume_path: str | None
    work_dir: str
    device_type: str = "cpu"
    log_level: int = logging.INFO


@dataclass
class Result:
    last: dict[str, float]
    summary: dict[str, Any]
    model_dir: Path

    def move_model(self, folder: Path) -> None:
        """Move rank 0's model files into ``folder`` (the checkpoint being written)."""
        for entry in self.model_dir.iterdir():
            os.replace(entry, folder / entry.name)
        shutil.rmtree(self.model_dir, ignore_errors=True)


def torchrun_command(resources: Resources, job_id: str, rendezvous: str | None) -> list[str]:
    """``torch.distributed.run`` for this host: ``resources.devices`` ranks of ``trainers.rank``;
    no restarts (a failed run is resumed by the job queue, from the last resume point)."""
    cmd = [sys.executable, "-m", "torch.distributed.run",
           f"--nproc-per-node={resources.devices}", f"--nnodes={resources.nodes}",
           "--max-restarts=0", "--monitor-interval=0.5"]
    if rendezvous is None:
        cmd.append("--standalone")
    else:
        cmd += ["--rdzv-backend=c10d", f"--rdzv-endpoint={rendezvous}", f"--rdzv-id={job_id}"]
    return [*cmd, "-m", "trainers.rank"]


@dataclass
class _Run:
    """What the ranks reported so far."""

    end: dict[str, Any] | None = None
    errors: list[str] = field(default_factory=list)
    pids: list[int] = field(default_factory=list)


def run_distributed(plan: Plan, resources: Resources, devices: list[str], control: Control, *,
                    poll_s: float = 0.2, check_s: float = 1.0) -> Result:
    """Train ``plan`` under torchrun on ``devices`` (this host's share); returns rank 0's final
    metrics and model folder. Raises ``Stop`` subclasses like the in-process loop, and
    ``RankFailure``."""
    cuda = devices[0].startswith("cuda")
    multi = resources.nodes > 1
    host = (os.environ.get(HOST_ENV) or socket.getfqdn()) if multi else "127.0.0.1"
    plan = Plan(**{**asdict(plan), "device_type": "cuda" if cuda else "cpu",
                   "log_level": logging.getLogger().getEffectiveLevel()})
    channel = WorkerEnd(host, asdict(plan))
    env = {**os.environ, CONTROL_ENV: channel.address,
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    if cuda:
        env["CUDA_VISIBLE_DEVICES"] = visible_devices([int(d.split(":")[1]) for d in devices])
    rendezvous = f"{host}:{_free_port()}" if multi else None
    cmd = torchrun_command(resources, plan.job_id, rendezvous)
    control.event(
        f"distributed run: {resources.strategy} over {resources.world_size} processes",
        {"devices": devices, "nodes": resources.nodes, "command": cmd[1:]},
    )
    if multi:
        control.event("waiting for the other hosts to join", {"run on each other host": (
            f"{CONTROL_ENV}={channel.address} python " + " ".join(cmd[1:]))})
    proc = subprocess.Popen(cmd, env=env, start_new_session=True)  # no terminal signals
    run = _Run()
    try:
        _supervise(proc, channel, control, run, poll_s, check_s)
    finally:
        _shut_down(proc, run.pids)
    logger.info("job %s: torchrun exited with %s", plan.job_id, proc.returncode)
    return _outcome(proc.returncode, channel.state, run, Path(plan.work_dir))


def _supervise(proc: subprocess.Popen[bytes], channel: WorkerEnd, control: Control, run: _Run,
               poll_s: float, check_s: float) -> None:
    next_check = 0.0
    while True:
        done = proc.poll() is not None
        for message in channel.messages():  # after an exit: everything rank 0 sent before it
            _relay(message, control, run)
        if done:
            return
        if channel.state == "continue" and time.monotonic() >= next_check:
            next_check = time.monotonic() + check_s
            try:
                control.check()  # heartbeat: lease, cancel flag, worker shutdown
            except Stop as stop:
                state = next(k for k, v in STOPS.items() if isinstance(stop, v))
                logger.info("distributed run: %s; telling the ranks", state)
                channel.set_state(state)
                if state == "lost":  # another worker owns the job: stop writing at once
                    return
        time.sleep(poll_s)


def _relay(message: dict[str, Any], control: Control, run: _Run) -> None:
    kind = message["type"]
    if kind == "report":
        control.report(message["step"], message["metrics"])
    elif kind == "event":
        control.event(message["message"], message.get("data"))
    elif kind == "resume_point":
        control.resume_point(message["step"], message["path"])
    elif kind == "ranks":  # only the ranks of this host can be checked (and killed) here
        here = socket.gethostname()
        run.pids = [int(r["pid"]) for r in message["ranks"] if r["host"] == here]
        control.event("ranks started", {"ranks": message["ranks"]})
    elif kind == "error":
        run.errors.append(f"rank {message['rank']}: {message['error']}")
        logger.error("rank %s failed:\n%s", message["rank"], message["traceback"])
    elif kind in ("done", "stopped"):
        logger.info("distributed run: rank 0 %s", kind)
        run.end = message


def _outcome(code: int | None, state: str, run: _Run, work: Path) -> Result:
    end = run.end or {}
    if end.get("type") == "done" and code == 0:
        return Result(end["last"], end["summary"], work / MODEL_DIR)
    reason = end.get("reason") if end.get("type") == "stopped" else state
    if reason in STOPS:  # a stop that was asked for ends the job as it would in one process
        raise STOPS[reason](f"distributed run stopped: {reason}")
    detail = run.errors[0] if run.errors else "no rank reported an error (killed?)"
    raise RankFailure(f"torchrun exited with code {code}; {detail}")


def _shut_down(proc: subprocess.Popen[bytes], pids: list[int]) -> None:
    """No agent or rank outlives the run: torchrun stops its ranks on SIGTERM (SIGKILL after
    30 s); whatever is left after that is killed."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=45)
        except subprocess.TimeoutExpired:
            logger.warning("torchrun %d ignored SIGTERM; killing it", proc.pid)
            _kill_group(proc.pid)
            proc.wait()
    for pid in pids:
        if _is_rank(pid):
            logger.warning("rank %d outlived torchrun; killing it", pid)
            _kill_group(pid)


def _kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)  # torchrun and each rank lead their own session


def _is_rank(pid: int) -> bool:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return b"trainers.rank" in cmdline and state != "Z"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        port: int = s.getsockname()[1]
        return port
