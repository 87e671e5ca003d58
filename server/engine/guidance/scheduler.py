"""The engine-core side of guidance groups: a vLLM scheduler that keeps the members together.

vLLM's scheduler sees two unrelated requests; left alone it admits the first member of a group
while the second still waits, preempts one and keeps the other, or finishes one while the other
runs on. :class:`GroupScheduler` (``SchedulerConfig.scheduler_cls``) wraps each step:

* **arrival**: a member is held back until every member of its group has arrived, then all are
  queued together (they travel separately from the API process);
* **admission**: a waiting group is hidden from the step unless sequence slots and free KV
  blocks exist for all of its members;
* **lockstep**: under chunked prefill, a member that could finish its prefill while its
  partner's remainder is larger than a whole step sits the step out, so both sample their first
  token in the same step; members get the same draft tokens under speculative decoding;
* **preemption**: a member whose partner was preempted is preempted too, before the step;
* **finish**: when one member finishes or is aborted, the group ends;
* **grammars**: members with structured outputs (both carry the same grammar) wait until both
  grammars compiled, so they start together and their grammar states advance alike;
* **check**: after every step the members' new tokens are compared. If they differ, or only one
  member sampled, no token is delivered: the group is aborted and its visible member ends with
  ``stop_reason = REGROUP``, on which the API process restarts it after its last good token.

Groups stay exact on every path; the rules above make restarts rare. What they cannot prevent:
vLLM preempting a member inside a step after its partner was scheduled (``_make_room`` frees
room beforehand for the common case), and two prefill remainders that each fit a step but not
together alongside other traffic. Both end in a restart that hits the prefix cache.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from typing import Any

import numpy as np
from vllm.v1.core.sched.scheduler import Scheduler
from vllm.v1.engine import EngineCoreOutput, EngineCoreOutputs, FinishReason
from vllm.v1.outputs import LogprobsLists
from vllm.v1.request import Request, RequestStatus

from server.engine.guidance import groups
from server.engine.guidance.combine import drop_logprobs, take_logprobs
from server.engine.lifeline import die_with_parent

logger = logging.getLogger(__name__)

_WAITING = (RequestStatus.WAITING, RequestStatus.PREEMPTED)


class GroupScheduler(Scheduler):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        die_with_parent()  # built in the engine-core process
        self._held: dict[str, list[Request]] = {}  # group -> members arrived so far
        self._members: dict[str, list[str]] = {}  # group -> request ids, visible first
        self._group_of: dict[str, str] = {}  # request id -> group
        self._want_logprobs: set[str] = set()  # groups whose visible member wants logprobs
        self._staged: set[str] = set()  # groups whose long prompt started alone
        self.regroups = 0
        logger.info("guidance groups: scheduler %s in the engine core", type(self).__name__)

    # -- arrival and finish ----------------------------------------------------------------
    def add_request(self, request: Request) -> None:
        member = groups.member_of(request.sampling_params)
        if member is None:
            super().add_request(request)
            return
        held = self._held.setdefault(member.group, [])
        held.append(request)
        if len(held) < member.size:
            return
        del self._held[member.group]
        held.sort(key=lambda r: not _member(r).visible)
        self._members[member.group] = [r.request_id for r in held]
        if any(_member(r).want_logprobs for r in held):
            self._want_logprobs.add(member.group)
        for r in held:
            self._group_of[r.request_id] = member.group
            super().add_request(r)

    def finish_requests(
        self, request_ids: str | Iterable[str] | None, finished_status: RequestStatus
    ) -> list[Request]:
        if request_ids is None:
            self._held.clear()
            finished = super().finish_requests(None, finished_status)
            for group in list(self._members):
                self._forget(group)
            return finished
        ids = {request_ids} if isinstance(request_ids, str) else set(request_ids)
        touched = {self._group_of[rid] for rid in ids if rid in self._group_of}
        for group, held in list(self._held.items()):
            if any(r.request_id in ids for r in held):
                del self._held[group]
        for group in touched:
            ids.update(self._members[group])
        finished = super().finish_requests(ids, finished_status)
        for group in touched:
            self._forget(group)
        return finished

    def _forget(self, group: str) -> None:
        for rid in self._members.pop(group, ()):
            self._group_of.pop(rid, None)
        self._want_logprobs.discard(group)
        self._staged.discard(group)
        drop_logprobs(group)

    # -- scheduling ------------------------------------------------------------------------
    def schedule(self, *args: Any, **kwargs: Any) -> Any:
        if not self._members:  # plain traffic: vLLM's scheduler, untouched
            return super().schedule(*args, **kwargs)
        hidden_running, hidden_waiting = self._plan()
        try:
            return super().schedule(*args, **kwargs)
        finally:
            self.running.extend(r for r in hidden_running if not r.is_finished())
            if hidden_waiting:
                self.waiting.prepend_requests(reversed(hidden_waiting))  # keeps their order

    def _requests(self, group: str) -> list[Request]:
        return [self.requests[rid] for rid in self._members[group] if rid in self.requests]

    def _plan(self) -> tuple[list[Request], list[Request]]:
        """Decide, before vLLM schedules the step, which members sit it out.

        Returns the members hidden from the running and the waiting queue (restored after the
        step); preempts a running member whose partner was preempted.
        """
        now = time.monotonic()
        needs = {r.request_id: self._blocks_needed(r) for r in self.running}
        self._make_room(now, needs)
        hide_running: list[Request] = []
        hide_waiting: list[Request] = []
        limit = getattr(self, "max_num_active_reqs", self.max_num_running_reqs)
        free_slots = limit - len(self.running)
        # Running requests are scheduled first: what they take this step is not free for us.
        free_blocks = self.kv_cache_manager.block_pool.get_num_free_blocks() - sum(
            needs[r.request_id] for r in self.running
        )
        budget = int(self.max_num_scheduled_tokens)  # no chunk is ever larger
        for group in list(self._members):
            members = self._requests(group)
            if len(members) < 2:
                continue
            if not all(_grammar_ready(r) for r in members):
                # vLLM admits a structured-output request once its own grammar compiled; the
                # partner's may still be compiling, and a member started alone samples alone.
                hide_waiting.extend(members)
                continue
            running = [r for r in members if r.status == RequestStatus.RUNNING]
            waiting = [r for r in members if r.status in _WAITING]
            left = {r.request_id: r.num_tokens_with_spec - r.num_computed_tokens for r in members}
            # A prefill ends in a step when its remainder fits the step; a remainder larger
            # than the whole budget cannot end in this step, whatever else runs.
            may_finish = {rid for rid, n in left.items() if n <= budget}
            lost = any(r.status == RequestStatus.PREEMPTED for r in waiting)
            if running and lost and group not in self._staged:
                for r in running:  # its partner lost its KV: both start again together
                    self.running.remove(r)
                    self._preempt_request(r, now)
            elif not running:
                need = sum(-(-r.num_tokens // self.block_size) for r in members)
                if free_slots < len(members) or need > free_blocks:
                    hide_waiting.extend(members)
                    continue
                free_slots -= len(members)
                free_blocks -= need
                self._staged.discard(group)
                if may_finish and len(may_finish) < len(members):
                    # Start the long prompt alone; the short one joins for its last chunk.
                    hide_waiting.extend(r for r in members if r.request_id in may_finish)
                    self._staged.add(group)
            elif waiting:  # a staged start (or a partial admission): one prompt is prefilling
                if not all(r.request_id in may_finish for r in running):
                    hide_waiting.extend(waiting)
                elif free_slots < len(waiting):  # no seat for the other one: both wait
                    hide_running.extend(running)
                    hide_waiting.extend(waiting)
                else:
                    free_slots -= len(waiting)
                    if not all(r.request_id in may_finish for r in waiting):
                        hide_running.extend(running)  # the other prompt catches up first
            elif may_finish and len(may_finish) < len(members):
                # The partner's prefill cannot end this step: ending now would sample alone.
                hide_running.extend(r for r in running if r.request_id in may_finish)
                self._staged.discard(group)
            else:
                self._staged.discard(group)
            if len(running) == len(members) and running[0].spec_token_ids:
                # Identical drafts keep acceptance identical.
                for r in running[1:]:
                    r.spec_token_ids = list(running[0].spec_token_ids)
        if hide_running:
            self.running = [r for r in self.running if r not in hide_running]
        if hide_waiting:
            present = [r for r in self.waiting if r in hide_waiting]
            self.waiting.remove_requests(present)
            hide_waiting = present
        return hide_running, hide_waiting

    def _make_room(self, now: float, needs: dict[str, int]) -> None:
        """Preempt from the back, whole groups at a time, until this step's blocks fit.

        vLLM preempts inside the step, one request at a time; a victim whose partner was
        already scheduled in the same step would leave that partner sampling alone. Freeing the
        room first, with the same victim order, keeps groups whole in the common case (decode
        steps crossing a block boundary); what remains is caught after the step.
        """
        free = self.kv_cache_manager.block_pool.get_num_free_blocks()
        short = sum(needs.values()) - free
        while short > 0 and self.running:
            victim = self.running[-1]
            group = self._group_of.get(victim.request_id)
            if group is None:
                victims = [victim]
            else:
                victims = [r for r in self._requests(group) if r.status == RequestStatus.RUNNING]
            for r in victims:
                held = sum(len(ids) for ids in self.kv_cache_manager.get_block_ids(r.request_id))
                short -= needs.get(r.request_id, 0) + held
                self.running.remove(r)
                self._preempt_request(r, now)

    def _blocks_needed(self, request: Request) -> int:
        """New KV blocks ``request`` takes if scheduled in full this step."""
        tokens = request.num_tokens_with_spec + self.num_lookahead_tokens
        held = sum(len(ids) for ids in self.kv_cache_manager.get_block_ids(request.request_id))
        return max(0, -(-tokens // self.block_size) - held)

    # -- after the step --------------------------------------------------------------------
    def update_from_output(self, scheduler_output: Any, model_runner_output: Any) -> Any:
        if not self._members:
            return super().update_from_output(scheduler_output, model_runner_output)
        broken = self._broken(scheduler_output, model_runner_output)
        signals: list[tuple[int, str]] = []
        for group in broken:
            visible = self.requests.get(self._members[group][0])
            if visible is not None:
                signals.append((visible.client_index, visible.request_id))
            self.regroups += 1
            logger.warning("guidance group %s lost lockstep; restarting it", group)
            self.finish_requests(self._members[group][0], RequestStatus.FINISHED_ABORTED)
        outputs: dict[int, EngineCoreOutputs] = super().update_from_output(
            scheduler_output, model_runner_output
        )
        for client, rid in signals:
            _emit(outputs, client, EngineCoreOutput(rid, [], finish_reason=FinishReason.ABORT,
                                                    stop_reason=groups.REGROUP))
        self._aligned_logprobs(outputs)
        self._end_finished_groups(outputs)
        return outputs

    def _broken(self, scheduler_output: Any, model_runner_output: Any) -> list[str]:
        scheduled = scheduler_output.num_scheduled_tokens
        sampled = model_runner_output.sampled_token_ids
        index = model_runner_output.req_id_to_index
        broken = []
        for group, ids in self._members.items():
            if not any(rid in scheduled for rid in ids):
                continue
            new = [
                list(sampled[index[rid]]) if sampled and rid in index and rid in scheduled else []
                for rid in ids
            ]
            if any(new) and (not all(new) or any(n != new[0] for n in new)):
                broken.append(group)
        return broken

    def _aligned_logprobs(self, outputs: dict[int, EngineCoreOutputs]) -> None:
        """Replace the visible member's logprobs (z_ref's) with the combined distribution's."""
        if not self._want_logprobs:
            return
        wanted = {self._members[g][0]: g for g in self._want_logprobs if g in self._members}
        for eco in outputs.values():
            for out in eco.outputs:
                group = wanted.get(out.request_id)
                if group is None or out.new_logprobs is None or len(out.new_token_ids) != 1:
                    continue
                row = take_logprobs(group)
                if row is not None:
                    out.new_logprobs = _logprobs_row(row, out.new_token_ids[0], out.new_logprobs)

    def _end_finished_groups(self, outputs: dict[int, EngineCoreOutputs]) -> None:
        for group in list(self._members):
            ids = self._members[group]
            alive = [rid for rid in ids if rid in self.requests and not
                     self.requests[rid].is_finished()]
            if len(alive) == len(ids):
                continue
            visible = self.requests.get(ids[0])
            if ids[0] in alive and visible is not None:
                # The partner hit the context limit first (its prompt is longer).
                _emit(outputs, visible.client_index,
                      EngineCoreOutput(ids[0], [], finish_reason=FinishReason.LENGTH))
            if alive:
                super().finish_requests(alive, RequestStatus.FINISHED_ABORTED)
            self._forget(group)


