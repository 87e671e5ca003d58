"""Training workers started by the server never outlive it: not after SIGTERM, not after kill -9."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import psutil
import pytest

from tests.real.conftest import ADMIN_KEY, USER_KEY, own_store
from tests.real.server_process import ServerProcess


def _children(pid: int) -> list[psutil.Process]:
    return psutil.Process(pid).children(recursive=True)


def _workers(procs: list[psutil.Process]) -> list[psutil.Process]:
    found = []
    for p in procs:
        try:
            if "worker" in p.cmdline():
                found.append(p)
        except psutil.NoSuchProcess:
            pass
    return found


def _gone(procs: list[psutil.Process], timeout_s: float) -> list[psutil.Process]:
    """The processes still alive after ``timeout_s``."""
    _, alive = psutil.wait_procs(procs, timeout=timeout_s)
    return alive


@pytest.mark.parametrize("how", ["sigterm", "sigkill"])
def test_workers_and_engine_leave_with_the_server(
    how: str, alignserve_home: Path, default_model: Path, tmp_path: Path
) -> None:
    server = ServerProcess(alignserve_home, env={
        "ALIGNSERVE_API_KEYS": USER_KEY, "ALIGNSERVE_ADMIN_KEYS": ADMIN_KEY,
        "ALIGNSERVE_KV_CACHE_GIB": "1", "ALIGNSERVE_WORKERS": "1",
        "ALIGNSERVE_STORE_URL": own_store(tmp_path),
    }).start()
    assert server.proc is not None
    try:
        deadline = time.monotonic() + 60
        while not _workers(_children(server.proc.pid)) and time.monotonic() < deadline:
            time.sleep(1)
        family = _children(server.proc.pid)
        assert _workers(family), "the server started no worker"
        os.kill(server.proc.pid, signal.SIGTERM if how == "sigterm" else signal.SIGKILL)
        server.proc.wait(60)
        alive = _gone(family, 60)
        assert not alive, f"left behind after {how}: {[p.cmdline()[:4] for p in alive]}"
    finally:
        for p in _children(server.proc.pid) if server.proc.poll() is None else []:
            p.kill()
        server.stop()
