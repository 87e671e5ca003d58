"""Deployment desired state in the job store, on both backends: version numbering owned by the
store, deploy/rollback/remove, the revision counter, replica reports, PostgreSQL NOTIFY."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from contracts.deployments import NOTIFY_CHANNEL
from contracts.store import Store, UnknownDeployment
from tests.pg import BACKENDS, open_backend


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def store(request: pytest.FixtureRequest, backend: str, home: Path) -> Iterator[Store]:
    opened = open_backend(request, backend, home)
    yield opened
    opened.close()


def test_version_numbers_continue_in_a_reopened_store(
    request: pytest.FixtureRequest, backend: str, store: Store, home: Path
) -> None:
    assert store.propose_version("chat", "/c/1", "adapter", "ckpt-1") == 1
    assert store.propose_version("chat", "/c/2", "full") == 2
    assert store.propose_version("other", "/o/1", "adapter") == 1  # numbered per name
    store.close()
    # A restarted server opens the store again: numbering goes on from the store, not memory.
    reopened = open_backend(request, backend, home)
    try:
        assert reopened.propose_version("chat", "/c/3", "adapter") == 3
        history = reopened.history("chat")
        assert [(v.version, v.path, v.mode, v.checkpoint_id) for v in history] == [
            (1, "/c/1", "adapter", "ckpt-1"), (2, "/c/2", "full", None),
            (3, "/c/3", "adapter", None),
        ]
        assert history[0].created_at <= history[1].created_at <= history[2].created_at
    finally:
        reopened.close()


def test_deploy_rollback_and_remove(store: Store) -> None:
    assert store.desired() == {}
    v1 = store.propose_version("chat", "/c/1", "adapter")
    v2 = store.propose_version("chat", "/c/2", "adapter")
    assert store.desired() == {}  # proposing does not deploy
    store.set_live("chat", v2)
    live = store.desired()["chat"]
    assert (live.name, live.version, live.path) == ("chat", 2, "/c/2")
    store.set_live("chat", v1)  # rollback
    assert store.desired()["chat"].path == "/c/1"
    state = store.deployment("chat")
    assert state is not None and (state.live_version, state.latest_version) == (1, 2)
    store.remove("chat")
    assert store.desired() == {}
    removed = store.deployment("chat")
    assert removed is not None and removed.live_version is None
    assert [v.version for v in store.history("chat")] == [1, 2]  # history is kept
    assert store.propose_version("chat", "/c/3", "full") == 3  # and numbering goes on
    assert store.deployment("missing") is None and store.history("missing") == []


def test_desired_holds_every_live_deployment(store: Store) -> None:
    for name in ("b", "a", "c"):
        store.set_live(name, store.propose_version(name, f"/{name}", "full"))
    store.remove("c")
    assert sorted(store.desired()) == ["a", "b"]
    assert [d.name for d in store.list_deployments()] == ["a", "b", "c"]


def test_unknown_names_versions_and_modes_are_refused(store: Store) -> None:
    store.propose_version("chat", "/c/1", "adapter")
    before = store.deployment_revision()
    with pytest.raises(UnknownDeployment, match="no version 2"):
        store.set_live("chat", 2)
    with pytest.raises(UnknownDeployment, match="no deployment 'nope'"):
        store.remove("nope")
    with pytest.raises(ValueError, match="mode must be"):
        store.propose_version("chat", "/c/2", "lora")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="needs a name"):
        store.propose_version("", "/c/2", "full")
    # A refused change is rolled back whole, its revision bump included.
    assert store.deployment_revision() == before
    assert store.deployment("chat").live_version is None  # type: ignore[union-attr]


def test_revision_moves_on_every_change_and_only_then(store: Store) -> None:
    assert store.deployment_revision() == 0
    store.propose_version("chat", "/c/1", "adapter")
    assert store.deployment_revision() == 1
    store.set_live("chat", 1)
    assert store.deployment_revision() == 2
    assert store.deployment("chat").revision == 2  # type: ignore[union-attr]
    store.report_replica_status("r1", "chat", 1, "live")  # an observation, not a change
    store.desired()
    assert store.deployment_revision() == 2
    store.remove("chat")
    assert store.deployment_revision() == 3


def test_replica_status_reports(store: Store) -> None:
    store.report_replica_status("r1", "chat", 1, "loading")
    store.report_replica_status("r2", "chat", 1, "failed", "CUDA out of memory")
    store.report_replica_status("r1", "other", None, "removed")
    store.report_replica_status("r1", "chat", 1, "live")  # replaces r1's report on chat
    chat = store.replica_statuses("chat")
    assert [(s.replica_id, s.version, s.state, s.error) for s in chat] == [
        ("r1", 1, "live", None), ("r2", 1, "failed", "CUDA out of memory"),
    ]
    assert [(s.name, s.replica_id) for s in store.replica_statuses()] == [
        ("chat", "r1"), ("chat", "r2"), ("other", "r1"),
    ]
    assert all(s.updated_at > 0 for s in chat)


def test_concurrent_proposals_from_many_replicas_get_distinct_numbers(
    request: pytest.FixtureRequest, backend: str, store: Store, home: Path
) -> None:
    # Separate store objects stand for separate replicas (separate connections or pools).
    replicas = [open_backend(request, backend, home) for _ in range(3)]
    got: list[int] = []
    lock = threading.Lock()

    def propose(replica: Store, n: int) -> None:
        for i in range(n):
            version = replica.propose_version("chat", f"/c/{i}", "adapter")
            with lock:
                got.append(version)

    threads = [threading.Thread(target=propose, args=(r, 8)) for r in replicas]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for replica in replicas:
        replica.close()
    assert sorted(got) == list(range(1, 25))
    assert [v.version for v in store.history("chat")] == list(range(1, 25))
    assert store.deployment_revision() == 24


def test_postgres_notifies_listeners_on_commit(pg_url: str) -> None:
    import psycopg

    from contracts.store import open_store

    store = open_store(pg_url)
    try:
        with psycopg.connect(pg_url, autocommit=True) as listener:
            listener.execute(f"LISTEN {NOTIFY_CHANNEL}")
            store.propose_version("chat", "/c/1", "adapter")
            with pytest.raises(UnknownDeployment):
                store.set_live("chat", 7)  # rolled back: no notification
            store.set_live("chat", 1)
            payloads = [n.payload for n in listener.notifies(timeout=5, stop_after=2)]
            assert payloads == ["1", "2"]  # the revisions, in commit order
            assert list(listener.notifies(timeout=0.3)) == []
    finally:
        store.close()
