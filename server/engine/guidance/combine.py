"""The one place both processor front-ends apply the align_core rule to rows of a batch.

Also the hand-off of aligned log-probabilities from the processor (worker) to the scheduler
(engine core): with a single-process executor both live in the engine-core process, so a
process-local table does; :func:`relay_available` tells the API when that holds.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from align_core.linear_alignment import linear_alignment_logits


@dataclass(frozen=True)
class RowPair:
    """Two logits rows of one group at one position: ``z_lead`` and ``z_ref``."""

    group: str
    lead_row: int
    ref_row: int
    alpha: float
    top_p: float
    temperature: float
    want_logprobs: bool = False


def combine_rows(logits: Tensor, pairs: Sequence[RowPair]) -> Tensor:
    """Write ``z_lead + alpha (z_lead - z_ref)`` (under the lead's nucleus) into both rows.

    ``logits``: ``(R, V)``, modified in place. Returns the ``(K, V)`` combined rows in float32,
    one per pair, in order.
    """
    device = logits.device
    lead = torch.tensor([p.lead_row for p in pairs], device=device)
    ref = torch.tensor([p.ref_row for p in pairs], device=device)
    aligned = linear_alignment_logits(
        logits[lead].float(),
        logits[ref].float(),
        alpha=torch.tensor([p.alpha for p in pairs], device=device),
        nucleus_top_p=torch.tensor([p.top_p for p in pairs], device=device),
        nucleus_temperature=torch.tensor([p.temperature for p in pairs], device=device),
    )
    cast = aligned.to(logits.dtype)
    logits[lead] = cast
    logits[ref] = cast
    for k, pair in enumerate(pairs):
        if pair.want_logprobs:
            publish_logprobs(pair.group, torch.log_softmax(aligned[k], dim=-1))
    return aligned


@dataclass(frozen=True)
class Draw:
    """A request's own sampling settings, for a draw made inside the processor."""

    temperature: float
    top_p: float
    top_k: int  # 0 or -1: off
    seed: int


_MASK64 = (1 << 63) - 1


def draw_token(row: Tensor, draw: Draw, index: int) -> int:
    """Sample one token from ``row`` (float32 ``(V,)``), reproducibly from (seed, index).

    Members of a group sit at different absolute positions (their prompts differ), so a sampler
    whose noise depends on the position, as Model Runner V2's does, would give them different
    tokens. Both members call this with the same ``index`` (the number of tokens generated so
    far) and so draw the same token.
    """
    scaled = row.float() / max(draw.temperature, 1e-5)
    if draw.top_k > 0:
        kth = torch.topk(scaled, min(draw.top_k, scaled.numel())).values[-1]
        scaled = scaled.masked_fill(scaled < kth, float("-inf"))
    probs = torch.softmax(scaled, dim=-1)
    if draw.top_p < 1.0:
        sorted_probs, order = torch.sort(probs, descending=True)
        before = torch.cumsum(sorted_probs, dim=-1) - sorted_probs
        drop = before >= draw.top_p
        drop[0] = False
        probs = probs.scatter(0, order[drop], 0.0)
    generator = torch.Generator(device=row.device)
    generator.manual_seed((draw.seed * 1_000_003 + index) & _MASK64)
    # Exponential race: argmax p / E with E ~ Exp(1) samples from p (as vLLM's own sampler).
    noise = torch.empty_like(probs).exponential_(generator=generator)
    return int(torch.argmax(probs / noise).item())


def force_token(logits: Tensor, row: int, token: int) -> None:
    """Leave ``token`` the only finite entry of ``row``: every sampler then picks it."""
    keep = logits[row, token].clone()
    logits[row].fill_(float("-inf"))
    logits[row, token] = keep if torch.isfinite(keep) else 0.0


# -- aligned log-probabilities: processor -> scheduler ------------------------------------------
_RELAY: dict[str, Tensor] = {}
_RELAY_LOCK = threading.Lock()
_RELAY_OPEN = threading.Event()  # set in a process that holds both a processor and a scheduler


def open_relay() -> None:
    """Called where the processor is built (the worker): log-probabilities land here."""
    _RELAY_OPEN.set()


def relay_available() -> bool:
    """Whether this process's scheduler can read what its processors published."""
    return _RELAY_OPEN.is_set()


def publish_logprobs(group: str, row: Tensor) -> None:
    with _RELAY_LOCK:
        _RELAY[group] = row


def take_logprobs(group: str) -> Tensor | None:
    with _RELAY_LOCK:
        return _RELAY.pop(group, None)


def drop_logprobs(group: str) -> None:
    with _RELAY_LOCK:
        _RELAY.pop(group, None)
