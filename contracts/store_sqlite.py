"""The embedded job store: ``SqliteJobStore``, the ``JobStore`` protocol on one SQLite file (WAL).

Jobs move ``queued -> running -> succeeded | failed | cancelled``; a paused job goes ``running ->
paused -> queued`` (``contracts.store_ops``). A worker claims a queued job atomically (one
``UPDATE ... WHERE status='queued'`` inside an immediate transaction) and holds a lease it renews
with heartbeats. A job whose lease expired (its worker died) is put back in the
queue, to resume from its last resumable checkpoint, or failed after ``max_attempts`` claims.

Metrics are keyed by ``(job, step)``: a step redone after a resume replaces its row, so the history
never holds a step twice. Deployment desired state (``contracts.deployments``) lives in the same
file. ``contracts.store_postgres`` is the networked twin with the same semantics.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from contracts.deployments import DEPLOYMENT_SCHEMA
from contracts.records import TERMINAL, CheckpointRecord, Control, DatasetRecord, Event, Job, new_id
from contracts.records import json_text as _dumps
from contracts.store_ops import SqlJobOps

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY, method TEXT NOT NULL, status TEXT NOT NULL, config TEXT NOT NULL,
    created_at REAL NOT NULL, updated_at REAL NOT NULL, started_at REAL, finished_at REAL,
    worker_id TEXT, lease_until REAL, attempts INTEGER NOT NULL DEFAULT 0,
    step INTEGER NOT NULL DEFAULT 0, total_steps INTEGER NOT NULL DEFAULT 0,
    cancel_requested INTEGER NOT NULL DEFAULT 0, resume_path TEXT, checkpoint_id TEXT,
    error TEXT, pause_requested INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS jobs_status ON jobs (status, created_at);
CREATE TABLE IF NOT EXISTS metrics (
    job_id TEXT NOT NULL, step INTEGER NOT NULL, data TEXT NOT NULL, ts REAL NOT NULL,
    PRIMARY KEY (job_id, step)
);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT, job_id TEXT NOT NULL, ts REAL NOT NULL,
    level TEXT NOT NULL, message TEXT NOT NULL, data TEXT
);
CREATE INDEX IF NOT EXISTS events_job ON events (job_id, id);
CREATE TABLE IF NOT EXISTS datasets (
    id TEXT PRIMARY KEY, format TEXT NOT NULL, path TEXT NOT NULL, records INTEGER NOT NULL,
    sha256 TEXT NOT NULL, bytes INTEGER NOT NULL, filename TEXT, created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS checkpoints (
    id TEXT PRIMARY KEY, job_id TEXT NOT NULL, path TEXT NOT NULL, method TEXT NOT NULL,
    created_at REAL NOT NULL, manifest TEXT NOT NULL
);
"""


