"""Deployment desired state in the job store, so that every serving replica agrees on what is live.

A *deployment* is a name clients ask for. ``propose_version`` adds a numbered version to it
(1, 2, 3, ... allocated inside the store, so numbering is shared by all replicas and never
restarts with a server); ``set_live`` makes one version live (a deploy, or a rollback to an older
one); ``remove`` leaves nothing live but keeps the history, and a later version continues the
numbering. Replicas report what they actually serve with ``report_replica_status``.

Operations (``DeploymentStore``; ``SqliteJobStore`` and ``PostgresJobStore`` implement them)::

    propose_version(name, path, mode, checkpoint_id=None) -> int   # the new version number
    set_live(name, version) -> None        # UnknownDeployment if that version does not exist
    remove(name) -> None                   # UnknownDeployment if the name was never proposed
    desired() -> dict[str, DeploymentVersion]   # the live version of every live deployment
    history(name) -> list[DeploymentVersion]    # all versions of a name, oldest first
    deployment(name) -> Deployment | None       # live and latest version numbers of one name
    list_deployments() -> list[Deployment]      # every name ever proposed, removed ones too
    deployment_revision() -> int                # bumped by every propose/set_live/remove
    report_replica_status(replica_id, name, version, state, error=None) -> None
    replica_statuses(name=None) -> list[ReplicaStatus]

``mode`` is ``"adapter"`` or ``"full"``. ``state`` is free text chosen by the reconciler (for
example ``loading``, ``live``, ``failed``, ``removed``); a report replaces the previous one of the
same ``(replica_id, name)``.

Watching for changes: poll ``deployment_revision()`` (a one-row read) and call ``desired()`` when
it moved. Read the revision *before* ``desired()``: a change in between then shows up as a new
revision at the next poll, so nothing is missed. This works on both backends and is the portable
path. PostgreSQL also sends ``NOTIFY alignserve_deployments`` (payload: the new revision) when a
change commits; a replica may ``LISTEN`` to react sooner, but notifications sent while it was
disconnected are gone, so it must keep polling the revision as the source of truth.

Replica reports do not bump the revision: they describe what is, not what should be, and a bump
per report would wake every replica on every other replica's report.

Every write is one transaction that first bumps the single revision row. On PostgreSQL that row
lock serializes deployment writes: version numbers are allocated without duplicates, and
revision order is commit order. On SQLite the immediate (write-locked) transaction does the same.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Literal, Protocol

DeployMode = Literal["adapter", "full"]
DEPLOY_MODES: frozenset[str] = frozenset({"adapter", "full"})
NOTIFY_CHANNEL = "alignserve_deployments"


class UnknownDeployment(LookupError):
    """The deployment name, or that version of it, does not exist in the store."""


@dataclass(frozen=True)
class DeploymentVersion:
    name: str
    version: int
    path: str
    mode: DeployMode
    checkpoint_id: str | None
    created_at: float


@dataclass(frozen=True)
class Deployment:
    name: str
    live_version: int | None  # None once removed
    latest_version: int
    revision: int  # the store revision of this deployment's last change
    updated_at: float


@dataclass(frozen=True)
class ReplicaStatus:
    replica_id: str
    name: str
    version: int | None
    state: str
    error: str | None
    updated_at: float


class DeploymentStore(Protocol):
    def propose_version(
        self, name: str, path: str, mode: DeployMode, checkpoint_id: str | None = None
    ) -> int: ...
    def set_live(self, name: str, version: int) -> None: ...
    def remove(self, name: str) -> None: ...
    def desired(self) -> dict[str, DeploymentVersion]: ...
    def history(self, name: str) -> list[DeploymentVersion]: ...
    def deployment(self, name: str) -> Deployment | None: ...
    def list_deployments(self) -> list[Deployment]: ...
    def deployment_revision(self) -> int: ...
    def report_replica_status(
        self, replica_id: str, name: str, version: int | None, state: str,
        error: str | None = None,
    ) -> None: ...
    def replica_statuses(self, name: str | None = None) -> list[ReplicaStatus]: ...


# SQL both SQLite and PostgreSQL accept. DOUBLE PRECISION, not REAL: REAL is 4 bytes on
# PostgreSQL, too coarse for epoch seconds (SQLite reads the name as its 8-byte REAL).
DEPLOYMENT_SCHEMA = """
CREATE TABLE IF NOT EXISTS deployment_revision (
    id INTEGER PRIMARY KEY CHECK (id = 1), revision BIGINT NOT NULL
);
INSERT INTO deployment_revision (id, revision) VALUES (1, 0) ON CONFLICT (id) DO NOTHING;
CREATE TABLE IF NOT EXISTS deployments (
    name TEXT PRIMARY KEY, latest_version INTEGER NOT NULL, live_version INTEGER,
    revision BIGINT NOT NULL, updated_at DOUBLE PRECISION NOT NULL
);
CREATE TABLE IF NOT EXISTS deployment_versions (
    name TEXT NOT NULL, version INTEGER NOT NULL, path TEXT NOT NULL, mode TEXT NOT NULL,
    checkpoint_id TEXT, created_at DOUBLE PRECISION NOT NULL, PRIMARY KEY (name, version)
);
CREATE TABLE IF NOT EXISTS replica_status (
    replica_id TEXT NOT NULL, name TEXT NOT NULL, version INTEGER, state TEXT NOT NULL,
    error TEXT, updated_at DOUBLE PRECISION NOT NULL, PRIMARY KEY (replica_id, name)
);
"""


class SqlDeployments:
    """The ``DeploymentStore`` operations, written once in SQL both backends speak.

    A backend supplies connections (``_conn`` for reads, ``_write`` for one transaction), the
    clock (``_now``), its parameter style (``_q``) and change notification (``_notify``).
    """

    def _conn(self) -> AbstractContextManager[Any]:
        raise NotImplementedError

    def _write(self) -> AbstractContextManager[Any]:
        raise NotImplementedError

    def _q(self, sql: str) -> str:
        """``sql`` with ``?`` placeholders in the backend's parameter style."""
        return sql

    def _now(self, conn: Any) -> float:
        raise NotImplementedError

    def _notify(self, conn: Any, revision: int) -> None:
        """Announce a committed change (PostgreSQL); nothing to do by default."""

    def _run(self, conn: Any, sql: str, args: tuple[Any, ...] = ()) -> Any:
        return conn.execute(self._q(sql), args)

    def _bump(self, conn: Any) -> int:
        # First statement of every deployment write: takes the lock that serializes them.
        row = self._run(
            conn, "UPDATE deployment_revision SET revision = revision + 1 WHERE id = 1"
            " RETURNING revision",
        ).fetchone()
        revision = int(row["revision"])
        self._notify(conn, revision)
        return revision

    def propose_version(
        self, name: str, path: str, mode: DeployMode, checkpoint_id: str | None = None
    ) -> int:
        if not name:
            raise ValueError("a deployment needs a name")
        if mode not in DEPLOY_MODES:
            raise ValueError(f"mode must be 'adapter' or 'full', not {mode!r}")
        with self._write() as conn:
            revision = self._bump(conn)
            now = self._now(conn)
            row = self._run(
                conn,
                "INSERT INTO deployments (name, latest_version, live_version, revision, updated_at)"
                " VALUES (?, 1, NULL, ?, ?) ON CONFLICT (name) DO UPDATE SET"
                " latest_version = deployments.latest_version + 1,"
                " revision = excluded.revision, updated_at = excluded.updated_at"
                " RETURNING latest_version",
                (name, revision, now),
            ).fetchone()
            version = int(row["latest_version"])
            self._run(
                conn,
                "INSERT INTO deployment_versions (name, version, path, mode, checkpoint_id,"
                " created_at) VALUES (?, ?, ?, ?, ?, ?)",
                (name, version, path, mode, checkpoint_id, now),
            )
        return version

    def set_live(self, name: str, version: int) -> None:
        with self._write() as conn:
            revision = self._bump(conn)
            found = self._run(
                conn, "SELECT 1 FROM deployment_versions WHERE name = ? AND version = ?",
                (name, version),
            ).fetchone()
            if found is None:
                raise UnknownDeployment(f"deployment {name!r} has no version {version}")
            self._run(
                conn, "UPDATE deployments SET live_version = ?, revision = ?, updated_at = ?"
                " WHERE name = ?", (version, revision, self._now(conn), name),
            )

    def remove(self, name: str) -> None:
        with self._write() as conn:
            revision = self._bump(conn)
            cur = self._run(
                conn, "UPDATE deployments SET live_version = NULL, revision = ?, updated_at = ?"
                " WHERE name = ?", (revision, self._now(conn), name),
            )
            if cur.rowcount != 1:
                raise UnknownDeployment(f"no deployment {name!r}")

    def desired(self) -> dict[str, DeploymentVersion]:
        with self._conn() as conn:
            rows = self._run(
                conn, "SELECT v.* FROM deployments d JOIN deployment_versions v"
                " ON v.name = d.name AND v.version = d.live_version ORDER BY v.name",
            ).fetchall()
        return {r["name"]: DeploymentVersion(**dict(r)) for r in rows}

    def history(self, name: str) -> list[DeploymentVersion]:
        with self._conn() as conn:
            rows = self._run(
                conn, "SELECT * FROM deployment_versions WHERE name = ? ORDER BY version", (name,)
            ).fetchall()
        return [DeploymentVersion(**dict(r)) for r in rows]

    def deployment(self, name: str) -> Deployment | None:
        with self._conn() as conn:
            row = self._run(conn, "SELECT * FROM deployments WHERE name = ?", (name,)).fetchone()
        return Deployment(**dict(row)) if row else None

    def list_deployments(self) -> list[Deployment]:
        with self._conn() as conn:
            rows = self._run(conn, "SELECT * FROM deployments ORDER BY name").fetchall()
        return [Deployment(**dict(r)) for r in rows]

    def deployment_revision(self) -> int:
        with self._conn() as conn:
            row = self._run(conn, "SELECT revision FROM deployment_revision").fetchone()
        return int(row["revision"])

    def report_replica_status(
        self, replica_id: str, name: str, version: int | None, state: str,
        error: str | None = None,
    ) -> None:
        with self._write() as conn:
            self._run(
                conn,
                "INSERT INTO replica_status (replica_id, name, version, state, error, updated_at)"
                " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (replica_id, name) DO UPDATE SET"
                " version = excluded.version, state = excluded.state, error = excluded.error,"
                " updated_at = excluded.updated_at",
                (replica_id, name, version, state, error, self._now(conn)),
            )

    def replica_statuses(self, name: str | None = None) -> list[ReplicaStatus]:
        sql = "SELECT * FROM replica_status"
        args: tuple[str, ...] = ()
        if name is not None:
            sql, args = sql + " WHERE name = ?", (name,)
        with self._conn() as conn:
            rows = self._run(conn, sql + " ORDER BY name, replica_id", args).fetchall()
        return [ReplicaStatus(**dict(r)) for r in rows]
