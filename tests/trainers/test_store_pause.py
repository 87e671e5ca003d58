"""Job store on both backends: pause/resume transitions, a pause carried out by the worker, a
paused job never claimed, cancel while paused, a dead worker's pausing job, dataset deletion
refused while in flight, cursor pages of jobs, metrics with times; SQLite files made before
the pause column are migrated."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from contracts.store import DatasetInUse, DatasetRecord, SqliteJobStore, Store
from tests.pg import BACKENDS, open_backend


@pytest.fixture(params=BACKENDS)
def store(request: pytest.FixtureRequest, home: Path) -> Iterator[Store]:
    opened = open_backend(request, request.param, home)
    yield opened
    opened.close()


def _job(store: Store, dataset: str = "ds-a") -> str:
    return store.create_job("dpo", {"method": "dpo", "dataset": dataset}, total_steps=10).id


def _status(store: Store, job_id: str) -> str:
    job = store.get_job(job_id)
    assert job is not None
    return job.status


def test_pause_queued_resume_and_cancel_paused(store: Store) -> None:
    job_id = _job(store)
    assert _status(store, job_id) == "queued"
    paused = store.request_pause(job_id)
    assert paused is not None and paused.status == "paused"
    assert store.claim("w", 30) is None  # a paused job is not in the queue
    resumed = store.resume(job_id)
    assert resumed is not None and resumed.status == "queued"
    store.request_pause(job_id)
    cancelled = store.request_cancel(job_id)
    assert cancelled is not None and cancelled.status == "cancelled"
    assert store.request_pause(job_id).status == "cancelled"  # type: ignore[union-attr]
    assert store.resume(job_id).status == "cancelled"  # type: ignore[union-attr]
    assert store.request_pause("job-nope") is None and store.resume("job-nope") is None


def test_running_job_pauses_through_its_worker(store: Store) -> None:
    job_id = _job(store)
    assert store.claim("w", 30) is not None
    store.record_step(job_id, 3, {"loss": 0.5})
    requested = store.request_pause(job_id)
    assert requested is not None and requested.status == "running" and requested.pause_requested
    assert store.heartbeat(job_id, "w", 30) == "pause"
    withdrawn = store.resume(job_id)  # before the worker acted: it keeps running
    assert withdrawn is not None and withdrawn.status == "running" and not withdrawn.pause_requested
    assert store.heartbeat(job_id, "w", 30) == "continue"
    store.request_pause(job_id)
    store.pause(job_id, "someone-else")  # not the lease holder: nothing happens
    assert _status(store, job_id) == "running"
    store.pause(job_id, "w")
    job = store.get_job(job_id)
    assert job is not None and job.status == "paused" and job.worker_id is None
    assert job.attempts == 0 and not job.pause_requested
    assert store.heartbeat(job_id, "w", 30) == "lost"
    messages = [e.message for e in store.events(job_id)]
    assert messages[-3:] == ["pause withdrawn", "pause requested", "job paused after step 3"]
    store.resume(job_id)
    again = store.claim("w2", 30)
    assert again is not None and again.id == job_id and again.attempts == 1


def test_cancel_wins_over_pause_and_expired_pausing_job_is_paused(store: Store) -> None:
    first, second = _job(store), _job(store)
    store.claim("w", 30)
    store.request_cancel(first)
    assert store.request_pause(first).pause_requested is False  # type: ignore[union-attr]
    store.claim("dead", 0.01)
    store.request_pause(second)
    time.sleep(0.05)
    store.recover_expired(max_attempts=3)
    assert _status(store, second) == "paused"


def test_dataset_deletion_waits_for_in_flight_jobs(store: Store) -> None:
    record = DatasetRecord("ds-a", "pairs", "/x", 1, "h", 1, None, 1.0)
    store.add_dataset(record)
    job_id = _job(store, "ds-a")
    _job(store, "ds-other")
    with pytest.raises(DatasetInUse) as err:
        store.delete_dataset("ds-a")
    assert err.value.job_ids == [job_id]
    store.request_pause(job_id)
    with pytest.raises(DatasetInUse):
        store.delete_dataset("ds-a")
    store.request_cancel(job_id)
    assert store.delete_dataset("ds-a") == record
    assert store.get_dataset("ds-a") is None and store.delete_dataset("ds-a") is None


def test_jobs_before_pages_newest_first_and_metric_rows(store: Store) -> None:
    ids = [_job(store) for _ in range(5)]
    newest = ids[::-1]
    assert [j.id for j in store.jobs_before(None, 2)] == newest[:2]
    assert [j.id for j in store.jobs_before(newest[1], 2)] == newest[2:4]
    assert [j.id for j in store.jobs_before(newest[3], 10)] == newest[4:]
    assert store.jobs_before("job-nope", 10) == []
    store.record_step(ids[0], 2, {"loss": 0.25})
    store.record_step(ids[0], 1, {"loss": 0.5})
    rows = store.metric_rows(ids[0])
    assert [(step, m) for step, _, m in rows] == [(1, {"loss": 0.5}), (2, {"loss": 0.25})]
    assert all(abs(ts - time.time()) < 60 for _, ts, _ in rows)


def test_sqlite_file_without_the_pause_column_is_migrated(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    conn = sqlite3.connect(path)
    conn.execute(
        "CREATE TABLE jobs (id TEXT PRIMARY KEY, method TEXT NOT NULL, status TEXT NOT NULL,"
        " config TEXT NOT NULL, created_at REAL NOT NULL, updated_at REAL NOT NULL,"
        " started_at REAL, finished_at REAL, worker_id TEXT, lease_until REAL,"
        " attempts INTEGER NOT NULL DEFAULT 0, step INTEGER NOT NULL DEFAULT 0,"
        " total_steps INTEGER NOT NULL DEFAULT 0, cancel_requested INTEGER NOT NULL DEFAULT 0,"
        " resume_path TEXT, checkpoint_id TEXT, error TEXT)"
    )
    conn.execute("INSERT INTO jobs (id, method, status, config, created_at, updated_at)"
                 " VALUES ('job-old', 'dpo', 'queued', '{}', 0, 0)")
    conn.commit()
    conn.close()
    store = SqliteJobStore(path)
    job = store.get_job("job-old")
    assert job is not None and job.pause_requested is False
    assert store.request_pause("job-old").status == "paused"  # type: ignore[union-attr]
