"""The networked job store: ``PostgresJobStore``, the ``JobStore`` protocol on PostgreSQL.

Same semantics as ``SqliteJobStore`` (``contracts.store_sqlite``), for servers and workers on many
hosts sharing one database:

- A claim is one statement: ``SELECT ... FOR UPDATE SKIP LOCKED`` picks the oldest queued job no
  other transaction is claiming, and the ``UPDATE`` marks it running with a lease. Concurrent
  claimers never wait on each other and never get the same job.
- ``recover_expired`` also skips locked rows: a job whose heartbeat is being written right now
  is, by definition, not lost.
- Times (``created_at``, leases, ...) come from the database server's clock, not the caller's,
  so hosts whose clocks disagree still agree on when a lease expired.
- Event ids come from a sequence. Every event insert first locks its job's row, so the events of
  one job get ids in commit order and ``events(job, after=last_id)`` never skips one.
- JSON (config, metrics, manifests) is stored as text, as on SQLite: jsonb refuses NaN.

Connections come from a small pool (``psycopg_pool``); each operation is one short transaction.
Deployment desired state (``contracts.deployments``) lives in the same database and, on change,
also sends ``NOTIFY alignserve_deployments``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg.rows import DictRow, dict_row
from psycopg_pool import ConnectionPool

from contracts.deployments import DEPLOYMENT_SCHEMA, NOTIFY_CHANNEL
from contracts.records import TERMINAL, CheckpointRecord, Control, DatasetRecord, Event, Job, new_id
from contracts.records import json_text as _dumps
from contracts.store_ops import SqlJobOps

Conn = psycopg.Connection[DictRow]

# Epoch seconds on the server's clock, fixed for the statement (several columns share it).
NOW = "EXTRACT(EPOCH FROM statement_timestamp())::double precision"
# Held while creating tables: concurrent CREATE TABLE IF NOT EXISTS can still collide.
_SCHEMA_LOCK = 0x616C69676E  # "align"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY, method TEXT NOT NULL, status TEXT NOT NULL, config TEXT NOT NULL,
    created_at DOUBLE PRECISION NOT NULL, updated_at DOUBLE PRECISION NOT NULL,
    started_at DOUBLE PRECISION, finished_at DOUBLE PRECISION, worker_id TEXT,
    lease_until DOUBLE PRECISION, attempts INTEGER NOT NULL DEFAULT 0,
    step INTEGER NOT NULL DEFAULT 0, total_steps INTEGER NOT NULL DEFAULT 0,
    cancel_requested BOOLEAN NOT NULL DEFAULT FALSE, resume_path TEXT, checkpoint_id TEXT,
    error TEXT, pause_requested BOOLEAN NOT NULL DEFAULT FALSE
);
ALTER TABLE jobs ADD COLUMN IF NOT EXISTS pause_requested BOOLEAN NOT NULL DEFAULT FALSE;
CREATE INDEX IF NOT EXISTS jobs_status ON jobs (status, created_at);
CREATE TABLE IF NOT EXISTS metrics (
    job_id TEXT NOT NULL, step INTEGER NOT NULL, data TEXT NOT NULL,
    ts DOUBLE PRECISION NOT NULL, PRIMARY KEY (job_id, step)
);
CREATE TABLE IF NOT EXISTS events (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY, job_id TEXT NOT NULL,
    ts DOUBLE PRECISION NOT NULL, level TEXT NOT NULL, message TEXT NOT NULL, data TEXT
);
CREATE INDEX IF NOT EXISTS events_job ON events (job_id, id);
CREATE TABLE IF NOT EXISTS datasets (
    id TEXT PRIMARY KEY, format TEXT NOT NULL, path TEXT NOT NULL, records INTEGER NOT NULL,
    sha256 TEXT NOT NULL, bytes BIGINT NOT NULL, filename TEXT,
    created_at DOUBLE PRECISION NOT NULL
);
CREATE TABLE IF NOT EXISTS checkpoints (
    id TEXT PRIMARY KEY, job_id TEXT NOT NULL, path TEXT NOT NULL, method TEXT NOT NULL,
    created_at DOUBLE PRECISION NOT NULL, manifest TEXT NOT NULL
);
"""


