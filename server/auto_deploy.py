"""Deploy on success: a job whose spec carries ``deploy: {"name": ...}`` goes live when it ends.

Workers are separate processes that only write the job store, so the server watches the store
for succeeded jobs with a deploy request and hands their checkpoints to the deployment service
(with its full safety gate). A checkpoint already recorded as a deployment is never redeployed,
also after a restart.
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
        done = {r.checkpoint for r in self.deployments.records}
        results = []
        for job in await asyncio.to_thread(self.training.jobs, 500):
            request = (job.config or {}).get("deploy")
            if job.status != "succeeded" or not request or not job.checkpoint_id:
                continue
            if job.checkpoint_id in done:
                continue
            full = (request.get("mode") or job.config.get("finetuning")) == "full"
            mode: DeployMode = "full" if full else "adapter"
            logger.info("job %s succeeded: deploying %s as %s (%s)", job.id,
                        job.checkpoint_id, request["name"], mode)
            results.append(await self.deployments.deploy(job.checkpoint_id, request["name"], mode))
        return results
