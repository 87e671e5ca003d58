"""Deploy on success: a job whose spec carries ``deploy: {"name": ...}`` goes live when it ends.

Workers are separate processes that only write the job store, so the server watches the store
for succeeded jobs with a deploy request and hands their checkpoints to the deployment service
(with its full safety gate). A checkpoint that already has a version in the store is never
redeployed, also after a restart. Every serving replica runs this watcher; when two pick the same
job at once, both propose a version and only the lower number proceeds (``deploy_once``). A
checkpoint refused before it got a version (bad checksum, wrong base) is not retried by this
process.

The outcome is written to the job's events (data ``{"deployment": name, "status": "live" |
"failed", ...}``) by the replica that deployed: the OpenAI view reports a deploying job as
``succeeded`` only once that event says ``live`` (``server/api/fine_tuning_views.py``).

A deploy request with a ``gate`` (``contracts.specs.GateSpec``) is evaluated on the staged
adapter before it goes live (``server.eval_gate``); a refusal is recorded like any failed
deployment, with the numbers, and what was live keeps serving. An align job refused with
attempts left is followed by its next attempt (``server.align_retry``); the refused job's events
name it (data ``{"stage": "attempt", "next_job": ...}``).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from contracts.records import Job
from contracts.specs import GateSpec
from server.align_retry import attempt_of, next_attempt_id, retry_refused
from server.deploy_service import DeploymentService, DeployMode
from server.engine.deployer import StagedCheck
from server.errors import InvalidRequestError, ServiceUnavailableError
from server.eval_gate import EvaluationGate, GateFailed
from server.training import TrainingService

logger = logging.getLogger(__name__)


class AutoDeployer:
    def __init__(
        self, training: TrainingService, deployments: DeploymentService, interval_s: float = 2.0
    ):
        self.training = training
        self.deployments = deployments
        self.interval_s = interval_s
        self._attempted: set[str] = set()  # refused ones get no version, so remember them here
        self._evaluation: EvaluationGate | None = None  # built on the first gated deployment

    async def run(self) -> None:
        while True:
            try:
                await self.deploy_finished()
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("auto-deploy pass failed; retrying")
            await asyncio.sleep(self.interval_s)

    async def deploy_finished(self) -> list[dict[str, Any]]:
        jobs = [
            job for job in await asyncio.to_thread(self.training.jobs, 500)
            if job.status == "succeeded" and job.checkpoint_id
            and (job.config or {}).get("deploy") and job.checkpoint_id not in self._attempted
        ]
        if not jobs:
            return []
        done = await self.deployments.proposed_checkpoints()
        results = []
        for job in jobs:
            assert job.checkpoint_id is not None
            request = job.config["deploy"]
            if job.checkpoint_id in done:
                self._attempted.add(job.checkpoint_id)
                await asyncio.to_thread(self._catch_up_attempt, job)
                continue
            self._attempted.add(job.checkpoint_id)
            full = (request.get("mode") or job.config.get("finetuning")) == "full"
            mode: DeployMode = "full" if full else "adapter"
            logger.info("job %s succeeded: deploying %s as %s (%s)", job.id,
                        job.checkpoint_id, request["name"], mode)
            check = self._gate(job, request) if request.get("gate") else None
            try:
                record = await self.deployments.deploy_once(
                    job.checkpoint_id, request["name"], mode, check=check)
            except ServiceUnavailableError as exc:  # the engine is starting or busy: retry
                self._attempted.discard(job.checkpoint_id)
                logger.info("job %s: %s not deployed yet (%s); retrying", job.id,
                            request["name"], exc)
                continue
            except Exception as exc:  # recorded on the job, so its clients learn it failed
                logger.exception("job %s: deploying %s failed", job.id, request["name"])
                record = {"name": request["name"], "version": None, "status": "failed",
                          "reason": str(exc) or type(exc).__name__}
            if record is not None:  # None: another replica deploys it (and records it)
                await asyncio.to_thread(self._record, job.id, record)
                results.append(record)
        return results

    def _gate(self, job: Job, request: dict[str, Any]) -> StagedCheck:
        """The job's evaluation gate on the staged version; its numbers go to the job's events
        and the checkpoint's record either way. A refused align job with attempts left is
        followed by its next attempt (``server.align_retry``)."""
        spec, name, job_id = GateSpec.model_validate(request["gate"]), request["name"], job.id

        async def check(label: str) -> None:
            if self._evaluation is None:
                self._evaluation = EvaluationGate(self.deployments.engine,
                                                  self.deployments.home)
            live = self.deployments.deployer.live().get(name)
            await asyncio.to_thread(
                self.training.store.add_event, job_id,
                f"evaluation gate: {label} answers {', '.join(spec.suites)} "
                f"({spec.limit} prompts each, from prompt {spec.offset + 1})"
                + (f" next to {live}" if live else ""),
                data={"stage": "gate", "status": "running"})
            result = await self._evaluation.run(spec, label, live)
            message = (f"evaluation gate passed: {label}" if result.passed else
                       f"evaluation gate refused {label}: {'; '.join(result.failures)}")
            await asyncio.to_thread(
                self.training.store.add_event, job_id, message,
                level="info" if result.passed else "error",
                data={"stage": "gate", "status": "passed" if result.passed else "refused",
                      **result.as_dict()})
            if not result.passed:
                await asyncio.to_thread(self._next_attempt, job)
                raise GateFailed(result)

        return check

    def _catch_up_attempt(self, job: Job) -> None:
        """After a restart: a job refused by the gate whose next attempt was never made (the
        server stopped in between) gets it now."""
        attempt, attempts = attempt_of(job.config or {})
        if attempt >= attempts or self.training.store.get_job(next_attempt_id(job.id, attempt)):
            return
        outcome = self.training.gate_result(job.id)
        if outcome is not None and outcome["status"] == "refused":
            self._next_attempt(job)

    def _next_attempt(self, job: Job) -> None:
        attempt, attempts = attempt_of(job.config or {})
        try:
            following = retry_refused(self.training, job)
        except InvalidRequestError as exc:
            self.training.store.add_event(
                job.id, f"attempt {attempt + 1} of {attempts} cannot start: {exc}",
                level="error", data={"stage": "attempt", "attempt": attempt + 1,
                                     "attempts": attempts, "reason": str(exc)})
            return
        if following is None:
            if attempts > 1:
                self.training.store.add_event(
                    job.id, f"no attempt left ({attempt} of {attempts} made)", level="error",
                    data={"stage": "attempt", "attempt": attempt, "attempts": attempts})
            return
        self.training.store.add_event(
            job.id, f"attempt {attempt + 1} of {attempts}: job {following.id} trains the same "
            "answers again with the next seed",
            data={"stage": "attempt", "attempt": attempt + 1, "attempts": attempts,
                  "next_job": following.id})

    def _record(self, job_id: str, record: dict[str, Any]) -> None:
        name, live = record["name"], record["status"] == "live"
        message = (f"fine-tuned model {name} is live (version {record['version']}): the job has "
                   "succeeded" if live else f"deploying {name} failed: {record.get('reason')}")
        data = {"deployment": name, "status": "live" if live else "failed",
                "version": record.get("version"), "reason": record.get("reason")}
        self.training.store.add_event(job_id, message, level="info" if live else "error",
                                      data=data)
