"""The checkpoint half of the deployment gate: what must hold before a version is staged.

The manifest exists and every file's sha256 matches it, the base model (config hash) is the
served one, no tensor holds NaN or infinity, and the format suits the mode (a LoRA rank within
the engine's ``max_lora_rank``). The other half, the smoke generation on the staged version, is
the engine's (``server/engine/deployer.py``). Every replica runs both before it switches.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from contracts.checkpoints import MANIFEST, sha256_file, verify_checkpoint
from contracts.deployments import DeployMode
from server.engine.base import Engine
from server.errors import NotFoundError


class CheckpointChecks:
    def __init__(self, engine: Engine, home: Path):
        self.engine = engine
        self.home = home

    def folder(self, checkpoint: str) -> Path:
        folder = (self.home / "checkpoints" / checkpoint).resolve()
        if folder.parent != (self.home / "checkpoints").resolve() or not folder.is_dir():
            raise NotFoundError(f"checkpoint '{checkpoint}' not found", param="checkpoint")
        return folder

    def verified_weights(self, folder: Path, mode: DeployMode) -> Path:
        """The folder to load, after every check; raises ValueError with the reason."""
        manifest_path = folder / MANIFEST
        if not manifest_path.is_file():
            raise ValueError("checkpoint has no manifest")
        manifest = json.loads(manifest_path.read_text())
        if manifest.get("method") == "reward_model":  # its policy adapter was never trained
            raise ValueError("a reward_model checkpoint scores answers and is not a chat model: "
                             "use its id with POST /v1/rewards or best_of_n.reward_model")
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
            try:
                merge_lora(self._model_path(), folder, target)
            except OSError:
                # Replicas on one shared home may merge at once; the first rename wins.
                if not (target / "config.json").is_file():
                    raise
        return target

    def _model_path(self) -> Path:
        path = self.engine.model_path
        if path is None:
            raise ValueError("the engine serves no local base model")
        return path


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
