"""Create the isolated virtual environment used by the TRL parity test (stdlib only).

TRL 0.28.0 is the last release whose ``"sigmoid"`` DPO loss applies ``label_smoothing`` (cDPO)
and that has ``DPOTrainer.concatenated_forward`` / ``dpo_loss``. It cannot run in the project
environment: with transformers 5.x, ``transformers.utils.import_utils._is_package_available``
returns a ``(bool, version)`` tuple, which TRL 0.28 reads as "available" for every optional
package (e.g. ``import weave`` fails on ``import trl.trainer.dpo_trainer``). So the comparison
runs in its own venv with a transformers 4.x that TRL 0.28 supports, and the project
environment is never touched.

Usage (with the project's interpreter, whose torch version the parity venv copies)::

    .venv/bin/python tests/trl_parity/provision.py          # creates the venv (~1.5 min, once)
    .venv/bin/python tests/trl_parity/provision.py --print  # prints where it is / would be

The location is ``$ALIGNSERVE_TRL_VENV`` or ``~/.cache/alignserve/trl-parity-venv`` (outside the
repository, ~1.4 GB). pip inside it uses the ordinary pip configuration; where the ``+cpu`` torch
wheel is not available locally, set ``PIP_EXTRA_INDEX_URL`` to the PyTorch CPU index first.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import subprocess
import sys
import venv
from pathlib import Path

TRL_VERSION = "0.28.0"
TRANSFORMERS_VERSION = "4.57.6"
MARKER = ".alignserve-trl-parity"


def venv_dir() -> Path:
    """Where the parity venv lives (outside the repository)."""
    default = Path.home() / ".cache" / "alignserve" / "trl-parity-venv"
    return Path(os.environ.get("ALIGNSERVE_TRL_VENV", default)).expanduser()


def venv_python(root: Path) -> Path:
    return root / "bin" / "python"


def requirements() -> list[str]:
    """Pinned packages: TRL, a transformers it supports, and the project's torch version."""
    torch_version = importlib.metadata.version("torch")  # same torch as the project env
    return [f"torch=={torch_version}", f"transformers=={TRANSFORMERS_VERSION}",
            f"trl=={TRL_VERSION}"]


def is_ready(root: Path) -> bool:
    marker = root / MARKER
    return venv_python(root).exists() and marker.exists() and marker.read_text().strip() == (
        " ".join(requirements())
    )


def provision(root: Path) -> None:
    if is_ready(root):
        print(f"ready: {root}")
        return
    print(f"creating {root}", flush=True)
    venv.EnvBuilder(with_pip=True, clear=True).create(root)
    subprocess.run(
        [str(venv_python(root)), "-m", "pip", "install", "--quiet", *requirements()],
        check=True,
    )
    (root / MARKER).write_text(" ".join(requirements()) + "\n")
    print(f"ready: {root}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--print", action="store_true", help="print the venv path and exit")
    args = parser.parse_args()
    root = venv_dir()
    if args.print:
        print(root, "(ready)" if is_ready(root) else "(missing)")
        return 0
    provision(root)
    return 0


if __name__ == "__main__":
    sys.exit(main())
