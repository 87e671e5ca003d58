"""Where a trainer runs: which device a worker (or a rank) takes, and in which precision.

A worker's device setting (``ALIGNSERVE_WORKER_DEVICE``, default ``auto``) is one of:

* ``auto``: the host's GPUs when CUDA is present, else the CPU;
* ``cpu``;
* ``cuda`` (all GPUs, an error without CUDA), ``cuda:1``, or a list ``cuda:0,1`` / ``cuda:0,cuda:1``
  (the GPUs this worker owns).

Several workers on one host each get an index (``ALIGNSERVE_WORKER_INDEX``, set by the server's
worker pool); worker ``i`` starts its pick at GPU ``i * devices`` of its list, so one-GPU workers
spread over the GPUs. Indices are CUDA ordinals as the process sees them (after any
``CUDA_VISIBLE_DEVICES``).

Precision: on a GPU with bf16, the forward runs under bf16 autocast and frozen weights (the base
under a LoRA adapter) are stored in bf16; trained weights stay fp32 (the optimizer's master copy)
and the losses are computed in fp32 (``align_core`` casts logits up). The CPU runs in fp32, with
exactly the numbers of a plain fp32 run.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch

logger = logging.getLogger(__name__)

DEVICE_ENV = "ALIGNSERVE_WORKER_DEVICE"
INDEX_ENV = "ALIGNSERVE_WORKER_INDEX"


class DeviceError(ValueError):
    """A device setting that this host cannot satisfy."""


def _gpu_list(setting: str, cuda_count: int) -> list[int] | None:
    """The GPUs a setting allows (None: the CPU)."""
    if setting == "cpu":
        return None
    if setting == "auto":
        return list(range(cuda_count)) or None
    if setting == "cuda":
        gpus = list(range(cuda_count))
    elif setting.startswith("cuda:"):
        try:
            gpus = [int(part.strip().removeprefix("cuda:")) for part in setting[5:].split(",")]
        except ValueError:
            raise DeviceError(
                f"bad device setting {setting!r}; e.g. auto, cpu, cuda:1, cuda:0,1"
            ) from None
        missing = [g for g in gpus if not 0 <= g < cuda_count]
        if missing:
            raise DeviceError(f"{setting!r}: no GPU {missing} on this host ({cuda_count} visible)")
    else:
        raise DeviceError(f"bad device setting {setting!r}; e.g. auto, cpu, cuda:1, cuda:0,1")
    if not gpus:
        raise DeviceError(f"{setting!r}: CUDA is not available on this host")
    return gpus


def choose_devices(setting: str, count: int = 1, index: int = 0,
                   cuda_count: int | None = None) -> list[str]:
    """``count`` device names (``cuda:N`` or ``cpu``) for worker ``index``; pure given
    ``cuda_count`` (the number of visible GPUs, probed when None)."""
    if count < 1:
        raise DeviceError("a run needs at least one device")
    visible = torch.cuda.device_count() if cuda_count is None else cuda_count
    gpus = _gpu_list(setting.strip().lower() or "auto", visible)
    if gpus is None:
        return ["cpu"] * count
    if count > len(gpus):
        raise DeviceError(f"the job asks for {count} GPUs; this worker has {len(gpus)} ({setting})")
    start = (index * count) % len(gpus)
    return [f"cuda:{gpus[(start + k) % len(gpus)]}" for k in range(count)]


def visible_devices(ordinals: Sequence[int]) -> str:
    """``CUDA_VISIBLE_DEVICES`` for a child that must see exactly ``ordinals`` (this process's
    ordinals, mapped through its own ``CUDA_VISIBLE_DEVICES`` when that is set)."""
    mine = [d.strip() for d in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
    return ",".join(mine[i] if mine else str(i) for i in ordinals)


def _bf16(device: torch.device) -> bool:
    if device.type != "cuda":
        return False
    with torch.cuda.device(device):
        return bool(torch.cuda.is_bf16_supported())


@dataclass(frozen=True)
class Placement:
    """A device and its precision: ``compute`` is the autocast dtype (fp32: no autocast)."""

    device: torch.device
    compute: torch.dtype = torch.float32

    @classmethod
    def on(cls, name: str | torch.device) -> Placement:
        device = torch.device(name)
        if device.type == "cuda":
            torch.cuda.set_device(device)  # kernels and NCCL default to this GPU
        return cls(device, torch.bfloat16 if _bf16(device) else torch.float32)

    @classmethod
    def cpu(cls) -> Placement:
        return cls(torch.device("cpu"))

    @property
    def frozen_dtype(self) -> torch.dtype:
        """Storage dtype of weights that are never trained (a LoRA base, a reward model)."""
        return self.compute

    @contextmanager
    def autocast(self) -> Iterator[None]:
        if self.compute == torch.float32:
            yield
            return
        with torch.autocast(self.device.type, dtype=self.compute):
            yield

    def describe(self) -> str:
        return f"{self.device} ({str(self.compute).removeprefix('torch.')})"