def _grammar_ready(request: Request) -> bool:
    """False while the request waits for its grammar to compile (a failed compile is ready:
    vLLM then ends the request with the error, and the group with it)."""
    if request.status != RequestStatus.WAITING_FOR_STRUCTURED_OUTPUT_GRAMMAR:
        return True
    so = request.structured_output_request
    return so is None or so.is_grammar_ready


def _member(request: Request) -> groups.Member:
    member = groups.member_of(request.sampling_params)
    assert member is not None
    return member


def _emit(outputs: dict[int, EngineCoreOutputs], client: int, out: EngineCoreOutput) -> None:
    eco = outputs.get(client)
    if eco is None:
        outputs[client] = eco = EngineCoreOutputs(outputs=[])
    eco.outputs.append(out)


def _logprobs_row(row: Any, token: int, raw: LogprobsLists) -> LogprobsLists:
    """A one-position LogprobsLists of width ``raw``'s: the sampled token, then the top-k."""
    width = raw.logprob_token_ids.shape[1]
    top = max(width - 1, 0)
    values, ids = row.topk(top) if top else (row[:0], row[:0].long())
    token_ids = np.array([[token, *ids.tolist()]], dtype=raw.logprob_token_ids.dtype)
    chosen = float(row[token])
    logprobs = np.array([[chosen, *values.tolist()]], dtype=raw.logprobs.dtype)
    rank = np.array([1 + int((row > row[token]).sum())], dtype=raw.sampled_token_ranks.dtype)
    return LogprobsLists(token_ids, logprobs, rank, None)