class SqliteJobStore(SqlJobOps):
    """``JobStore`` on one SQLite file in WAL mode; one short-lived connection per operation,
    so it is safe from threads and from many processes at once (on one host)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._conn() as conn:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.executescript(_SCHEMA + DEPLOYMENT_SCHEMA)
        self._migrate()

    def __repr__(self) -> str:
        return f"SqliteJobStore({str(self.path)!r})"

    def close(self) -> None:
        """Nothing held between operations; here for the ``Store`` interface."""

    def _migrate(self) -> None:
        """Columns added since a store file was created (under the write lock: several
        processes may open an old file at once)."""
        with self._write() as conn:
            columns = {r["name"] for r in conn.execute("PRAGMA table_info(jobs)")}
            if "pause_requested" not in columns:
                conn.execute(
                    "ALTER TABLE jobs ADD COLUMN pause_requested INTEGER NOT NULL DEFAULT 0"
                )

    @classmethod
    def at_home(cls, home: Path) -> SqliteJobStore:
        return cls(Path(home) / "jobs.db")

    @contextmanager
    def _conn(self) -> Iterator[sqlite3.Connection]:
        conn = sqlite3.connect(self.path, timeout=30.0, isolation_level=None)
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA busy_timeout=30000")
        try:
            yield conn
        finally:
            conn.close()

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """An immediate (write-locked) transaction: claims and state changes are atomic."""
        with self._conn() as conn:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    def _now(self, conn: sqlite3.Connection) -> float:
        return time.time()

    def _to_job(self, row: sqlite3.Row) -> Job:
        return _job(row)

    def _log_event(
        self, conn: sqlite3.Connection, job_id: str, message: str, level: str = "info",
        data: dict[str, Any] | None = None,
    ) -> None:
        _event(conn, job_id, message, level, data)

    # -- jobs ---------------------------------------------------------------------------------
    def create_job(
        self, method: str, config: dict[str, Any], total_steps: int, job_id: str | None = None
    ) -> Job:
        job_id, now = job_id or new_id("job"), time.time()
        with self._write() as conn:
            conn.execute(
                "INSERT INTO jobs (id, method, status, config, created_at, updated_at, total_steps)"
                " VALUES (?, ?, 'queued', ?, ?, ?, ?)",
                (job_id, method, _dumps(config), now, now, total_steps),
            )
            _event(conn, job_id, "job queued")
        job = self.get_job(job_id)
        assert job is not None
        return job

    def get_job(self, job_id: str) -> Job | None:
        with self._conn() as conn:
            row = conn.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return _job(row) if row else None

    def list_jobs(self, limit: int = 100, status: str | None = None) -> list[Job]:
        # The API bounds it (1..1000); here only what the database can take: SQLite overflows
        # past 2**63 and reads a negative LIMIT as none, PostgreSQL refuses one.
        limit = min(max(limit, 0), 2**31 - 1)
        sql, args = "SELECT * FROM jobs", []
        if status is not None:
            sql, args = sql + " WHERE status = ?", [status]
        with self._conn() as conn:
            rows = conn.execute(sql + " ORDER BY created_at DESC LIMIT ?", [*args, limit])
            return [_job(r) for r in rows.fetchall()]

    def request_cancel(self, job_id: str) -> Job | None:
        """A queued or paused job is cancelled at once; a running one at its worker's next
        step."""
        now = time.time()
        with self._write() as conn:
            row = conn.execute("SELECT status FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row is None:
                return None
            if row["status"] in ("queued", "paused"):
                conn.execute(
                    "UPDATE jobs SET status='cancelled', cancel_requested=1, finished_at=?,"
                    " updated_at=? WHERE id=?", (now, now, job_id),
                )
                started = "while paused" if row["status"] == "paused" else "before it started"
                _event(conn, job_id, f"job cancelled {started}")
            elif row["status"] == "running":
                conn.execute(
                    "UPDATE jobs SET cancel_requested=1, updated_at=? WHERE id=?", (now, job_id)
                )
                _event(conn, job_id, "cancellation requested")
        return self.get_job(job_id)

    def claim(self, worker_id: str, lease_s: float) -> Job | None:
        now = time.time()
        with self._write() as conn:
            row = conn.execute(
                "SELECT id FROM jobs WHERE status='queued' ORDER BY created_at LIMIT 1"
            ).fetchone()
            if row is None:
                return None
            cur = conn.execute(
                "UPDATE jobs SET status='running', worker_id=?, lease_until=?, updated_at=?,"
                " started_at=COALESCE(started_at, ?), attempts=attempts+1"
                " WHERE id=? AND status='queued'",
                (worker_id, now + lease_s, now, now, row["id"]),
            )
            if cur.rowcount != 1:
                return None
            _event(conn, row["id"], f"claimed by worker {worker_id}")
        return self.get_job(row["id"])

    def heartbeat(self, job_id: str, worker_id: str, lease_s: float) -> Control:
        """Renew the lease. ``lost`` if another worker owns the job now (ours expired)."""
        now = time.time()
        with self._write() as conn:
            cur = conn.execute(
                "UPDATE jobs SET lease_until=?, updated_at=? WHERE id=? AND worker_id=?"
                " AND status='running'", (now + lease_s, now, job_id, worker_id),
            )
            if cur.rowcount != 1:
                return "lost"
            row = conn.execute(
                "SELECT cancel_requested, pause_requested FROM jobs WHERE id=?", (job_id,)
            ).fetchone()
        if row["cancel_requested"]:
            return "cancel"
        return "pause" if row["pause_requested"] else "continue"

    def recover_expired(self, max_attempts: int) -> list[str]:
        """Requeue running jobs whose lease expired; fail those already tried ``max_attempts``."""
        now, touched = time.time(), []
        with self._write() as conn:
            rows = conn.execute(
                "SELECT id, attempts, worker_id, cancel_requested, pause_requested FROM jobs"
                " WHERE status='running' AND lease_until < ?", (now,),
            ).fetchall()
            for row in rows:
                touched.append(row["id"])
                lost = f"worker {row['worker_id']} stopped heartbeating"
                if row["cancel_requested"]:
                    _set_final(conn, row["id"], "cancelled", None, f"{lost}; job was cancelled")
                elif row["pause_requested"]:  # it resumes from its last resume point
                    conn.execute(
                        "UPDATE jobs SET status='paused', pause_requested=0, worker_id=NULL,"
                        " lease_until=NULL, updated_at=? WHERE id=?", (now, row["id"]),
                    )
                    _event(conn, row["id"], f"{lost}; job paused as requested", level="warning")
                elif row["attempts"] >= max_attempts:
                    reason = f"{lost}; gave up after {row['attempts']} attempts"
                    _set_final(conn, row["id"], "failed", None, reason, level="error")
                else:
                    conn.execute(
                        "UPDATE jobs SET status='queued', worker_id=NULL, lease_until=NULL,"
                        " updated_at=? WHERE id=?", (now, row["id"]),
                    )
                    _event(conn, row["id"], f"{lost}; requeued to resume", level="warning")
        return touched

    def release(self, job_id: str, worker_id: str, reason: str) -> None:
        """Give a running job back to the queue (worker shutting down); it resumes later."""
        with self._write() as conn:
            conn.execute(
                "UPDATE jobs SET status='queued', worker_id=NULL, lease_until=NULL, updated_at=?"
                " WHERE id=? AND worker_id=? AND status='running'",
                (time.time(), job_id, worker_id),
            )
            _event(conn, job_id, f"released: {reason}", level="warning")

    def finish(
        self, job_id: str, worker_id: str, status: str, *, checkpoint_id: str | None = None,
        error: str | None = None,
    ) -> None:
        if status not in TERMINAL:
            raise ValueError(f"not a final status: {status}")
        with self._write() as conn:
            row = conn.execute(
                "SELECT worker_id FROM jobs WHERE id=? AND status='running'", (job_id,)
            ).fetchone()
            if row is None or row["worker_id"] != worker_id:
                return  # the lease was lost: whoever holds it now decides
            level = "error" if status == "failed" else "info"
            _set_final(conn, job_id, status, checkpoint_id, error, level=level)

    # -- progress -----------------------------------------------------------------------------
    def record_step(self, job_id: str, step: int, metrics: dict[str, float]) -> None:
        now = time.time()
        with self._write() as conn:
            conn.execute(
                "INSERT OR REPLACE INTO metrics (job_id, step, data, ts) VALUES (?, ?, ?, ?)",
                (job_id, step, _dumps(metrics), now),
            )
            conn.execute("UPDATE jobs SET step=?, updated_at=? WHERE id=?", (step, now, job_id))

    def set_resume_point(self, job_id: str, step: int, path: str) -> None:
        with self._write() as conn:
            conn.execute(
                "UPDATE jobs SET resume_path=?, updated_at=? WHERE id=?",
                (path, time.time(), job_id),
            )
            _event(conn, job_id, f"resumable checkpoint at step {step}", data={"step": step})

    def truncate_metrics(self, job_id: str, after_step: int) -> None:
        """Drop metrics past a resume point: those steps are about to be trained again, and
        the job's progress goes back to that point with them."""
        with self._write() as conn:
            conn.execute("DELETE FROM metrics WHERE job_id=? AND step>?", (job_id, after_step))
            conn.execute("UPDATE jobs SET step=? WHERE id=? AND step>?",
                         (after_step, job_id, after_step))

    def metrics(self, job_id: str) -> list[dict[str, Any]]:
        with self._conn() as conn:
            rows = conn.execute(
                "SELECT step, data FROM metrics WHERE job_id=? ORDER BY step", (job_id,)
            ).fetchall()
        return [{"step": r["step"], **json.loads(r["data"])} for r in rows]

    def add_event(
        self, job_id: str, message: str, level: str = "info", data: dict[str, Any] | None = None
    ) -> None:
        with self._write() as conn:
            _event(conn, job_id, message, level, data)

    def events(self, job_id: str, after: int = 0) -> list[Event]:
        with self._conn() as conn:
            rows = conn.execute(
                "SELECT * FROM events WHERE job_id=? AND id>? ORDER BY id", (job_id, after)
            ).fetchall()
        return [
            Event(r["id"], r["job_id"], r["ts"], r["level"], r["message"],
                  json.loads(r["data"]) if r["data"] else None)
            for r in rows
        ]

    # -- datasets and checkpoints ---------------------------------------------------------------
    def add_dataset(self, record: DatasetRecord) -> None:
        with self._write() as conn:
            conn.execute(
                "INSERT INTO datasets VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (record.id, record.format, record.path, record.records, record.sha256,
                 record.bytes, record.filename, record.created_at),
            )

    def get_dataset(self, dataset_id: str) -> DatasetRecord | None:
        with self._conn() as conn:
            row = conn.execute("SELECT * FROM datasets WHERE id=?", (dataset_id,)).fetchone()
        return DatasetRecord(**dict(row)) if row else None

    def list_datasets(self) -> list[DatasetRecord]:
        with self._conn() as conn:
            rows = conn.execute("SELECT * FROM datasets ORDER BY created_at DESC").fetchall()
        return [DatasetRecord(**dict(r)) for r in rows]

    def add_checkpoint(self, record: CheckpointRecord) -> None:
        with self._write() as conn:
            conn.execute(
                "INSERT OR REPLACE INTO checkpoints VALUES (?, ?, ?, ?, ?, ?)",
                (record.id, record.job_id, record.path, record.method, record.created_at,
                 _dumps(record.manifest)),
            )

    def get_checkpoint(self, checkpoint_id: str) -> CheckpointRecord | None:
        with self._conn() as conn:
            row = conn.execute(
                "SELECT * FROM checkpoints WHERE id=?", (checkpoint_id,)
            ).fetchone()
        return _checkpoint(row) if row else None

    def list_checkpoints(self) -> list[CheckpointRecord]:
        with self._conn() as conn:
            rows = conn.execute("SELECT * FROM checkpoints ORDER BY created_at DESC").fetchall()
        return [_checkpoint(r) for r in rows]


