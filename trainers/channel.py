"""The channel between a worker and the ranks of its distributed job.

The worker serves a ``torch.distributed.TCPStore`` (PyTorch's key-value store, the one torchrun's
rendezvous uses) and passes its address to the ranks in ``ALIGNSERVE_CONTROL``:

* ``plan``: the job as the worker resolved it (JSON), read once by every rank;
* ``control``: ``continue``, ``cancel``, ``interrupt`` or ``lost``, set by the worker from its
  lease and the job's cancel flag; rank 0 reads it between steps and broadcasts it to the others
  over the process group;
* ``messages``: a queue rank 0 pushes progress to (metrics, events, resume points, the end);
  the worker pops it and writes to the job store, which only the worker talks to.

Because the ranks hold a connection to the worker, a rank notices when its worker is gone
(``watch``) and exits instead of training on as an orphan.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from datetime import timedelta
from typing import Any

import torch.distributed as dist

logger = logging.getLogger(__name__)

CONTROL_ENV = "ALIGNSERVE_CONTROL"
STATES = ("continue", "cancel", "interrupt", "lost")  # a state's index is its broadcast code
EXIT_ORPHANED = 75
_PLAN, _CONTROL, _MESSAGES = "plan", "control", "messages"
_TIMEOUT = timedelta(seconds=60)


class WorkerEnd:
    """The worker's side: serves the store on ``host`` (a free port)."""

    def __init__(self, host: str, plan: dict[str, Any]) -> None:
        self.store = dist.TCPStore(host, 0, is_master=True, wait_for_workers=False,
                                   timeout=_TIMEOUT)
        self.address = f"{host}:{self.store.port}"
        self.store.set(_PLAN, json.dumps(plan))
        self.state = "continue"
        self.store.set(_CONTROL, self.state)

    def set_state(self, state: str) -> None:
        if state != self.state:
            self.state = state
            self.store.set(_CONTROL, state)

    def messages(self) -> list[dict[str, Any]]:
        """Everything rank 0 sent since the last call, in order."""
        out = []
        while self.store.queue_len(_MESSAGES):
            out.append(json.loads(self.store.queue_pop(_MESSAGES, False)))
        return out


class RankEnd:
    """A rank's side: connects to the worker named in ``ALIGNSERVE_CONTROL``."""

    def __init__(self, address: str | None = None) -> None:
        self.address = address or os.environ[CONTROL_ENV]
        self.store = _connect(self.address)

    def plan(self) -> dict[str, Any]:
        plan: dict[str, Any] = json.loads(self.store.get(_PLAN))
        return plan

    def state(self) -> str:
        return self.store.get(_CONTROL).decode()

    def send(self, kind: str, **fields: Any) -> None:
        self.store.queue_push(_MESSAGES, json.dumps({"type": kind, **fields}))

    def watch(self, period_s: float = 1.0) -> None:
        """Exit this process when the worker or the torchrun agent that started it is gone
        (a SIGKILLed worker must not leave ranks behind)."""
        agent = os.getppid()
        address = self.address

        def run() -> None:
            store = _connect(address)  # its own connection: the main thread uses the other
            while True:
                time.sleep(period_s)
                if os.getppid() != agent:
                    logger.error("torchrun agent %d is gone; rank exits", agent)
                    os._exit(EXIT_ORPHANED)
                try:
                    store.check([_CONTROL])
                except Exception:  # the worker closed the store: it died or gave up
                    logger.error("worker at %s is gone; rank exits", address)
                    os._exit(EXIT_ORPHANED)

        threading.Thread(target=run, daemon=True, name="worker-watch").start()


def _connect(address: str) -> dist.TCPStore:
    host, port = address.rsplit(":", 1)
    return dist.TCPStore(host, int(port), is_master=False, timeout=_TIMEOUT)
