"""The engine-core scheduler keeps guidance groups together (real vLLM scheduler, no model)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from vllm.v1.engine import FinishReason
from vllm.v1.request import RequestStatus

from server.engine.guidance import combine
from server.engine.guidance.groups import REGROUP
from tests.engine.sched_harness import group, make_scheduler, request, step, tiny_config_folder


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_config_folder(tmp_path_factory.mktemp("tiny-config"))


def _members_in_step(log_sampled: dict[str, list[int]], name: str) -> set[str]:
    return {rid for rid in log_sampled if rid.startswith(f"{name}-")}


def test_a_member_waits_for_its_partner(model_dir: Path) -> None:
    s = make_scheduler(model_dir)
    visible, partner = group("g", 20, 30, 4)
    s.add_request(visible)
    first = step(s)
    assert first.sampled == {}  # held back: its partner has not arrived
    s.add_request(partner)
    second = step(s)
    assert set(second.sampled) == {"g-v", "g-p"}


def test_members_sample_together_to_the_end_and_finish_together(model_dir: Path) -> None:
    s = make_scheduler(model_dir)
    for r in group("g", 12, 40, 5):
        s.add_request(r)
    counts = {"g-v": 0, "g-p": 0}
    for _ in range(10):
        log = step(s)
        assert len(_members_in_step(log.sampled, "g")) in (0, 2)
        for rid in log.sampled:
            counts[rid] += 1
    assert counts == {"g-v": 5, "g-p": 5}
    assert not s.requests  # both finished, nothing left behind
    assert s.regroups == 0


def test_admission_waits_for_two_free_slots(model_dir: Path) -> None:
    s = make_scheduler(model_dir, max_num_seqs=2)
    s.add_request(request(10, 6, rid="plain"))
    step(s)
    for r in group("g", 10, 14, 3):
        s.add_request(r)
    for _ in range(12):
        log = step(s)
        assert len(_members_in_step(log.sampled, "g")) in (0, 2)
    assert s.regroups == 0
    assert not s.requests


def test_chunked_prefill_ends_both_prefills_in_one_step(model_dir: Path) -> None:
    # Prompts of 20 and 100 tokens, 64 tokens a step: the short one would finish its prefill
    # a step ahead of its partner and sample alone.
    s = make_scheduler(model_dir, max_num_batched_tokens=64)
    for r in group("g", 20, 100, 4):
        s.add_request(r)
    sampled_steps = []
    for _ in range(20):
        log = step(s)
        members = _members_in_step(log.sampled, "g")
        assert len(members) in (0, 2), log.sampled
        if members:
            sampled_steps.append(members)
    assert len(sampled_steps) == 4
    assert s.regroups == 0


def test_preemption_takes_the_whole_group(model_dir: Path) -> None:
    # 12 blocks of 16 tokens: three groups with long outputs cannot all stay resident.
    s = make_scheduler(model_dir, num_blocks=12, max_num_batched_tokens=256)
    names = ["a", "b", "c"]
    for name in names:
        for r in group(name, 24, 30, 40):
            s.add_request(r)
    preempted_any = False
    produced = {f"{n}-{m}": 0 for n in names for m in "vp"}
    for _ in range(400):
        log = step(s)
        preempted_any |= bool(log.preempted)
        for name in names:
            assert len(_members_in_step(log.sampled, name)) in (0, 2), log.sampled
        for rid in log.sampled:
            produced[rid] += 1
        if not s.requests:
            break
    assert preempted_any, "the KV cache was large enough to avoid preemption"
    assert not s.requests
    assert s.regroups == 0
    assert set(produced.values()) == {40}


def test_abort_of_one_member_aborts_the_group(model_dir: Path) -> None:
    s = make_scheduler(model_dir)
    visible, partner = group("g", 12, 16, 20)
    s.add_request(visible)
    s.add_request(partner)
    step(s)
    s.finish_requests("g-v", RequestStatus.FINISHED_ABORTED)
    assert "g-p" not in s.requests and "g-v" not in s.requests
    # A member still held back (its partner never came) is dropped too.
    lone, _ = group("h", 12, 16, 20)
    s.add_request(lone)
    s.finish_requests("h-v", RequestStatus.FINISHED_ABORTED)
    assert not s._held


def test_a_lone_or_diverging_sample_is_never_delivered(model_dir: Path) -> None:
    s = make_scheduler(model_dir)
    for r in group("g", 12, 16, 20):
        s.add_request(r)
    step(s)
    log = step(s, tamper={"g-p": [9]})  # the partner disagrees
    delivered = [o for o in log.outputs if o.request_id == "g-v"]
    assert len(delivered) == 1
    assert delivered[0].new_token_ids == []
    assert delivered[0].finish_reason == FinishReason.ABORT
    assert delivered[0].stop_reason == REGROUP
    assert "g-v" not in s.requests and "g-p" not in s.requests
    assert s.regroups == 1


def test_the_partner_ends_when_the_visible_member_stops(model_dir: Path) -> None:
    s = make_scheduler(model_dir)
    for r in group("g", 12, 16, 20):
        s.add_request(r)
    step(s)
    step(s, token=1)  # EOS for both
    assert not s.requests


def test_the_visible_member_gets_the_combined_logprobs(model_dir: Path) -> None:
    s = make_scheduler(model_dir)
    visible, partner = group("g", 12, 16, 3, want_logprobs=True)
    s.add_request(visible)
    s.add_request(partner)
    row = torch.log_softmax(torch.linspace(0, 5, 128), dim=-1)
    combine.publish_logprobs("g", row)
    log = step(s, token=7)
    out = next(o for o in log.outputs if o.request_id == "g-v")
    assert out.new_logprobs is not None
    ids, values = out.new_logprobs.logprob_token_ids[0], out.new_logprobs.logprobs[0]
    assert ids[0] == 7 and values[0] == pytest.approx(float(row[7]))
    assert list(ids[1:]) == [127, 126]  # the top-2 of the combined row
    assert out.new_logprobs.sampled_token_ranks[0] == 121


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4, 5])
def test_mixed_load_under_pressure_never_delivers_a_lone_token(model_dir: Path, seed: int) -> None:
    """Random groups and plain requests, a small KV cache, chunked prefill: whatever the
    scheduler does, a visible member never receives a token its partner did not sample."""
    import random

    rng = random.Random(seed)
    s = make_scheduler(model_dir, num_blocks=24, max_num_batched_tokens=64, max_num_seqs=6)
    pending = []
    for k in range(8):
        if rng.random() < 0.6:
            pending.extend(group(f"s{seed}g{k}", rng.randint(8, 90), rng.randint(8, 90),
                                 rng.randint(5, 40)))
        else:
            pending.append(request(rng.randint(8, 90), rng.randint(5, 40), rid=f"s{seed}p{k}"))
    delivered: dict[str, int] = {}
    for _ in range(1500):
        if pending and rng.random() < 0.3:
            s.add_request(pending.pop(0))
        log = step(s, token=rng.randint(10, 100))
        for out in log.outputs:
            delivered[out.request_id] = delivered.get(out.request_id, 0) + len(out.new_token_ids)
        groups = {rid.rsplit("-", 1)[0] for rid in log.sampled if "g" in rid.split("-")[0]}
        for name in groups:
            members = {rid for rid in log.sampled if rid.startswith(f"{name}-")}
            if len(members) == 1:  # a lone sample: the visible member must get nothing
                assert all(o.new_token_ids == [] for o in log.outputs
                           if o.request_id == f"{name}-v")
        if not pending and not s.requests and not s._held:
            break
    assert not s.requests and not s._held, "requests left behind"
