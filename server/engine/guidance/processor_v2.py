"""Guidance groups on Model Runner V2's logits-processor interface (vLLM's CUDA default).

Under V2 a logits row is not a request: rows are reordered every step and mapped to persistent
request *slots* through ``ctx.expanded_idx_mapping``; under speculative decoding a request owns
one row per draft token (``ctx.expanded_local_pos``). Per-slot state is set in
``add_request`` (slots are recycled, so it is always overwritten there).

Row ``k`` of a request sees the committed tokens plus its first ``k`` draft tokens, so the rows
at position ``k`` of two members may be combined only while their drafts agree up to ``k`` (the
scheduler gives both members the same drafts; the check here keeps a disagreement harmless).

V2 samples with noise drawn from (seed, absolute position), and the members' positions differ by
the length difference of their prompts. For sampled (temperature > 0) groups the processor draws
the token itself from (seed, generated-token index), identical for both members, and leaves it
the only finite logit; greedy groups need no draw.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from vllm.v1.worker.gpu.sample.logits_processor.interface import (
    LogitsContext,
    LogitsProcessor,
    LogitsProcRequestState,
)

from server.engine.guidance import groups
from server.engine.guidance.combine import (
    Draw,
    RowPair,
    combine_rows,
    draw_token,
    force_token,
    open_relay,
)

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Slot:
    member: groups.Member
    draw: Draw | None  # None: greedy


class GuidanceProcessorV2(LogitsProcessor):
    def __init__(self, vllm_config: Any, req_states: LogitsProcRequestState) -> None:
        self._req_states = req_states
        self._slots: dict[int, _Slot] = {}
        self._in_group = np.zeros(req_states.max_num_reqs, dtype=bool)
        open_relay()
        logger.info("guidance groups: Model Runner V2 logits-processor front-end")

    @classmethod
    def validate_params(cls, sampling_params: Any) -> None:
        groups.validate(sampling_params)

    def add_request(self, req_idx: int, sampling_params: Any) -> bool:
        member = groups.member_of(sampling_params)
        if member is None:
            self._slots.pop(req_idx, None)
            self._in_group[req_idx] = False
            return False
        draw = None
        if sampling_params.temperature > 0:
            draw = Draw(
                temperature=float(sampling_params.temperature),
                top_p=float(sampling_params.top_p),
                top_k=int(sampling_params.top_k or 0),
                seed=int(sampling_params.seed or 0),
            )
        self._slots[req_idx] = _Slot(member, draw)
        self._in_group[req_idx] = True
        return True

    def apply(self, logits: torch.Tensor, ctx: LogitsContext) -> torch.Tensor:
        if not np.any(self._in_group[ctx.idx_mapping_np]):
            return logits
        slot_of_row = ctx.expanded_idx_mapping.cpu().numpy()
        local_of_row = ctx.expanded_local_pos.cpu().numpy()
        pos_of_row = ctx.pos.cpu().numpy()
        prompt_len = self._req_states.prompt_len.np
        # (group, local position) -> {lead?: row}
        rows: dict[tuple[str, int], dict[bool, int]] = {}
        index_of_row: dict[int, int] = {}
        for row, slot in enumerate(slot_of_row.tolist()):
            entry = self._slots.get(slot)
            if entry is None or not self._in_group[slot]:
                continue
            rows.setdefault((entry.member.group, int(local_of_row[row])), {})[
                entry.member.lead
            ] = row
            index_of_row[row] = int(pos_of_row[row]) + 1 - int(prompt_len[slot])
        pairs, draws = self._pairs(rows, index_of_row, slot_of_row, ctx)
        if not pairs:
            return logits
        aligned = combine_rows(logits, pairs)
        for k, (pair, draw) in enumerate(zip(pairs, draws, strict=True)):
            if draw is None:
                continue
            token = draw_token(aligned[k], draw, index_of_row[pair.lead_row])
            force_token(logits, pair.lead_row, token)
            force_token(logits, pair.ref_row, token)
        return logits

    def _pairs(
        self,
        rows: dict[tuple[str, int], dict[bool, int]],
        index_of_row: dict[int, int],
        slot_of_row: np.ndarray,
        ctx: LogitsContext,
    ) -> tuple[list[RowPair], list[Draw | None]]:
        drafts_agree = _DraftCheck(ctx, rows)
        pairs: list[RowPair] = []
        draws: list[Draw | None] = []
        for (group, local), members in sorted(rows.items(), key=lambda kv: kv[0][1]):
            lead, ref = members.get(True), members.get(False)
            if lead is None or ref is None:
                continue
            if index_of_row[lead] != index_of_row[ref] or index_of_row[lead] < 0:
                continue  # not at the same generated token (or still prefilling)
            if local > 0 and not drafts_agree(group, local):
                continue
            lead_slot = self._slots[int(slot_of_row[lead])]
            ref_slot = self._slots[int(slot_of_row[ref])]
            m = lead_slot.member
            want = m.want_logprobs if m.visible else ref_slot.member.want_logprobs
            want = want and local == 0
            pairs.append(RowPair(group, lead, ref, m.alpha, m.top_p, m.temperature, want))
            draws.append(lead_slot.draw)
        return pairs, draws


class _DraftCheck:
    """Whether two members fed the same draft tokens up to a local position (lazy host copy)."""

    def __init__(self, ctx: LogitsContext, rows: dict[tuple[str, int], dict[bool, int]]):
        self._ctx = ctx
        self._rows = rows
        self._ids: np.ndarray | None = None

    def __call__(self, group: str, local: int) -> bool:
        if self._ids is None:
            self._ids = self._ctx.input_ids.cpu().numpy()
        for k in range(1, local + 1):
            members = self._rows.get((group, k))
            if members is None or True not in members or False not in members:
                return False
            if self._ids[members[True]] != self._ids[members[False]]:
                return False
        return True
