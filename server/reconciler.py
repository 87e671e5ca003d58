"""Bring this replica's engine to the deployments the shared store says are live.

Started with the app: one pass at start (before the server takes requests, so a restarted
replica comes back serving what is live), then a poll of ``deployment_revision()`` every
``interval_s``; when it moved, another pass. A pass holds the deployment service's lock (one
change at a time, routes included) and, for every name:

- desired but not live here at the desired version: the same gate as a deploy through this
  replica (verify, stage, smoke-test, switch), then a ``live`` report, or a ``failed`` report with
  the reason while the previous version keeps serving;
- live here but no longer desired: undeployed, reported ``removed``.

A failed name is retried at the next revision change, never in a loop of its own. Store reads are
blocking calls made off the event loop, so requests never wait on the database; if the store
cannot be read, polls back off up to ``MAX_BACKOFF_S``.
"""

from __future__ import annotations

import asyncio
import logging

from contracts.deployments import Deployment, DeploymentStore, DeploymentVersion
from server.deploy_service import DeploymentService

logger = logging.getLogger(__name__)

MAX_BACKOFF_S = 30.0


class Reconciler:
    def __init__(
        self, service: DeploymentService, store: DeploymentStore, interval_s: float = 1.0
    ):
        self.service = service
        self.store = store
        self.interval_s = interval_s
        self.revision: int | None = None  # the store revision the engine was last brought to
        self.passes = 0

    async def run(self) -> None:
        """Poll forever (cancel to stop)."""
        delay = self.interval_s
        while True:
            await asyncio.sleep(delay)
            try:
                await self.poll()
                delay = self.interval_s
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                delay = min(delay * 2, MAX_BACKOFF_S)
                logger.warning("deployment reconcile failed (%s); next try in %.0f s", exc, delay)

    async def poll(self) -> bool:
        """One pass if the store changed since the last one (or a local change asks for it);
        True when a pass ran."""
        # Read before desired(): a change in between shows up as a newer revision next poll.
        revision = await asyncio.to_thread(self.store.deployment_revision)
        if revision == self.revision and not self.service.needs_reconcile:
            return False
        await self.reconcile()
        self.revision = revision
        return True

    async def reconcile(self) -> None:
        service = self.service
        async with service.lock:
            service.needs_reconcile = False
            desired = await asyncio.to_thread(self.store.desired)
            deployments = {d.name: d for d in await asyncio.to_thread(self.store.list_deployments)}
            target, superseded = _one_full(desired, deployments)
            live = service.deployer.live()
            # Full weights first: a full name replacing another then costs one drained reload,
            # and undeploying the old one afterwards only drops its alias.
            for name, version in sorted(target.items(), key=lambda kv: kv[1].mode != "full"):
                label = f"{name}@{version.version}"
                if live.get(name) == label:
                    await service.report(name, version.version, "live")
                    continue
                await service.report(name, version.version, "deploying")
                try:
                    await service.gate(version)
                except Exception as exc:
                    await service.report(name, version.version, "failed", str(exc) or repr(exc))
                    continue
                await service.report(name, version.version, "live")
                logger.info("reconciled %s to the store's desired state", label)
            for name in sorted(set(service.deployer.live()) - set(target)):
                try:
                    await service.deployer.undeploy(name)
                except Exception as exc:
                    logger.warning("could not undeploy %s: %s", name, exc)
                    await service.report(name, None, "failed", f"undeploy failed: {exc}")
                    continue
                state = "superseded" if name in superseded else "removed"
                await service.report(name, None, state)
                logger.info("%s %s on this replica", name, state)
            self.passes += 1


def _one_full(
    desired: dict[str, DeploymentVersion], deployments: dict[str, Deployment]
) -> tuple[dict[str, DeploymentVersion], set[str]]:
    """The desired versions this engine can serve at once, and the full ones left out.

    One set of full weights serves at a time. A full deploy removes the other full names from
    the store right after it went live, so two are desired only briefly (or if that removal
    failed); the most recently changed one wins, as it did on the replica that changed it.
    """
    fulls = [name for name, v in desired.items() if v.mode == "full"]
    if len(fulls) <= 1:
        return desired, set()
    keep = max(fulls, key=lambda n: deployments[n].revision if n in deployments else -1)
    dropped = {n for n in fulls if n != keep}
    return {n: v for n, v in desired.items() if n not in dropped}, dropped