class PostgresJobStore(SqlJobOps):
    """``JobStore`` (and ``DeploymentStore``) on one PostgreSQL database, given as a URL."""

    def __init__(self, url: str, *, max_connections: int = 8, connect_timeout_s: int = 10) -> None:
        self.url = url
        # A direct first connection: a wrong URL or a server that is down fails here with the
        # driver's own message instead of a pool timeout.
        with psycopg.connect(url, connect_timeout=connect_timeout_s) as conn, conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
            conn.execute(_SCHEMA + DEPLOYMENT_SCHEMA)
        self._pool: ConnectionPool[Conn] = ConnectionPool(
            url, min_size=1, max_size=max_connections, open=True, name="alignserve-store",
            kwargs={"row_factory": dict_row, "connect_timeout": connect_timeout_s},
            # A server restart leaves dead connections in the pool: check before handing out.
            check=ConnectionPool.check_connection,
        )

    def __repr__(self) -> str:
        from contracts.store import redact

        return f"PostgresJobStore({redact(self.url)!r})"

    def close(self) -> None:
        self._pool.close()

    @contextmanager
    def _conn(self) -> Iterator[Conn]:
        with self._pool.connection() as conn:
            yield conn

    @contextmanager
    def _write(self) -> Iterator[Conn]:
        """One transaction: committed at the end of the block, rolled back on an exception."""
        with self._pool.connection() as conn, conn.transaction():
            yield conn

    # -- hooks of the shared deployment operations ----------------------------------------------
    def _q(self, sql: str) -> str:
        return sql.replace("?", "%s")

    def _now(self, conn: Conn) -> float:
        row = conn.execute(f"SELECT {NOW} AS now").fetchone()
        assert row is not None
        return float(row["now"])

    def _to_job(self, row: DictRow) -> Job:
        return _job(row)

    def _log_event(
        self, conn: Conn, job_id: str, message: str, level: str = "info",
        data: dict[str, Any] | None = None,
    ) -> None:
        _event(conn, job_id, message, level, data)

    def _notify(self, conn: Conn, revision: int) -> None:
        # Delivered when (and only if) the transaction commits.
        conn.execute("SELECT pg_notify(%s, %s)", (NOTIFY_CHANNEL, str(revision)))

    # -- jobs -----------------------------------------------------------------------------------
    def create_job(
        self, method: str, config: dict[str, Any], total_steps: int, job_id: str | None = None
    ) -> Job:
        job_id = job_id or new_id("job")
        with self._write() as conn:
            row = conn.execute(
                "INSERT INTO jobs (id, method, status, config, created_at, updated_at, total_steps)"
                f" VALUES (%s, %s, 'queued', %s, {NOW}, {NOW}, %s) RETURNING *",
                (job_id, method, _dumps(config), total_steps),
            ).fetchone()
            _event(conn, job_id, "job queued")
        assert row is not None
        return _job(row)

    def get_job(self, job_id: str) -> Job | None:
        with self._conn() as conn:
            row = conn.execute("SELECT * FROM jobs WHERE id = %s", (job_id,)).fetchone()
        return _job(row) if row else None

    def list_jobs(self, limit: int = 100, status: str | None = None) -> list[Job]:
        # The API bounds it (1..1000); here only what the database can take: SQLite overflows
        # past 2**63 and reads a negative LIMIT as none, PostgreSQL refuses one.
        limit = min(max(limit, 0), 2**31 - 1)
        where, args = ("WHERE status = %s", [status]) if status is not None else ("", [])
        with self._conn() as conn:
            rows = conn.execute(
                f"SELECT * FROM jobs {where} ORDER BY created_at DESC LIMIT %s", [*args, limit]
            ).fetchall()
        return [_job(r) for r in rows]

    def request_cancel(self, job_id: str) -> Job | None:
        """A queued or paused job is cancelled at once; a running one at its worker's next
        step."""
        with self._write() as conn:
            row = conn.execute(
                "SELECT status FROM jobs WHERE id = %s FOR UPDATE", (job_id,)
            ).fetchone()
            if row is None:
                return None
            if row["status"] in ("queued", "paused"):
                conn.execute(
                    "UPDATE jobs SET status='cancelled', cancel_requested=TRUE,"
                    f" finished_at={NOW}, updated_at={NOW} WHERE id=%s", (job_id,),
                )
                started = "while paused" if row["status"] == "paused" else "before it started"
                _event(conn, job_id, f"job cancelled {started}")
            elif row["status"] == "running":
                conn.execute(
                    f"UPDATE jobs SET cancel_requested=TRUE, updated_at={NOW} WHERE id=%s",
                    (job_id,),
                )
                _event(conn, job_id, "cancellation requested")
        return self.get_job(job_id)

    def claim(self, worker_id: str, lease_s: float) -> Job | None:
        with self._write() as conn:
            row = conn.execute(
                "UPDATE jobs SET status='running', worker_id=%s,"
                f" lease_until={NOW} + %s, updated_at={NOW},"
                f" started_at=COALESCE(started_at, {NOW}), attempts=attempts+1"
                " WHERE id = (SELECT id FROM jobs WHERE status='queued' ORDER BY created_at"
                " LIMIT 1 FOR UPDATE SKIP LOCKED) RETURNING *",
                (worker_id, lease_s),
            ).fetchone()
            if row is None:
                return None
            _event(conn, row["id"], f"claimed by worker {worker_id}")
        return _job(row)

    def heartbeat(self, job_id: str, worker_id: str, lease_s: float) -> Control:
        """Renew the lease. ``lost`` if another worker owns the job now (ours expired)."""
        with self._write() as conn:
            row = conn.execute(
                f"UPDATE jobs SET lease_until={NOW} + %s, updated_at={NOW}"
                " WHERE id=%s AND worker_id=%s AND status='running'"
                " RETURNING cancel_requested, pause_requested",
                (lease_s, job_id, worker_id),
            ).fetchone()
        if row is None:
            return "lost"
        if row["cancel_requested"]:
            return "cancel"
        return "pause" if row["pause_requested"] else "continue"

    def recover_expired(self, max_attempts: int) -> list[str]:
        """Requeue running jobs whose lease expired; fail those already tried ``max_attempts``."""
        touched = []
        with self._write() as conn:
            rows = conn.execute(
                "SELECT id, attempts, worker_id, cancel_requested, pause_requested FROM jobs"
                f" WHERE status='running' AND lease_until < {NOW}"
                " ORDER BY created_at FOR UPDATE SKIP LOCKED"
            ).fetchall()
            for row in rows:
                touched.append(row["id"])
                lost = f"worker {row['worker_id']} stopped heartbeating"
                if row["cancel_requested"]:
                    _set_final(conn, row["id"], "cancelled", None, f"{lost}; job was cancelled")
                elif row["pause_requested"]:  # it resumes from its last resume point
                    conn.execute(
                        "UPDATE jobs SET status='paused', pause_requested=FALSE, worker_id=NULL,"
                        f" lease_until=NULL, updated_at={NOW} WHERE id=%s", (row["id"],),
                    )
                    _event(conn, row["id"], f"{lost}; job paused as requested", level="warning")
                elif row["attempts"] >= max_attempts:
                    reason = f"{lost}; gave up after {row['attempts']} attempts"
                    _set_final(conn, row["id"], "failed", None, reason, level="error")
                else:
                    conn.execute(
                        "UPDATE jobs SET status='queued', worker_id=NULL, lease_until=NULL,"
                        f" updated_at={NOW} WHERE id=%s", (row["id"],),
                    )
                    _event(conn, row["id"], f"{lost}; requeued to resume", level="warning")
        return touched

    def release(self, job_id: str, worker_id: str, reason: str) -> None:
        """Give a running job back to the queue (worker shutting down); it resumes later."""
        with self._write() as conn:
            conn.execute(
                "UPDATE jobs SET status='queued', worker_id=NULL, lease_until=NULL,"
                f" updated_at={NOW} WHERE id=%s AND worker_id=%s AND status='running'",
                (job_id, worker_id),
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
                "SELECT worker_id FROM jobs WHERE id=%s AND status='running' FOR UPDATE",
                (job_id,),
            ).fetchone()
            if row is None or row["worker_id"] != worker_id:
                return  # the lease was lost: whoever holds it now decides
            level = "error" if status == "failed" else "info"
            _set_final(conn, job_id, status, checkpoint_id, error, level=level)

    # -- progress -------------------------------------------------------------------------------
    def record_step(self, job_id: str, step: int, metrics: dict[str, float]) -> None:
        with self._write() as conn:
            conn.execute(
                f"INSERT INTO metrics (job_id, step, data, ts) VALUES (%s, %s, %s, {NOW})"
                " ON CONFLICT (job_id, step) DO UPDATE SET data=excluded.data, ts=excluded.ts",
                (job_id, step, _dumps(metrics)),
            )
            conn.execute(f"UPDATE jobs SET step=%s, updated_at={NOW} WHERE id=%s", (step, job_id))

    def set_resume_point(self, job_id: str, step: int, path: str) -> None:
        with self._write() as conn:
            conn.execute(
                f"UPDATE jobs SET resume_path=%s, updated_at={NOW} WHERE id=%s", (path, job_id)
            )
            _event(conn, job_id, f"resumable checkpoint at step {step}", data={"step": step})

    def truncate_metrics(self, job_id: str, after_step: int) -> None:
        """Drop metrics past a resume point: those steps are about to be trained again, and
        the job's progress goes back to that point with them."""
        with self._write() as conn:
            conn.execute("DELETE FROM metrics WHERE job_id=%s AND step>%s", (job_id, after_step))
            conn.execute("UPDATE jobs SET step=%s WHERE id=%s AND step>%s",
                         (after_step, job_id, after_step))

    def metrics(self, job_id: str) -> list[dict[str, Any]]:
        with self._conn() as conn:
            rows = conn.execute(
                "SELECT step, data FROM metrics WHERE job_id=%s ORDER BY step", (job_id,)
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
                "SELECT * FROM events WHERE job_id=%s AND id>%s ORDER BY id", (job_id, after)
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
                "INSERT INTO datasets (id, format, path, records, sha256, bytes, filename,"
                " created_at) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
                (record.id, record.format, record.path, record.records, record.sha256,
                 record.bytes, record.filename, record.created_at),
            )

    def get_dataset(self, dataset_id: str) -> DatasetRecord | None:
        with self._conn() as conn:
            row = conn.execute("SELECT * FROM datasets WHERE id=%s", (dataset_id,)).fetchone()
        return DatasetRecord(**row) if row else None

    def list_datasets(self) -> list[DatasetRecord]:
        with self._conn() as conn:
            rows = conn.execute("SELECT * FROM datasets ORDER BY created_at DESC").fetchall()
        return [DatasetRecord(**r) for r in rows]

    def add_checkpoint(self, record: CheckpointRecord) -> None:
        with self._write() as conn:
            conn.execute(
                "INSERT INTO checkpoints (id, job_id, path, method, created_at, manifest)"
                " VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (id) DO UPDATE SET"
                " job_id=excluded.job_id, path=excluded.path, method=excluded.method,"
                " created_at=excluded.created_at, manifest=excluded.manifest",
                (record.id, record.job_id, record.path, record.method, record.created_at,
                 _dumps(record.manifest)),
            )

    def get_checkpoint(self, checkpoint_id: str) -> CheckpointRecord | None:
        with self._conn() as conn:
            row = conn.execute(
                "SELECT * FROM checkpoints WHERE id=%s", (checkpoint_id,)
            ).fetchone()
        return _checkpoint(row) if row else None

    def list_checkpoints(self) -> list[CheckpointRecord]:
        with self._conn() as conn:
            rows = conn.execute("SELECT * FROM checkpoints ORDER BY created_at DESC").fetchall()
        return [_checkpoint(r) for r in rows]


