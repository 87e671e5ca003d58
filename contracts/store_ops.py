"""Job-store operations written once in SQL both backends speak: pausing and resuming jobs,
cursor pages of jobs, metrics with their times, and deleting datasets. ``SqliteJobStore`` and
``PostgresJobStore`` inherit them.

Pause: a queued job is paused at once. A running job gets ``pause_requested``; its worker sees
``pause`` in its next heartbeat, stops before the next step, saves a resume point and calls
``pause``, which marks the job ``paused`` and frees it. ``resume`` puts a paused job back in the
queue; the worker that claims it resumes from the saved resume point (the same batches follow,
as after a crash). Each transition is one conditional ``UPDATE``, so concurrent requests and
workers never see a half-made change.
"""

from __future__ import annotations

import json
from typing import Any

from contracts.deployments import SqlDeployments
from contracts.records import IN_FLIGHT, DatasetInUse, DatasetRecord, Job


class SqlJobOps(SqlDeployments):
    """Shared job and dataset operations. A backend supplies ``_log_event`` (an event row inside
    the caller's transaction), ``_to_job`` (a row as a ``Job``) and ``get_job``, besides the
    hooks of ``SqlDeployments``."""

    def _log_event(
        self, conn: Any, job_id: str, message: str, level: str = "info",
        data: dict[str, Any] | None = None,
    ) -> None:
        raise NotImplementedError

    def _to_job(self, row: Any) -> Job:
        raise NotImplementedError

    def get_job(self, job_id: str) -> Job | None:
        raise NotImplementedError

    def jobs_before(self, job_id: str | None, limit: int) -> list[Job]:
        """Newest first: the ``limit`` jobs created before ``job_id`` (the newest without it;
        none when ``job_id`` does not exist). A stable cursor: ties on the creation time are
        broken by id."""
        with self._conn() as conn:
            if job_id is None:
                rows = self._run(conn, "SELECT * FROM jobs ORDER BY created_at DESC, id DESC"
                                 " LIMIT ?", (limit,)).fetchall()
            else:
                rows = self._run(
                    conn, "SELECT j.* FROM jobs j JOIN jobs c ON c.id = ? WHERE j.created_at <"
                    " c.created_at OR (j.created_at = c.created_at AND j.id < c.id)"
                    " ORDER BY j.created_at DESC, j.id DESC LIMIT ?", (job_id, limit),
                ).fetchall()
        return [self._to_job(r) for r in rows]

    def metric_rows(self, job_id: str) -> list[tuple[int, float, dict[str, Any]]]:
        """``(step, time recorded, metrics)`` by step: the times place metrics among events."""
        with self._conn() as conn:
            rows = self._run(conn, "SELECT step, ts, data FROM metrics WHERE job_id=?"
                             " ORDER BY step", (job_id,)).fetchall()
        return [(int(r["step"]), float(r["ts"]), json.loads(r["data"])) for r in rows]

    def request_pause(self, job_id: str) -> Job | None:
        """A queued job is paused at once; a running one stops at its worker's next step,
        after a resume point (``pause``). Other states are left as they are."""
        with self._write() as conn:
            now = self._now(conn)
            queued = self._run(
                conn, "UPDATE jobs SET status='paused', updated_at=? WHERE id=? AND"
                " status='queued'", (now, job_id),
            )
            if queued.rowcount == 1:
                self._log_event(conn, job_id, "job paused before it started")
            else:
                running = self._run(
                    conn, "UPDATE jobs SET pause_requested=TRUE, updated_at=? WHERE id=? AND"
                    " status='running' AND NOT pause_requested AND NOT cancel_requested",
                    (now, job_id),
                )
                if running.rowcount == 1:
                    self._log_event(conn, job_id, "pause requested")
        return self.get_job(job_id)

    def resume(self, job_id: str) -> Job | None:
        """A paused job goes back to the queue, to continue from its last resume point; a
        running job whose pause was not carried out yet just keeps running."""
        with self._write() as conn:
            now = self._now(conn)
            paused = self._run(
                conn, "UPDATE jobs SET status='queued', pause_requested=FALSE, updated_at=?"
                " WHERE id=? AND status='paused'", (now, job_id),
            )
            if paused.rowcount == 1:
                self._log_event(conn, job_id, "job resumed: queued")
            else:
                pending = self._run(
                    conn, "UPDATE jobs SET pause_requested=FALSE, updated_at=? WHERE id=? AND"
                    " status='running' AND pause_requested", (now, job_id),
                )
                if pending.rowcount == 1:
                    self._log_event(conn, job_id, "pause withdrawn")
        return self.get_job(job_id)

    def pause(self, job_id: str, worker_id: str) -> None:
        """Called by the worker that stopped a job whose pause was requested, after saving its
        resume point. Nothing happens if the worker no longer holds the job."""
        with self._write() as conn:
            row = self._run(
                # A pause is not a failed attempt: it must not use up max_attempts.
                conn, "UPDATE jobs SET status='paused', pause_requested=FALSE, worker_id=NULL,"
                " lease_until=NULL, updated_at=?,"
                " attempts=CASE WHEN attempts > 0 THEN attempts - 1 ELSE 0 END"
                " WHERE id=? AND worker_id=? AND status='running' RETURNING step",
                (self._now(conn), job_id, worker_id),
            ).fetchone()
            if row is not None:
                self._log_event(conn, job_id, f"job paused after step {row['step']}",
                            data={"step": row["step"]})

    def delete_dataset(self, dataset_id: str) -> DatasetRecord | None:
        """Remove a dataset's row (the caller removes its files). Raises ``DatasetInUse``
        while a queued, running or paused job trains on it."""
        with self._write() as conn:
            row = self._run(conn, "SELECT * FROM datasets WHERE id=?", (dataset_id,)).fetchone()
            if row is None:
                return None
            marks = ", ".join("?" * len(IN_FLIGHT))
            jobs = self._run(
                conn, f"SELECT id, config FROM jobs WHERE status IN ({marks}) ORDER BY created_at",
                tuple(sorted(IN_FLIGHT)),
            ).fetchall()
            users = [j["id"] for j in jobs if json.loads(j["config"]).get("dataset") == dataset_id]
            if users:
                raise DatasetInUse(dataset_id, users)
            self._run(conn, "DELETE FROM datasets WHERE id=?", (dataset_id,))
        return DatasetRecord(**dict(row))
