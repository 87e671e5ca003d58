"""Device settings: which device a worker (or each of several workers on a host) trains on."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from contracts.store import Job, SqliteJobStore
from server.workers import WorkerPool
from tests.trainers.conftest import pairs
from trainers.devices import DeviceError, Placement, choose_devices, visible_devices
from trainers.worker import Worker, WorkerConfig


@pytest.mark.parametrize(("setting", "count", "index", "gpus", "expected"), [
    ("auto", 1, 0, 0, ["cpu"]),
    ("auto", 2, 3, 0, ["cpu", "cpu"]),
    ("cpu", 1, 0, 4, ["cpu"]),
    ("auto", 1, 0, 4, ["cuda:0"]),
    ("auto", 1, 3, 4, ["cuda:3"]),  # worker 3 of a 4-GPU host
    ("auto", 1, 5, 4, ["cuda:1"]),  # more workers than GPUs: they share, round robin
    ("auto", 2, 1, 4, ["cuda:2", "cuda:3"]),  # a 2-GPU job on worker 1
    ("cuda", 1, 2, 4, ["cuda:2"]),
    ("cuda:1", 1, 7, 4, ["cuda:1"]),  # one named GPU: whatever the index
    ("cuda:0,2", 1, 1, 4, ["cuda:2"]),
    ("cuda:1,cuda:3", 2, 0, 4, ["cuda:1", "cuda:3"]),
    (" CUDA:3 ", 1, 0, 4, ["cuda:3"]),
])
def test_choose_devices(setting: str, count: int, index: int, gpus: int,
                        expected: list[str]) -> None:
    assert choose_devices(setting, count, index, cuda_count=gpus) == expected


@pytest.mark.parametrize(("setting", "count", "gpus", "message"), [
    ("cuda", 1, 0, "not available"),
    ("cuda:2", 1, 2, "no GPU"),
    ("cuda:0,x", 1, 2, "bad device setting"),
    ("gpu", 1, 2, "bad device setting"),
    ("auto", 3, 2, "asks for 3 GPUs"),
    ("cuda:0", 2, 2, "asks for 2 GPUs"),
])
def test_impossible_settings_are_refused(setting: str, count: int, gpus: int,
                                         message: str) -> None:
    with pytest.raises(DeviceError, match=message):
        choose_devices(setting, count, cuda_count=gpus)


def test_this_host_probes_its_gpus() -> None:
    expected = "cuda:0" if torch.cuda.is_available() else "cpu"
    assert choose_devices("auto") == [expected]


def test_child_sees_its_gpus_through_the_parents_visible_devices(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert visible_devices([1, 2]) == "1,2"
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,5,6")
    assert visible_devices([1, 2]) == "5,6"


def test_cpu_runs_in_fp32_without_autocast() -> None:
    placement = Placement.on("cpu")
    assert placement.compute == torch.float32 == placement.frozen_dtype
    with placement.autocast():
        assert not torch.is_autocast_enabled("cpu")
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32


def test_worker_reads_its_device_and_index_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("ALIGNSERVE_WORKER_DEVICE", "cuda:1")
    monkeypatch.setenv("ALIGNSERVE_WORKER_INDEX", "3")
    config = WorkerConfig(tmp_path)
    assert (config.device, config.index) == ("cuda:1", 3)
    monkeypatch.delenv("ALIGNSERVE_WORKER_DEVICE")
    monkeypatch.delenv("ALIGNSERVE_WORKER_INDEX")
    assert (WorkerConfig(tmp_path).device, WorkerConfig(tmp_path).index) == ("auto", 0)


def test_a_device_the_host_lacks_fails_the_job_with_the_reason(
    make_job: Callable[..., Job], store: SqliteJobStore, home: Path
) -> None:
    job = make_job("dpo", pairs(), hyperparameters={"max_steps": 1})
    wanted, reason = ("cuda:99", "no GPU") if torch.cuda.is_available() else (
        "cuda", "CUDA is not available")
    Worker(store, WorkerConfig(home, worker_id="w", device=wanted)).run_forever(max_jobs=1)
    failed = store.get_job(job.id)
    assert failed is not None and failed.status == "failed"
    assert reason in (failed.error or "")


def _environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(item.decode().split("=", 1) for item in raw if b"=" in item)


def test_pool_gives_each_worker_its_index(tmp_path: Path) -> None:
    pool = WorkerPool(2, tmp_path / "home")
    pool.start()
    try:
        indices = []
        for proc in pool.processes:
            deadline = time.monotonic() + 10
            env = _environ(proc.pid)
            while "ALIGNSERVE_WORKER_INDEX" not in env and time.monotonic() < deadline:
                time.sleep(0.05)  # between fork and exec the child still has our environment
                env = _environ(proc.pid)
            indices.append(env.get("ALIGNSERVE_WORKER_INDEX"))
        assert indices == ["0", "1"]
    finally:
        pool.stop(timeout_s=20)
