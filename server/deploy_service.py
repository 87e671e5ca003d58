"""Deployments: verify a checkpoint, put it live in the running engine, roll it back.

A version goes live only after its manifest and checksums verify, its base model matches the
served one and a smoke generation on it succeeds; any failure leaves the previous version
serving and marks the deployment failed with the reason. Records persist in
``ALIGNSERVE_HOME/deployments.json`` (atomic, fsynced writes), so the history survives a restart
and :meth:`DeploymentService.restore` puts what was live back through the same gate at start.
Version numbers come from these records, so they never restart.
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

from contracts.checkpoints import MANIFEST, sha256_file, verify_checkpoint
from server.engine.base import Engine
from server.engine.deployer import Deployer, SwapResult
from server.errors import ConflictError, InvalidRequestError, NotFoundError
from server.metrics import Metrics

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
    def __init__(self, engine: Engine, deployer: Deployer, home: Path, metrics: Metrics):
        self.engine = engine
        self.deployer = deployer
        self.home = home
        self.metrics = metrics
        self.path = home / "deployments.json"
        self.records: list[DeploymentRecord] = self._load()
        self._lock = asyncio.Lock()  # one deployment change at a time

    # -- API -------------------------------------------------------------------------------
    def records_view(self) -> list[dict[str, Any]]:
        return [
            {**asdict(r), "label": r.label if r.version and r.status != "failed" else None}
            for r in self.records
        ]

    async def deploy(self, checkpoint: str, name: str, mode: DeployMode) -> dict[str, Any]:
        if name in self._base_names() or "@" in name or not name.strip():
            raise InvalidRequestError(f"'{name}' cannot be a deployment name", param="name")
        folder = self._checkpoint_folder(checkpoint)
        async with self._lock:
            number = 1 + max((r.version or 0 for r in self.records if r.name == name), default=0)
            record = DeploymentRecord(
                name, number, checkpoint, mode, "deploying", None, time.time()
            )
            self.records.append(record)
            try:
                result = await self._put_live(record, folder)
            except Exception as exc:
                return self._failed(record, exc)
            record.status, record.swap_seconds = "live", result.seconds
            record.phases = dict(result.phases)
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
                result = await self._put_live(target, self._checkpoint_folder(target.checkpoint))
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
            await self.deployer.undeploy(name)
            live.status = "retired"
            self._save()

    async def restore(self) -> None:
        """At start: put back, through the same gate, every version that was live at exit."""
        for record in [r for r in self.records if r.status in ("live", "deploying")]:
            if record.status == "deploying":  # the server stopped mid-deploy
                record.status, record.reason = "failed", "server stopped during the deployment"
                continue
            try:
                folder = self._checkpoint_folder(record.checkpoint)
                await self._put_live(record, folder)
                logger.info("restored %s after restart", record.label)
            except Exception as exc:
                record.status = "failed"
                record.reason = f"could not be restored after a restart: {exc}"
                logger.error("deployment %s not restored: %s", record.label, exc)
        self._save()

    async def _put_live(self, record: DeploymentRecord, folder: Path) -> SwapResult:
        """Verify the checkpoint, then stage, smoke-test and switch it in the engine."""
        assert record.version is not None
        checked = time.monotonic()
        weights = await asyncio.to_thread(self._verified_weights, folder, record.mode)  # type: ignore[arg-type]
        verify_s = time.monotonic() - checked
        logger.info("checkpoint %s verified in %.2f s", record.checkpoint, verify_s)
        result = await self.deployer.deploy(
            record.name, weights, record.mode, record.version, self._smoke()  # type: ignore[arg-type]
        )
        return SwapResult(
            result.label, result.previous, result.seconds + verify_s,
            {"verify_s": verify_s, **result.phases},
        )

    def _base_names(self) -> set[str]:
        return {card.id for card in self.engine.model_cards() if card.parent is None}

    def _model_path(self) -> Path:
        path = self.engine.model_path
        if path is None:
            raise ValueError("the engine serves no local base model")
        return path

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
        check_finite(folder)
        fmt = manifest.get("format")
        if mode == "adapter":
            if fmt != "peft-lora":
                raise ValueError(f"mode 'adapter' needs a LoRA checkpoint, this one is '{fmt}'")
            rank = json.loads((folder / "adapter_config.json").read_text()).get("r", 0)
            if rank > self.engine.max_lora_rank:
                raise ValueError(
                    f"adapter rank {rank} exceeds the engine's max_lora_rank "
                    f"{self.engine.max_lora_rank}"
                )
            return folder
        if fmt == "hf-full":
            return folder
        if fmt == "peft-lora":
            return self._merged(folder, manifest["checkpoint_id"])
        raise ValueError(f"unknown checkpoint format '{fmt}'")

    def _check_base(self, base: dict[str, Any]) -> None:
        served = self._model_path()
        want = base.get("config_sha256")
        have = sha256_file(served / "config.json") if (served / "config.json").is_file() else None
        if want is None or want != have:
            raise ValueError(
                f"checkpoint was trained on '{base.get('name')}', not on the served base model "
                f"'{served.name}'"
            )

    def _merged(self, folder: Path, checkpoint_id: str) -> Path:
        """A LoRA checkpoint merged into full weights (cached), for mode 'full'."""
        from server.merge import merge_lora

        target = self.home / "merged" / checkpoint_id
        if not (target / "config.json").is_file():
            merge_lora(self._model_path(), folder, target)
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
        try:
            return [DeploymentRecord(**r) for r in json.loads(self.path.read_text())]
        except (ValueError, TypeError) as exc:
            # A damaged file must not keep the server down; keep it for inspection.
            aside = self.path.with_name(f"{self.path.name}.corrupt-{int(time.time())}")
            os.replace(self.path, aside)
            logger.error("deployment records unreadable (%s); moved to %s", exc, aside)
            return []

    def _save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".deployments-")
        with os.fdopen(fd, "w") as f:
            json.dump([asdict(r) for r in self.records], f, indent=2)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)
        directory = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)


def check_finite(folder: Path) -> None:
    """Refuse weights holding NaN or infinity: one such tensor poisons every answer."""
    import torch
    from safetensors import safe_open

    for path in sorted(folder.glob("*.safetensors")):
        with safe_open(str(path), framework="pt") as f:
            for key in f.keys():  # noqa: SIM118 (safe_open is not a mapping)
                tensor = f.get_tensor(key)
                if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
                    raise ValueError(f"{path.name}: tensor '{key}' holds NaN or infinite values")
