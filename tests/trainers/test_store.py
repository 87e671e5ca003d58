"""Job store: atomic claims, leases, requeue/resume bookkeeping, cancellation, metrics, records.

Every test here runs on both backends (SQLite and a real PostgreSQL server), except the ones about
one backend's own mechanics.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from contracts.store import (
    CheckpointRecord,
    DatasetRecord,
    SqliteJobStore,
    Store,
    open_store,
    redact,
)
from tests.pg import BACKENDS, open_backend


@pytest.fixture(params=BACKENDS)
def store(request: pytest.FixtureRequest, home: Path) -> Iterator[Store]:
    opened = open_backend(request, request.param, home)
    yield opened
    opened.close()


def _job(store: Store) -> str:
    return store.create_job("dpo", {"method": "dpo"}, total_steps=10).id


def test_wal_mode_and_file_under_home(home: Path) -> None:
    store = SqliteJobStore.at_home(home)
    with store._conn() as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert store.path.name == "jobs.db"


def test_open_store_chooses_the_backend_from_the_location(tmp_path: Path) -> None:
    by_path = open_store(tmp_path / "a" / "jobs.db")
    by_url = open_store(f"sqlite://{tmp_path}/b/jobs.db")
    assert isinstance(by_path, SqliteJobStore) and by_path.path == tmp_path / "a" / "jobs.db"
    assert isinstance(by_url, SqliteJobStore) and by_url.path == tmp_path / "b" / "jobs.db"
    with pytest.raises(ValueError, match="unsupported store URL 'mysql://u:\\*\\*\\*@h/db'"):
        open_store("mysql://u:secret@h/db")
    assert redact("postgresql://me:pw@db:5432/x") == "postgresql://me:***@db:5432/x"
    assert redact("postgresql://me@db/x") == "postgresql://me@db/x"


def test_postgres_url_opens_postgres(pg_url: str) -> None:
    store = open_store(pg_url)
    try:
        assert type(store).__name__ == "PostgresJobStore"
        assert store.get_job(_job(store)) is not None
    finally:
        store.close()


def test_claim_is_atomic_across_threads(store: Store) -> None:
    ids = {_job(store) for _ in range(5)}
    claimed: list[str] = []
    lock = threading.Lock()

    def grab(worker: str) -> None:
        while (job := store.claim(worker, lease_s=30)) is not None:
            with lock:
                claimed.append(job.id)

    threads = [threading.Thread(target=grab, args=(f"w{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(claimed) == sorted(ids)  # every job exactly once
    assert all(j.status == "running" and j.attempts == 1 for j in store.list_jobs())


def test_claims_take_the_oldest_queued_job_first(store: Store) -> None:
    ids = [_job(store) for _ in range(3)]
    got = [store.claim("w", lease_s=30) for _ in range(4)]
    assert [j.id if j else None for j in got] == [*ids, None]
    first = got[0]
    assert first is not None and first.worker_id == "w" and first.started_at is not None
    assert first.lease_until is not None and first.lease_until > time.time() + 20


def test_expired_lease_requeues_then_fails_after_max_attempts(store: Store) -> None:
    job_id = _job(store)
    for attempt in (1, 2):
        job = store.claim(f"dead-{attempt}", lease_s=0.01)
        assert job is not None and job.attempts == attempt
        time.sleep(0.02)
        assert store.recover_expired(max_attempts=2) == [job_id]
        status = store.get_job(job_id).status  # type: ignore[union-attr]
        assert status == ("queued" if attempt == 1 else "failed")
    job = store.get_job(job_id)
    assert job is not None and "gave up after 2 attempts" in (job.error or "")


def test_live_lease_is_not_recovered(store: Store) -> None:
    job_id = _job(store)
    store.claim("alive", lease_s=30)
    assert store.recover_expired(max_attempts=3) == []
    assert store.get_job(job_id).worker_id == "alive"  # type: ignore[union-attr]


def test_requeued_job_keeps_its_resume_point(store: Store) -> None:
    job_id = _job(store)
    store.claim("w1", lease_s=0.01)
    store.record_step(job_id, 1, {"loss": 1.0})
    store.set_resume_point(job_id, 1, "/x/step-00000001")
    store.record_step(job_id, 2, {"loss": 0.9})
    time.sleep(0.02)
    store.recover_expired(max_attempts=3)
    job = store.claim("w2", lease_s=30)
    assert job is not None and job.resume_path == "/x/step-00000001" and job.attempts == 2
    store.truncate_metrics(job_id, 1)
    # Progress goes back to the resume point with the metrics (a waiter on job.step must not
    # see the previous run's step 2 as this run's).
    assert store.get_job(job_id).step == 1  # type: ignore[union-attr]
    store.record_step(job_id, 2, {"loss": 0.8})
    assert [m["step"] for m in store.metrics(job_id)] == [1, 2]
    assert store.metrics(job_id)[-1]["loss"] == 0.8
    assert store.get_job(job_id).step == 2  # type: ignore[union-attr]


def test_heartbeat_reports_cancel_and_lost_lease(store: Store) -> None:
    job_id = _job(store)
    store.claim("w1", lease_s=30)
    assert store.heartbeat(job_id, "w1", 30) == "continue"
    assert store.heartbeat(job_id, "intruder", 30) == "lost"
    store.request_cancel(job_id)
    assert store.heartbeat(job_id, "w1", 30) == "cancel"
    store.finish(job_id, "w1", "cancelled")
    assert store.get_job(job_id).status == "cancelled"  # type: ignore[union-attr]


def test_heartbeat_extends_the_lease(store: Store) -> None:
    job_id = _job(store)
    store.claim("w1", lease_s=0.2)
    assert store.heartbeat(job_id, "w1", 30) == "continue"
    time.sleep(0.3)
    assert store.recover_expired(max_attempts=3) == []


def test_cancel_queued_job_is_immediate(store: Store) -> None:
    job_id = _job(store)
    assert store.request_cancel(job_id).status == "cancelled"  # type: ignore[union-attr]
    assert store.claim("w1", lease_s=30) is None
    assert store.request_cancel("job-missing") is None


def test_cancelled_job_whose_worker_died_ends_cancelled(store: Store) -> None:
    job_id = _job(store)
    store.claim("w1", lease_s=0.01)
    store.request_cancel(job_id)
    time.sleep(0.02)
    assert store.recover_expired(max_attempts=3) == [job_id]
    assert store.get_job(job_id).status == "cancelled"  # type: ignore[union-attr]


def test_finish_by_a_worker_that_lost_the_lease_is_ignored(store: Store) -> None:
    job_id = _job(store)
    store.claim("old", lease_s=0.01)
    time.sleep(0.02)
    store.recover_expired(max_attempts=3)
    store.claim("new", lease_s=30)
    store.finish(job_id, "old", "failed", error="late")
    assert store.get_job(job_id).status == "running"  # type: ignore[union-attr]
    store.finish(job_id, "new", "succeeded", checkpoint_id="ckpt-1")
    done = store.get_job(job_id)
    assert done is not None and done.status == "succeeded" and done.checkpoint_id == "ckpt-1"
    assert done.finished_at is not None and done.lease_until is None
    with pytest.raises(ValueError, match="not a final status"):
        store.finish(job_id, "new", "running")


def test_release_requeues_for_the_same_job(store: Store) -> None:
    job_id = _job(store)
    store.claim("w1", lease_s=30)
    store.release(job_id, "w1", "shutting down")
    job = store.get_job(job_id)
    assert job is not None and job.status == "queued" and job.worker_id is None
    assert store.claim("w2", lease_s=30).attempts == 2  # type: ignore[union-attr]


def test_events_in_order_with_a_cursor_and_data(store: Store) -> None:
    job_id = _job(store)
    store.claim("w1", lease_s=30)
    store.add_event(job_id, "traceback", level="error", data={"traceback": "x"})
    events = store.events(job_id)
    assert [e.message for e in events] == ["job queued", "claimed by worker w1", "traceback"]
    assert [e.id for e in events] == sorted(e.id for e in events)
    assert events[-1].level == "error" and events[-1].data == {"traceback": "x"}
    assert [e.message for e in store.events(job_id, after=events[0].id)] == [
        "claimed by worker w1", "traceback",
    ]
    assert store.events("job-other") == []


def test_jobs_listed_newest_first_and_filtered(store: Store) -> None:
    ids = [_job(store) for _ in range(3)]
    store.claim("w", lease_s=30)
    assert [j.id for j in store.list_jobs()] == ids[::-1]
    assert [j.id for j in store.list_jobs(status="running")] == ids[:1]
    assert len(store.list_jobs(limit=2)) == 2
    job = store.get_job(ids[0])
    assert job is not None and job.config == {"method": "dpo"} and job.total_steps == 10
    assert store.get_job("job-missing") is None


def test_metrics_keep_nan_and_replace_a_redone_step(store: Store) -> None:
    job_id = _job(store)
    store.record_step(job_id, 1, {"loss": float("nan"), "lr": 1e-3})
    store.record_step(job_id, 1, {"loss": 0.5, "lr": 1e-3})
    store.record_step(job_id, 2, {"loss": float("nan")})
    rows = store.metrics(job_id)
    assert [r["step"] for r in rows] == [1, 2]
    assert rows[0]["loss"] == 0.5 and math.isnan(rows[1]["loss"])


def test_dataset_and_checkpoint_records(store: Store) -> None:
    ds = DatasetRecord("ds-1", "pairs", "/d/ds-1.jsonl", 8, "ab" * 32, 1 << 33, None, 1.5)
    store.add_dataset(ds)
    assert store.get_dataset("ds-1") == ds and store.list_datasets() == [ds]
    assert store.get_dataset("ds-2") is None
    with pytest.raises(Exception, match=r"(?i)unique"):
        store.add_dataset(ds)
    first = CheckpointRecord("ckpt-1", "job-1", "/c/1", "dpo", 2.0, {"metrics": {"loss": 1}})
    again = CheckpointRecord("ckpt-1", "job-1", "/c/1b", "dpo", 3.0, {"format": "adapter"})
    older = CheckpointRecord("ckpt-0", "job-0", "/c/0", "sft", 1.0, {})
    for record in (first, again, older):
        store.add_checkpoint(record)
    assert store.get_checkpoint("ckpt-1") == again  # re-registering replaces
    assert store.list_checkpoints() == [again, older]
    assert store.get_checkpoint("ckpt-9") is None
