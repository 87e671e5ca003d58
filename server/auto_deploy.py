"""Deploy on success: a job whose spec carries ``deploy: {"name": ...}`` goes live when it ends.

Workers are separate processes that only write the job store, so the server watches the store
for succeeded jobs with a deploy request and hands their checkpoints to the deployment service
(with its full safety gate). A checkpoint that already has a version in the store is never
redeployed, also after a restart. Every serving replica runs this watcher; when two pick the same
job at once, both propose a version and only the lower number proceeds (``deploy_once``). A
checkpoint refused before it got a version (bad checksum, wrong base) is not retried by this
process.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from server.deploy_service import DeploymentService, DeployMode
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
                continue
            self._attempted.add(job.checkpoint_id)
            full = (request.get("mode") or job.config.get("finetuning")) == "full"
            mode: DeployMode = "full" if full else "adapter"
            logger.info("job %s succeeded: deploying %s as %s (%s)", job.id,
                        job.checkpoint_id, request["name"], mode)
            record = await self.deployments.deploy_once(job.checkpoint_id, request["name"], mode)
            if record is not None:
                results.append(record)
        return results
