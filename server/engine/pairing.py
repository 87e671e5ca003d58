"""Linear alignment inside the vLLM batch: a logits processor that pairs two engine requests.

Every aligned request runs as two engine requests: the *visible* one (the conversation as sent,
z_0) and its *shadow* (the same conversation with the principle, z_p). At each step the processor
writes ``align_core.linear_alignment_logits(z_p, z_0, ...)`` into both rows, so both sample the
same token from the aligned distribution and both contexts grow identically.

The pair is only correct while both rows are in the same step with identical outputs. The
processor checks that at every step and reports broken pairs to the :class:`PairBook`; the engine
withholds that step's tokens and restarts the pair from its last good token (see vllm_engine).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

import torch
from vllm.v1.sample.logits_processor import BatchUpdate, LogitsProcessor, MoveDirectionality

from align_core.linear_alignment import linear_alignment_logits

PAIR_KEY = "alignserve_pair"

_BOOKS: dict[str, PairBook] = {}
_BOOKS_LOCK = threading.Lock()


@dataclass
class PairBook:
    """What the processor tells the engine: broken pairs and aligned log-probabilities.

    Both sides run on the engine thread (the in-process engine core), so plain containers do.
    """

    book_id: str
    broken: dict[str, str] = field(default_factory=dict)  # pair id -> reason
    logprob_rows: dict[str, torch.Tensor] = field(default_factory=dict)  # pair id -> (V,)

    def mark_broken(self, pair_id: str, reason: str) -> None:
        self.broken.setdefault(pair_id, reason)


def open_book(book_id: str) -> PairBook:
    with _BOOKS_LOCK:
        book = _BOOKS.setdefault(book_id, PairBook(book_id))
    return book


def close_book(book_id: str) -> None:
    with _BOOKS_LOCK:
        _BOOKS.pop(book_id, None)


def pair_args(
    book_id: str,
    pair_id: str,
    role: str,
    alpha: float,
    nucleus_top_p: float,
    nucleus_temperature: float,
    want_logprobs: bool,
) -> dict[str, Any]:
    """The ``SamplingParams.extra_args`` entry that makes a request one half of a pair."""
    return {
        PAIR_KEY: {
            "book": book_id,
            "pair": pair_id,
            "role": role,
            "alpha": float(alpha),
            "top_p": float(nucleus_top_p),
            "temperature": float(nucleus_temperature),
            "logprobs": bool(want_logprobs),
        }
    }


@dataclass
class _Row:
    book: PairBook
    pair_id: str
    visible: bool
    alpha: float
    top_p: float
    temperature: float
    want_logprobs: bool
    output_ids: list[int]


class LinearAlignmentProcessor(LogitsProcessor):
    """Batch-level processor; rows without a pair pass through untouched."""

    def __init__(self, vllm_config: Any, device: torch.device, is_pin_memory: bool) -> None:
        self._rows: dict[int, _Row] = {}
        self._device = device

    @classmethod
    def validate_params(cls, sampling_params: Any) -> None:
        extra = (sampling_params.extra_args or {}).get(PAIR_KEY)
        if extra is None:
            return
        if extra.get("role") not in ("visible", "shadow"):
            raise ValueError("alignment pair role must be 'visible' or 'shadow'")
        if not 0.0 < float(extra["top_p"]) <= 1.0 or float(extra["temperature"]) <= 0.0:
            raise ValueError("alignment nucleus parameters out of range")

    def is_argmax_invariant(self) -> bool:
        return False

    def update_state(self, batch_update: BatchUpdate | None) -> None:
        if batch_update is None:
            return
        for index in batch_update.removed:
            self._rows.pop(index, None)
        for index, params, _prompt_ids, output_ids in batch_update.added:
            extra = (params.extra_args or {}).get(PAIR_KEY) if params is not None else None
            if extra is None:
                self._rows.pop(index, None)
                continue
            self._rows[index] = _Row(
                book=open_book(extra["book"]),
                pair_id=extra["pair"],
                visible=extra["role"] == "visible",
                alpha=float(extra["alpha"]),
                top_p=float(extra["top_p"]),
                temperature=float(extra["temperature"]),
                want_logprobs=bool(extra["logprobs"]),
                output_ids=output_ids,
            )
        for a, b, direction in batch_update.moved:
            row_a, row_b = self._rows.pop(a, None), self._rows.pop(b, None)
            if row_a is not None:
                self._rows[b] = row_a
            if direction == MoveDirectionality.SWAP and row_b is not None:
                self._rows[a] = row_b

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        if not self._rows:
            return logits
        halves: dict[str, list[int | None]] = {}
        for index, row in self._rows.items():
            slot = halves.setdefault(row.pair_id, [None, None])
            slot[0 if row.visible else 1] = index
        visible_idx: list[int] = []
        shadow_idx: list[int] = []
        for pair_id, (vis, sha) in halves.items():
            book = self._rows[vis if vis is not None else sha].book  # type: ignore[index]
            if vis is None or sha is None:
                book.mark_broken(pair_id, "partner not scheduled in this step")
                continue
            out_v, out_s = self._rows[vis].output_ids, self._rows[sha].output_ids
            if len(out_v) != len(out_s) or (out_v and out_v[-1] != out_s[-1]):
                book.mark_broken(pair_id, "outputs diverged")
                continue
            visible_idx.append(vis)
            shadow_idx.append(sha)
        if not visible_idx:
            return logits
        rows = [self._rows[i] for i in visible_idx]
        vis_t = torch.tensor(visible_idx, device=logits.device)
        sha_t = torch.tensor(shadow_idx, device=logits.device)
        aligned = linear_alignment_logits(
            logits[sha_t].float(),
            logits[vis_t].float(),
            alpha=torch.tensor([r.alpha for r in rows], device=logits.device),
            nucleus_top_p=torch.tensor([r.top_p for r in rows], device=logits.device),
            nucleus_temperature=torch.tensor([r.temperature for r in rows], device=logits.device),
        ).to(logits.dtype)
        logits[vis_t] = aligned
        logits[sha_t] = aligned
        for k, row in enumerate(rows):
            if row.want_logprobs:
                row.book.logprob_rows[row.pair_id] = torch.log_softmax(aligned[k].float(), -1)
        return logits
