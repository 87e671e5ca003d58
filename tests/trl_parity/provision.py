"""Create the isolated virtual environment for TRL's ``DPOTrainer`` (stdlib only).

TRL 1.16.0 needs ``transformers>=4.56.2``, ``accelerate>=1.10.1``, ``datasets>=4.7.0`` (and
through it ``pyarrow``, ``pandas``, ``multiprocess``, ``xxhash``) and no particular torch; peft
is an extra (``trl[peft]``: ``peft>=0.13.0``). So it runs on the project's own transformers 5,
torch and peft. It still gets a venv of its own, so that ``datasets``, ``pyarrow`` and
``pandas`` (which the project does not need) and TRL itself never enter the project
environment, and so that nothing in the project can import TRL by accident. That venv pins the
project's exact versions of torch, transformers, peft and accelerate: both trainers run the very
same model, LoRA and optimizer code, and TRL loads the model folder and tokenizer as we do.

Usage (with the project's interpreter, whose versions the TRL venv copies)::

    .venv/bin/python tests/trl_parity/provision.py          # creates the venv (~1 min, once)
    .venv/bin/python tests/trl_parity/provision.py --print  # prints where it is / would be

The location is ``$ALIGNSERVE_TRL_VENV`` or ``~/.cache/alignserve/trl-<version>-venv`` (outside
the repository, ~1.5 GB). It is rebuilt when the project's pinned versions change. pip inside it
uses the ordinary pip configuration; where the ``+cpu`` torch wheel is not available locally,
set ``PIP_EXTRA_INDEX_URL`` to the PyTorch CPU index first.

TRL 0.28 (the previous anchor) is no longer provisioned: see ``test_trl_parity.py``.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import logging
import os
import subprocess
import sys
import venv
from pathlib import Path

TRL_VERSION = "1.16.0"
# Installed in the TRL venv at exactly the project's versions (same model and LoRA code).
SHARED = ("torch", "transformers", "peft", "accelerate")
MARKER = ".alignserve-trl"
logger = logging.getLogger("trl_parity.provision")


def venv_dir() -> Path:
    """Where the TRL venv lives (outside the repository)."""
    default = Path.home() / ".cache" / "alignserve" / f"trl-{TRL_VERSION}-venv"
    return Path(os.environ.get("ALIGNSERVE_TRL_VENV", default)).expanduser()


def venv_python(root: Path) -> Path:
    return root / "bin" / "python"


def requirements() -> list[str]:
    """Pinned packages: TRL, and the project's own versions of what both trainers share."""
    shared = [f"{name}=={importlib.metadata.version(name)}" for name in SHARED]
    return [*shared, f"trl=={TRL_VERSION}"]


def is_ready(root: Path) -> bool:
    marker = root / MARKER
    return venv_python(root).exists() and marker.exists() and marker.read_text().strip() == (
        " ".join(requirements())
    )


def provision(root: Path) -> None:
    if is_ready(root):
        logger.info("ready: %s", root)
        return
    logger.info("creating %s with %s", root, " ".join(requirements()))
    venv.EnvBuilder(with_pip=True, clear=True).create(root)
    subprocess.run(
        [str(venv_python(root)), "-m", "pip", "install", "--quiet", *requirements()],
        check=True,
    )
    (root / MARKER).write_text(" ".join(requirements()) + "\n")
    logger.info("ready: %s", root)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--print", action="store_true", help="print the venv path and exit")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    root = venv_dir()
    if args.print:
        print(root, "(ready)" if is_ready(root) else "(missing)")
        return 0
    provision(root)
    return 0


if __name__ == "__main__":
    sys.exit(main())
