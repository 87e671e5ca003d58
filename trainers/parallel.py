"""How the shared loop spreads a step over processes: one process, DDP, or FSDP2.

``Parallel`` is the one-process case, where every operation is the identity; ``Distributed``
runs the same operations on a ``torch.distributed`` process group started by torchrun
(``trainers/rank.py``). The engines are PyTorch's own: ``DistributedDataParallel`` (replicated
weights, gradients all-reduced in buckets during backward) and FSDP2's ``fully_shard`` (weights,
gradients and optimizer state sharded; all-gathered for a step). Nothing here sums gradients
itself.

A stage's loss calls the model's decoder and head directly (``modeling.batch_logps``), not the
model's ``forward``, so the module is wrapped in ``Step``, whose ``forward`` runs the loss: DDP
and FSDP then see one forward per micro-batch and hook the backward as usual. FSDP shards
``Step`` as a single group: a step gathers the whole module once, then every forward inside it
is local. That keeps the ranks in lockstep although they run different numbers of forwards
(sequences go one at a time, reference log-probs are computed on first use per example);
per-layer groups would save more memory but would need equal forward counts on every rank.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

import torch
from torch import Tensor, nn

from trainers.modeling import trainable_state

# Long enough for rank 0 to generate a recipe's data while the others wait at a barrier; a rank
# that dies does not leave the others waiting this long: torchrun stops them all.
COLLECTIVE_TIMEOUT = timedelta(hours=2)


class Step(nn.Module):
    """Runs ``fn(*args)`` as the forward of ``module``'s wrapper (see the module docstring)."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, fn: Callable[..., Any], *args: Any) -> Any:
        return fn(*args)


