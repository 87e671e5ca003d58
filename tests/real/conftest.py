from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.real.server_process import ServerProcess

USER_KEY, ADMIN_KEY = "test-user-key", "test-admin-key"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/real/" in str(item.fspath):
            item.add_marker(pytest.mark.real)


def own_store(tmp: Path) -> str:
    """A job store of the test's own: every server on one store is a replica of the others
    (deployments propagate and persist), and the model home is shared by the real tests."""
    return f"sqlite:///{tmp / 'jobs.db'}"


@pytest.fixture(scope="session")
def server(
    alignserve_home: Path, default_model: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    """The real server: uvicorn, the vLLM engine core, the embedded model, API keys on."""
    proc = ServerProcess(
        alignserve_home,
        env={"ALIGNSERVE_API_KEYS": USER_KEY, "ALIGNSERVE_ADMIN_KEYS": ADMIN_KEY,
             "ALIGNSERVE_KV_CACHE_GIB": "2",
             "ALIGNSERVE_STORE_URL": own_store(tmp_path_factory.mktemp("store"))},
    ).start()
    yield proc
    proc.stop()
