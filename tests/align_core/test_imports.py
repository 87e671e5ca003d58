"""align_core is pure math: only torch, the standard library and itself may be imported."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

PACKAGE_DIR = Path(__file__).resolve().parents[2] / "align_core"
ALLOWED = {"torch", "align_core"} | set(sys.stdlib_module_names)


def imported_top_level_names(source: str) -> set[str]:
    """Top-level module names of every absolute import in ``source`` (relative ones are ours)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def forbidden_imports(source: str) -> set[str]:
    return imported_top_level_names(source) - ALLOWED


def test_package_files_found() -> None:
    files = sorted(PACKAGE_DIR.glob("*.py"))
    assert PACKAGE_DIR / "__init__.py" in files
    assert len(files) >= 7


@pytest.mark.parametrize(
    "path", sorted(PACKAGE_DIR.rglob("*.py")), ids=lambda p: p.relative_to(PACKAGE_DIR).as_posix()
)
def test_module_imports_only_torch_and_stdlib(path: Path) -> None:
    bad = forbidden_imports(path.read_text(encoding="utf-8"))
    assert not bad, f"{path.name} imports {sorted(bad)}; align_core allows torch + stdlib only"


@pytest.mark.parametrize(
    "source",
    [
        "import numpy",
        "import transformers.models.llama",
        "from vllm import LLM",
        "def f():\n    import pydantic\n",  # imports inside functions count too
        "try:\n    import fastapi\nexcept ImportError:\n    pass\n",
    ],
)
def test_checker_flags_third_party_imports(source: str) -> None:
    assert forbidden_imports(source)


def test_checker_allows_torch_stdlib_and_relative() -> None:
    source = (
        "from __future__ import annotations\nimport math\nimport torch.nn.functional as F\n"
        "from collections.abc import Callable\nfrom .registry import Registry\n"
        "from align_core.registry import Registry as R\n"
    )
    assert forbidden_imports(source) == set()
