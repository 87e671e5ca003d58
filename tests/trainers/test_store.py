"""Job store: atomic claims, leases, requeue/resume bookkeeping, cancellation, metrics."""

from __future__ import annotations

import threading
import time

from contracts.store import SqliteJobStore


def _job(store: SqliteJobStore) -> str:
    return store.create_job("dpo", {"method": "dpo"}, total_steps=10).id


def test_wal_mode_and_file_under_home(store: SqliteJobStore) -> None:
    with store._conn() as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert store.path.name == "jobs.db"


def test_claim_is_atomic_across_threads(store: SqliteJobStore) -> None:
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


def test_expired_lease_requeues_then_fails_after_max_attempts(store: SqliteJobStore) -> None:
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


def test_requeued_job_keeps_its_resume_point(store: SqliteJobStore) -> None:
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
    store.record_step(job_id, 2, {"loss": 0.8})
    assert [m["step"] for m in store.metrics(job_id)] == [1, 2]
    assert store.metrics(job_id)[-1]["loss"] == 0.8


def test_heartbeat_reports_cancel_and_lost_lease(store: SqliteJobStore) -> None:
    job_id = _job(store)
    store.claim("w1", lease_s=30)
    assert store.heartbeat(job_id, "w1", 30) == "continue"
    assert store.heartbeat(job_id, "intruder", 30) == "lost"
    store.request_cancel(job_id)
    assert store.heartbeat(job_id, "w1", 30) == "cancel"
    store.finish(job_id, "w1", "cancelled")
    assert store.get_job(job_id).status == "cancelled"  # type: ignore[union-attr]


def test_cancel_queued_job_is_immediate(store: SqliteJobStore) -> None:
    job_id = _job(store)
    assert store.request_cancel(job_id).status == "cancelled"  # type: ignore[union-attr]
    assert store.claim("w1", lease_s=30) is None


def test_finish_by_a_worker_that_lost_the_lease_is_ignored(store: SqliteJobStore) -> None:
    job_id = _job(store)
    store.claim("old", lease_s=0.01)
    time.sleep(0.02)
    store.recover_expired(max_attempts=3)
    store.claim("new", lease_s=30)
    store.finish(job_id, "old", "failed", error="late")
    assert store.get_job(job_id).status == "running"  # type: ignore[union-attr]
