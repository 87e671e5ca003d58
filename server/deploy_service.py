"""Deployments: verify a checkpoint, put it live in the running engine, roll it back.

A version goes live only after its manifest and checksums verify, its base model matches the
served one and a smoke generation on it succeeds; any failure leaves the previous version
serving and marks the deployment failed with the reason. Records persist in
``ALIGNSERVE_HOME/deployments.json`` (atomic writes), so the history survives a restart.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from server.engine import vllm_deploy
from server.errors import ConflictError, InvalidRequestError, NotFoundError
from server.metrics import Metrics
from contracts.checkpoints import MANIFEST, sha256_file, verify_checkpoint

logger = logging.getLogger(__name__)

DeployMode = Literal["adapter", "full"]


@dataclass
class DeploymentRecord:
    name: str
    version: int | None
    checkpoint: str
    mode: str
    status: str  # deploying | live | retired | failed | rolled_back
    reason: str | None
    created_at: float
    swap_seconds: float | None = None
    phases: dict[str, float] | None = None  # seconds per phase: verify, load/drain, smoke, ...

    @property
    def label(self) -> str:
        return f"{self.name}@{self.version}"


class DeploymentService:
    def __init__(self, engine: Any, home: Path, metrics: Metrics):
        self.engine = engine
        self.home = home
        self.metrics = metrics
        self.path = home / "deployments.json"
        self.records: list[DeploymentRecord] = self._load()
        self._lock = asyncio.Lock()  # one deployment change at a time

    # -- API -------------------------------------------------------------------------------
    def records_view(self) -> list[dict[str, Any]]:
        return [{**asdict(r), "label": r.label if r.version else None} for r in self.records]

    async def deploy(self, checkpoint: str, name: str, mode: DeployMode) -> dict[str, Any]:
        if name == self.engine.config.served_name or "@" in name or not name.strip():
            raise InvalidRequestError(f"'{name}' cannot be a deployment name", param="name")
        folder = self._checkpoint_folder(checkpoint)
        record = DeploymentRecord(name, None, checkpoint, mode, "deploying", None, time.time())
        async with self._lock:
            self.records.append(record)
            try:
                checked = time.monotonic()
                weights = await asyncio.to_thread(self._verified_weights, folder, mode)
                verified = time.monotonic()
                logger.info("checkpoint %s verified in %.2f s", checkpoint, verified - checked)
                result = await vllm_deploy.deploy(self.engine, name, weights, mode, self._smoke())
            except Exception as exc:
                return self._failed(record, exc)
            record.version = int(result.label.rsplit("@", 1)[1])
            record.status, record.swap_seconds = "live", result.seconds
            record.phases = {"verify_s": verified - checked, **result.phases}
            self._retire_others(record)
            self._observe(mode, "ok", result.seconds)
            self._save()
            logger.info("deployed %s (%s, %.2f s)", result.label, mode, result.seconds)
        return {**asdict(record), "label": record.label}

    async def rollback(self, name: str) -> dict[str, Any]:
        async with self._lock:
            live = self._live(name)
            earlier = [
                r
                for r in self.records
                if r.name == name
                and r.status == "retired"
                and r.version is not None
                and r.version < (live.version or 0)
            ]
            if not earlier:
                raise ConflictError(f"deployment '{name}' has no earlier version to roll back to")
            target = earlier[-1]
            try:
                result = await vllm_deploy.activate(self.engine, target.label, self._smoke())
            except Exception as exc:
                self._observe(target.mode, "failed", None)
                raise ConflictError(f"rollback of '{name}' failed: {exc}") from exc
            live.status, target.status = "rolled_back", "live"
            self._observe(target.mode, "ok", result.seconds)
            self._save()
            return {
                **asdict(target),
                "label": target.label,
                "swap_seconds": result.seconds,
                "phases": result.phases,
            }

    async def delete(self, name: str) -> None:
        async with self._lock:
            live = self._live(name)
            await vllm_deploy.undeploy(self.engine, name)
            live.status = "retired"
            self._save()

    # -- checks ----------------------------------------------------------------------------
    def _checkpoint_folder(self, checkpoint: str) -> Path:
        folder = (self.home / "checkpoints" / checkpoint).resolve()
        if folder.parent != (self.home / "checkpoints").resolve() or not folder.is_dir():
            raise NotFoundError(f"checkpoint '{checkpoint}' not found", param="checkpoint")
        return folder

    def _verified_weights(self, folder: Path, mode: DeployMode) -> Path:
        """The folder to load, after every check; raises ValueError with the reason."""
        manifest_path = folder / MANIFEST
        if not manifest_path.is_file():
            raise ValueError("checkpoint has no manifest")
        manifest = json.loads(manifest_path.read_text())
        bad = verify_checkpoint(folder)
        if bad:
            raise ValueError(f"checksum mismatch in {', '.join(bad)}")
        self._check_base(manifest.get("base_model") or {})
        fmt = manifest.get("format")
        if mode == "adapter":
            if fmt != "peft-lora":
                raise ValueError(f"mode 'adapter' needs a LoRA checkpoint, this one is '{fmt}'")
            rank = json.loads((folder / "adapter_config.json").read_text()).get("r", 0)
            if rank > self.engine.config.max_lora_rank:
                raise ValueError(
                    f"adapter rank {rank} exceeds the engine's max_lora_rank "
                    f"{self.engine.config.max_lora_rank}"
                )
            return folder
        if fmt == "hf-full":
            return folder
        if fmt == "peft-lora":
            return self._merged(folder, manifest["checkpoint_id"])
        raise ValueError(f"unknown checkpoint format '{fmt}'")

    def _check_base(self, base: dict[str, Any]) -> None:
        served = Path(self.engine.config.model_path)
        want = base.get("config_sha256")
        have = sha256_file(served / "config.json") if (served / "config.json").is_file() else None
        if want is None or want != have:
            raise ValueError(
                f"checkpoint was trained on '{base.get('name')}', not on the served base model "
                f"'{self.engine.config.served_name}'"
            )

    def _merged(self, folder: Path, checkpoint_id: str) -> Path:
        """A LoRA checkpoint merged into full weights (cached), for mode 'full'."""
        from server.merge import merge_lora

        target = self.home / "merged" / checkpoint_id
        if not (target / "config.json").is_file():
            merge_lora(Path(self.engine.config.model_path), folder, target)
        return target

    def _smoke(self) -> list[int]:
        renderer = self.engine.renderer
        return renderer.encode(renderer.render_chat([{"role": "user", "content": "Hello"}], True))

    # -- records ---------------------------------------------------------------------------
    def _live(self, name: str) -> DeploymentRecord:
        for record in reversed(self.records):
            if record.name == name and record.status == "live":
                return record
        raise NotFoundError(f"no live deployment named '{name}'", param="name")

    def _retire_others(self, record: DeploymentRecord) -> None:
        for other in self.records:
            if other is not record and other.status == "live":
                same_name = other.name == record.name
                replaced_weights = record.mode == "full" and other.mode == "full"
                if same_name or replaced_weights:
                    other.status = "retired"

    def _failed(self, record: DeploymentRecord, exc: Exception) -> dict[str, Any]:
        record.status, record.reason = "failed", str(exc) or type(exc).__name__
        self._observe(record.mode, "failed", None)
        self._save()
        logger.warning(
            "deployment of %s as %s failed: %s", record.checkpoint, record.name, record.reason
        )
        return {**asdict(record), "label": None}

    def _observe(self, mode: str, outcome: str, seconds: float | None) -> None:
        self.metrics.swaps.labels(mode, outcome).inc()
        if seconds is not None:
            self.metrics.swap_seconds.labels(mode).observe(seconds)

    def _load(self) -> list[DeploymentRecord]:
        if not self.path.is_file():
            return []
        records = [DeploymentRecord(**r) for r in json.loads(self.path.read_text())]
        for r in records:  # the engine starts on the base weights: nothing is live after a restart
            if r.status in ("live", "deploying"):
                r.status, r.reason = "retired", "server restarted"
        return records

    def _save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".deployments-")
        with os.fdopen(fd, "w") as f:
            json.dump([asdict(r) for r in self.records], f, indent=2)
        os.replace(tmp, self.path)