class Parallel:
    """One process: the whole batch is this process's share, and nothing is communicated."""

    rank = 0
    world = 1
    strategy = "single"

    def __init__(self) -> None:
        self.steps: dict[str, nn.Module] = {}
        self._wrapped: dict[str, nn.Module] = {}

    @property
    def is_main(self) -> bool:
        """The process that writes resume points, metrics and the final model."""
        return self.rank == 0

    def shard(self, batch: list[int]) -> list[int]:
        """This rank's contiguous slice of the global batch (sizes are checked by the spec)."""
        share = len(batch) // self.world
        return batch[self.rank * share : (self.rank + 1) * share]

    def wrap(self, name: str, module: nn.Module) -> nn.Module:
        """The ``Step`` of ``ctx.modules[name]``, built once per job (FSDP shards in place)."""
        if name not in self.steps:
            self.steps[name] = self._wrap(Step(module))
            self._wrapped[name] = module
        elif self._wrapped[name] is not module:  # a stage replaced the module: its wrapper is stale
            raise RuntimeError(f"module {name!r} changed after it was wrapped")
        return self.steps[name]

    def _wrap(self, step: Step) -> nn.Module:
        return step

    @contextmanager
    def sync(self, step: nn.Module, last: bool) -> Iterator[None]:
        """Around forward and backward of a micro-batch: gradients are synchronised on the
        ``last`` one only (the others accumulate locally)."""
        yield

    def backward(self, loss: Tensor) -> None:
        # Each rank's loss is its share of the global-batch loss (normalised by the global
        # batch), so the gradient wanted is the sum over ranks; DDP and FSDP average instead.
        (loss * self.world if self.world > 1 else loss).backward()

    def sum(self, values: list[float]) -> list[float]:
        """Element-wise sum over the ranks."""
        return values

    def broadcast(self, value: int) -> int:
        """Rank 0's ``value`` on every rank."""
        return value

    def barrier(self) -> None:
        return None

    @contextmanager
    def gathered(self) -> Iterator[None]:
        """Whole (unsharded) weights in every module while the block runs (FSDP only)."""
        yield

    def grad_norm(self, params: list[nn.Parameter], max_norm: float) -> float:
        norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
        full = getattr(norm, "full_tensor", None)  # FSDP: a DTensor over the shards
        return float(full() if full is not None else norm)

    def trainable_state(self, name: str, module: nn.Module) -> dict[str, Tensor]:
        """The trained parameters, whole, on the main rank (collective under FSDP)."""
        return trainable_state(module)

    def optimizer_state(self, name: str, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
        return optimizer.state_dict()

    def load_optimizer(self, name: str, optimizer: torch.optim.Optimizer,
                       state: dict[str, Any]) -> None:
        optimizer.load_state_dict(state)



class Distributed(Parallel):
    """A rank of a torchrun job; ``torch.distributed`` is initialised by ``rank.py``."""

    def __init__(self, strategy: str, device: torch.device) -> None:
        import torch.distributed as dist

        super().__init__()
        self.dist = dist
        self.strategy, self.device = strategy, device
        self.rank, self.world = dist.get_rank(), dist.get_world_size()
        self._mesh: Any = None

    def _wrap(self, step: Step) -> nn.Module:
        if self.strategy == "fsdp":
            from torch.distributed.device_mesh import init_device_mesh
            from torch.distributed.fsdp import fully_shard

            if self._mesh is None:
                self._mesh = init_device_mesh(self.device.type, (self.world,))
            fully_shard(step, mesh=self._mesh)
            return step
        from torch.nn.parallel import DistributedDataParallel

        ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(step, device_ids=ids)

    @contextmanager
    def sync(self, step: nn.Module, last: bool) -> Iterator[None]:
        if self.strategy == "fsdp":
            step.set_requires_gradient_sync(last)  # type: ignore[operator]
            yield
        elif last:
            yield
        else:
            with step.no_sync():  # type: ignore[operator]
                yield

    def sum(self, values: list[float]) -> list[float]:
        tensor = torch.tensor(values, dtype=torch.float64, device=self.device)
        self.dist.all_reduce(tensor)
        out: list[float] = tensor.tolist()
        return out

    def broadcast(self, value: int) -> int:
        tensor = torch.tensor([value], dtype=torch.int64, device=self.device)
        self.dist.broadcast(tensor, src=0)
        return int(tensor.item())

    def barrier(self) -> None:
        self.dist.barrier()

    def _sharded(self) -> list[nn.Module]:
        return list(self.steps.values()) if self.strategy == "fsdp" else []

    @contextmanager
    def gathered(self) -> Iterator[None]:
        sharded = self._sharded()
        for step in sharded:
            step.unshard()  # type: ignore[operator]
        try:
            yield
        finally:
            for step in sharded:
                step.reshard()  # type: ignore[operator]

    def trainable_state(self, name: str, module: nn.Module) -> dict[str, Tensor]:
        if name not in self.steps or self.strategy != "fsdp":
            return trainable_state(module)
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        options = StateDictOptions(full_state_dict=True, cpu_offload=True,
                                   ignore_frozen_params=True)
        state = get_model_state_dict(self.steps[name], options=options)
        # The keys of ``trainable_state``: DCP also lists every name of a tied parameter
        # (``lm_head.weight`` beside the embeddings), which ``named_parameters`` gives once.
        names = {n for n, p in module.named_parameters() if p.requires_grad}
        return {key: value for key, value in
                ((k.removeprefix("module."), v) for k, v in state.items())
                if key in names and isinstance(value, Tensor)}

    def optimizer_state(self, name: str, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
        if self.strategy != "fsdp":
            return optimizer.state_dict()
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            get_optimizer_state_dict,
        )

        options = StateDictOptions(full_state_dict=True, cpu_offload=True)
        state: dict[str, Any] = get_optimizer_state_dict(self.steps[name], optimizer,
                                                         options=options)
        return state

    def load_optimizer(self, name: str, optimizer: torch.optim.Optimizer,
                       state: dict[str, Any]) -> None:
        if self.strategy != "fsdp":
            optimizer.load_state_dict(state)
            return
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            set_optimizer_state_dict,
        )

        set_optimizer_state_dict(self.steps[name], optimizer, state,
                                 options=StateDictOptions(full_state_dict=True))
