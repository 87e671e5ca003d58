"""Tie the engine's child processes to the API process that started them.

vLLM's engine core (and its workers) outlive an API process that was killed with SIGKILL: they
kept 4-5 GB here, and a GPU's memory on a GPU machine, until someone found them. On Linux a
child can ask for a signal when its parent dies (``PR_SET_PDEATHSIG``); the engine-core process
asks for SIGTERM (vLLM's own graceful shutdown) when our code first runs in it.
"""

from __future__ import annotations

import ctypes
import logging
import multiprocessing
import os
import signal
import sys

logger = logging.getLogger(__name__)
_PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """In a process started by another (never in the API process itself): SIGTERM on its death."""
    if not sys.platform.startswith("linux") or multiprocessing.parent_process() is None:
        return
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM) != 0:
        logger.warning("could not tie pid %d to its parent: errno %d", os.getpid(),
                       ctypes.get_errno())
        return
    if os.getppid() == 1:  # the parent died before we asked
        os.kill(os.getpid(), signal.SIGTERM)
