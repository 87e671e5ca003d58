"""Guidance groups on vLLM's V1 logits-processor interface (the CPU model runner).

Rows are requests; vLLM reports added, removed and moved rows through ``BatchUpdate`` (removed,
then added, then moved). Sampling stays vLLM's: both members are seeded alike and sample in the
same steps (the scheduler ends a group that did not), so their generators stay in step.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch
from vllm.v1.sample.logits_processor import BatchUpdate, LogitsProcessor, MoveDirectionality

from server.engine.guidance import groups
from server.engine.guidance.combine import RowPair, combine_rows, open_relay

logger = logging.getLogger(__name__)


@dataclass
class _Row:
    member: groups.Member
    output_ids: list[int]  # vLLM's live list of the request's generated tokens


class GuidanceProcessorV1(LogitsProcessor):
    """Batch-level processor; rows outside a group pass through untouched."""

    def __init__(self, vllm_config: Any, device: torch.device, is_pin_memory: bool) -> None:
        self._rows: dict[int, _Row] = {}
        open_relay()
        logger.info("guidance groups: V1 logits-processor front-end")

    @classmethod
    def validate_params(cls, sampling_params: Any) -> None:
        groups.validate(sampling_params)

    def is_argmax_invariant(self) -> bool:
        return False

    def update_state(self, batch_update: BatchUpdate | None) -> None:
        if batch_update is None:
            return
        for index in batch_update.removed:
            self._rows.pop(index, None)
        for index, params, _prompt_ids, output_ids in batch_update.added:
            member = groups.member_of(params) if params is not None else None
            if member is None:
                self._rows.pop(index, None)
            else:
                self._rows[index] = _Row(member, output_ids)
        for a, b, direction in batch_update.moved:
            row_a, row_b = self._rows.pop(a, None), self._rows.pop(b, None)
            if row_a is not None:
                self._rows[b] = row_a
            if direction == MoveDirectionality.SWAP and row_b is not None:
                self._rows[a] = row_b

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        if not self._rows:
            return logits
        pairs = row_pairs(self._rows)
        if pairs:
            combine_rows(logits, pairs)
        return logits


def row_pairs(rows: dict[int, _Row]) -> list[RowPair]:
    """The groups whose two members are both in this batch with the same generated tokens.

    Anything else is left alone: a member sampling without its partner is caught by the
    scheduler, which withholds the token and restarts the group.
    """
    by_group: dict[str, dict[bool, int]] = {}
    for index, row in rows.items():
        by_group.setdefault(row.member.group, {})[row.member.lead] = index
    pairs = []
    for group, members in by_group.items():
        lead, ref = members.get(True), members.get(False)
        if lead is None or ref is None:
            continue
        out_lead, out_ref = rows[lead].output_ids, rows[ref].output_ids
        if len(out_lead) != len(out_ref) or (out_lead and out_lead[-1] != out_ref[-1]):
            continue
        m = rows[lead].member
        want = m.want_logprobs if m.visible else rows[ref].member.want_logprobs
        pairs.append(RowPair(group, lead, ref, m.alpha, m.top_p, m.temperature, want))
    return pairs