def _event(
    conn: Conn, job_id: str, message: str, level: str = "info",
    data: dict[str, Any] | None = None,
) -> None:
    # The job's row lock orders this job's event ids by commit (see the module docstring).
    conn.execute("SELECT 1 FROM jobs WHERE id=%s FOR UPDATE", (job_id,))
    conn.execute(
        f"INSERT INTO events (job_id, ts, level, message, data) VALUES (%s, {NOW}, %s, %s, %s)",
        (job_id, level, message, _dumps(data) if data is not None else None),
    )


def _set_final(
    conn: Conn, job_id: str, status: str, checkpoint_id: str | None, error: str | None,
    level: str = "info",
) -> None:
    conn.execute(
        "UPDATE jobs SET status=%s, checkpoint_id=COALESCE(%s, checkpoint_id), error=%s,"
        f" finished_at={NOW}, updated_at={NOW}, lease_until=NULL WHERE id=%s",
        (status, checkpoint_id, error, job_id),
    )
    message = f"job {status}" + (f": {error}" if error else "")
    _event(conn, job_id, message, level, {"status": status, "checkpoint_id": checkpoint_id})


def _job(row: DictRow) -> Job:
    return Job(**{**row, "config": json.loads(row["config"])})


def _checkpoint(row: DictRow) -> CheckpointRecord:
    return CheckpointRecord(**{**row, "manifest": json.loads(row["manifest"])})
