"""Both logits-processor front-ends against vLLM's real interfaces, with hand-made batches.

Model Runner V2's loader and interface modules import without a GPU, so the V2 processor is
loaded by vLLM's own loader and driven with the real ``LogitsContext`` / request-state classes.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from vllm import SamplingParams
from vllm.v1.sample.logits_processor import BatchUpdate, MoveDirectionality
from vllm.v1.worker.gpu.sample.logits_processor import (
    LogitsContext,
    build_custom_logits_processors,
    build_custom_logits_processors_params_validator,
)

from align_core.linear_alignment import linear_alignment_logits
from server.engine.guidance.groups import Member
from server.engine.guidance.processor_v1 import GuidanceProcessorV1
from server.engine.guidance.processor_v2 import GuidanceProcessorV2

V = 64
MAX_REQS = 8


def params(member: Member | None, temperature: float = 0.0, seed: int | None = None
           ) -> SamplingParams:
    return SamplingParams(
        temperature=temperature, seed=seed, extra_args=member.args() if member else None
    )


def la_pair(group: str, alpha: float = 2.0) -> tuple[Member, Member]:
    visible = Member(group, visible=True, lead=False, kind="principle", alpha=alpha, top_p=0.9,
                     temperature=0.7)
    lead = Member(group, visible=False, lead=True, kind="principle", alpha=alpha, top_p=0.9,
                  temperature=0.7)
    return visible, lead


def expected(lead: torch.Tensor, ref: torch.Tensor, alpha: float = 2.0) -> torch.Tensor:
    return linear_alignment_logits(
        lead[None], ref[None], alpha=alpha, nucleus_top_p=0.9, nucleus_temperature=0.7
    )[0]


# -- Model Runner V2 -------------------------------------------------------------------------
@pytest.fixture
def v2() -> tuple[GuidanceProcessorV2, np.ndarray]:
    prompt_len = np.zeros(MAX_REQS, dtype=np.int32)
    req_states = SimpleNamespace(
        device=torch.device("cpu"), max_num_reqs=MAX_REQS, vocab_size=V, all_token_ids=None,
        prompt_len=SimpleNamespace(np=prompt_len), prefill_len=None, total_len=None,
    )
    (processor,) = build_custom_logits_processors(
        SimpleNamespace(), req_states, is_pooling_model=False,  # type: ignore[arg-type]
        custom_logitsprocs=[GuidanceProcessorV2],
    )
    assert isinstance(processor, GuidanceProcessorV2)
    return processor, prompt_len


def ctx(slots: list[int], local: list[int], pos: list[int], input_ids: list[int] | None = None
        ) -> LogitsContext:
    rows = torch.tensor(slots, dtype=torch.int32)
    per_req = sorted(set(slots), key=slots.index)
    return LogitsContext(
        expanded_idx_mapping=rows,
        idx_mapping=torch.tensor(per_req, dtype=torch.int32),
        idx_mapping_np=np.array(per_req, dtype=np.int32),
        expanded_local_pos=torch.tensor(local, dtype=torch.int32),
        input_ids=torch.tensor(input_ids or [0] * len(slots), dtype=torch.int32),
        pos=torch.tensor(pos, dtype=torch.int64),
        seq_lens_upper_bound_np=np.array([p + 1 for p in pos], dtype=np.int32),
    )


def test_v2_loader_takes_ours_and_refuses_a_v1_processor() -> None:
    with pytest.raises(ValueError, match="not a subclass"):
        build_custom_logits_processors_params_validator([GuidanceProcessorV1])
    validate = build_custom_logits_processors_params_validator([GuidanceProcessorV2])
    visible, _ = la_pair("g")
    validate(params(visible))
    bad = SamplingParams(extra_args={"alignserve_group": {**visible.args()["alignserve_group"],
                                                          "top_p": 0.0}})
    with pytest.raises(Exception, match="nucleus"):
        validate(bad)


def test_v2_pairs_rows_through_the_slot_mapping_as_rows_move(v2) -> None:
    processor, prompt_len = v2
    visible, lead = la_pair("g")
    # Slots: 5 = visible (prompt 10), 2 = lead (prompt 14), 0 = an ordinary request.
    assert processor.add_request(5, params(visible))
    assert processor.add_request(2, params(lead))
    assert not processor.add_request(0, params(None))
    prompt_len[[5, 2, 0]] = [10, 14, 7]
    torch.manual_seed(0)
    for order in ([5, 0, 2], [2, 5, 0], [0, 2, 5]):  # rows reordered every step
        logits = torch.randn(3, V)
        before = logits.clone()
        # Both members at their 4th generated token: pos = prompt_len + 3 - 1.
        pos = {5: 12, 2: 16, 0: 20}
        out = processor.apply(logits, ctx(order, [0, 0, 0], [pos[s] for s in order]))
        row = {slot: i for i, slot in enumerate(order)}
        want = expected(before[row[2]], before[row[5]])
        torch.testing.assert_close(out[row[5]], want)
        torch.testing.assert_close(out[row[2]], want)
        torch.testing.assert_close(out[row[0]], before[row[0]])


def test_v2_leaves_rows_alone_when_members_are_out_of_step_or_a_slot_is_reused(v2) -> None:
    processor, prompt_len = v2
    visible, lead = la_pair("g")
    processor.add_request(1, params(visible))
    processor.add_request(3, params(lead))
    prompt_len[[1, 3]] = [10, 14]
    logits = torch.randn(2, V)
    before = logits.clone()
    # The visible member is one token ahead: nothing is combined.
    out = processor.apply(logits, ctx([1, 3], [0, 0], [12, 15]))
    torch.testing.assert_close(out, before)
    # Slot 3 finishes and is recycled for an ordinary request: the visible row is left alone.
    processor.add_request(3, params(None))
    out = processor.apply(logits.clone(), ctx([1, 3], [0, 0], [12, 16]))
    torch.testing.assert_close(out, before)


def test_v2_speculative_rows_pair_while_the_drafts_agree(v2) -> None:
    processor, prompt_len = v2
    visible, lead = la_pair("g")
    processor.add_request(0, params(visible))
    processor.add_request(4, params(lead))
    prompt_len[[0, 4]] = [10, 20]
    # Each member has 3 rows (committed + 2 drafts). Draft 1 agrees (token 9), draft 2 does
    # not (11 vs 12): rows at local positions 0 and 1 combine, row 2 stays as it was.
    slots = [0, 0, 0, 4, 4, 4]
    local = [0, 1, 2, 0, 1, 2]
    pos = [15, 16, 17, 25, 26, 27]
    input_ids = [3, 9, 11, 5, 9, 12]
    logits = torch.randn(6, V)
    before = logits.clone()
    out = processor.apply(logits, ctx(slots, local, pos, input_ids))
    for k in (0, 1):
        want = expected(before[3 + k], before[k])
        torch.testing.assert_close(out[k], want)
        torch.testing.assert_close(out[3 + k], want)
    torch.testing.assert_close(out[2], before[2])
    torch.testing.assert_close(out[5], before[5])


def test_v2_sampled_groups_draw_one_token_for_both_members(v2) -> None:
    processor, prompt_len = v2
    visible, lead = la_pair("g")
    processor.add_request(6, params(visible, temperature=0.9, seed=42))
    processor.add_request(7, params(lead, temperature=0.9, seed=42))
    prompt_len[[6, 7]] = [10, 30]
    chosen = []
    for step in range(20):
        logits = torch.randn(2, V)
        combined = expected(logits[1].clone(), logits[0].clone())
        out = processor.apply(logits, ctx([6, 7], [0, 0], [9 + step, 29 + step]))
        finite = [torch.isfinite(out[i]).nonzero().flatten().tolist() for i in (0, 1)]
        assert finite[0] == finite[1] and len(finite[0]) == 1  # one token, the same for both
        assert torch.isfinite(combined[finite[0][0]])  # inside the aligned nucleus
        chosen.append(finite[0][0])
    assert len(set(chosen)) > 1  # a draw, not an argmax


# -- V1 (the CPU runner) ---------------------------------------------------------------------
def test_v1_tracks_added_moved_and_removed_rows() -> None:
    processor = GuidanceProcessorV1(None, torch.device("cpu"), False)
    visible, lead = la_pair("g")
    out_v: list[int] = [4, 5]
    out_p: list[int] = [4, 5]
    processor.update_state(BatchUpdate(
        batch_size=3, removed=[],
        added=[(0, params(visible), [1, 2], out_v), (1, params(None), [1], []),
               (2, params(lead), [1, 2, 3], out_p)],
        moved=[],
    ))
    logits = torch.randn(3, V)
    before = logits.clone()
    processor.apply(logits)
    want = expected(before[2], before[0])
    torch.testing.assert_close(logits[0], want)
    torch.testing.assert_close(logits[2], want)
    torch.testing.assert_close(logits[1], before[1])
    # Rows 0 and 2 swap places; the pairing follows.
    processor.update_state(BatchUpdate(batch_size=3, removed=[], added=[],
                                       moved=[(0, 2, MoveDirectionality.SWAP)]))
    logits = torch.randn(3, V)
    before = logits.clone()
    processor.apply(logits)
    torch.testing.assert_close(logits[2], expected(before[0], before[2]))
    # Out of step (the visible member is a token ahead): left alone.
    out_v.append(6)
    logits = torch.randn(3, V)
    before = logits.clone()
    processor.apply(logits)
    torch.testing.assert_close(logits, before)
    # The lead is removed: nothing is combined any more.
    out_p.append(6)
    processor.update_state(BatchUpdate(batch_size=2, removed=[0], added=[], moved=[]))
    logits = torch.randn(3, V)
    before = logits.clone()
    processor.apply(logits)
    torch.testing.assert_close(logits, before)