def _event(
    conn: sqlite3.Connection, job_id: str, message: str, level: str = "info",
    data: dict[str, Any] | None = None,
) -> None:
    conn.execute(
        "INSERT INTO events (job_id, ts, level, message, data) VALUES (?, ?, ?, ?, ?)",
        (job_id, time.time(), level, message, _dumps(data) if data is not None else None),
    )


def _set_final(
    conn: sqlite3.Connection, job_id: str, status: str, checkpoint_id: str | None,
    error: str | None, level: str = "info",
) -> None:
    now = time.time()
    conn.execute(
        "UPDATE jobs SET status=?, checkpoint_id=COALESCE(?, checkpoint_id), error=?,"
        " finished_at=?, updated_at=?, lease_until=NULL WHERE id=?",
        (status, checkpoint_id, error, now, now, job_id),
    )
    message = f"job {status}" + (f": {error}" if error else "")
    data = {"status": status, "checkpoint_id": checkpoint_id}
    _event(conn, job_id, message, level, data)


def _job(row: sqlite3.Row) -> Job:
    values = dict(row)
    values["config"] = json.loads(values["config"])
    values["cancel_requested"] = bool(values["cancel_requested"])
    values["pause_requested"] = bool(values["pause_requested"])
    return Job(**values)


def _checkpoint(row: sqlite3.Row) -> CheckpointRecord:
    values = dict(row)
    values["manifest"] = json.loads(values["manifest"])
    return CheckpointRecord(**values)
