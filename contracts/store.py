"""The durable job store: the ``JobStore`` protocol, its two backends, and ``open_store``.

Jobs move ``queued -> running -> succeeded | failed | cancelled`` (and ``running -> paused ->
queued`` when paused and resumed, ``contracts.store_ops``); workers claim them atomically,
hold leases renewed by heartbeats, and a job whose worker died is requeued to resume (see
``contracts.store_sqlite``). The same store keeps deployment desired state
(``contracts.deployments``).

Two backends with the same semantics:

- ``SqliteJobStore`` (``contracts.store_sqlite``): one file, the embedded default; workers on
  the same host only.
- ``PostgresJobStore`` (``contracts.store_postgres``): one PostgreSQL database shared by servers
  and workers on many hosts.

``open_store(location)`` chooses from the location: a ``postgresql://`` (or ``postgres://``)
URL opens PostgreSQL; a filesystem path, or ``sqlite:///path``, opens SQLite. The server and the
workers call ``open_store(settings.store_url or home / "jobs.db")``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Protocol
from urllib.parse import urlsplit, urlunsplit

from contracts.deployments import (
    Deployment,
    DeploymentStore,
    DeploymentVersion,
    DeployMode,
    ReplicaStatus,
    UnknownDeployment,
)
from contracts.records import (
    IN_FLIGHT,
    TERMINAL,
    CheckpointRecord,
    Control,
    DatasetInUse,
    DatasetRecord,
    Event,
    Job,
    JobStatus,
    JobStore,
    new_id,
)
from contracts.store_sqlite import SqliteJobStore

__all__ = [
    "IN_FLIGHT", "TERMINAL", "CheckpointRecord", "Control", "DatasetInUse", "DatasetRecord",
    "DeployMode", "Deployment",
    "DeploymentStore", "DeploymentVersion", "Event", "Job", "JobStatus", "JobStore",
    "ReplicaStatus", "SqliteJobStore", "Store", "UnknownDeployment", "new_id", "open_store",
    "redact",
]

logger = logging.getLogger(__name__)

POSTGRES_SCHEMES = ("postgresql://", "postgres://")
SQLITE_SCHEME = "sqlite://"


class Store(JobStore, DeploymentStore, Protocol):
    """What ``open_store`` returns: jobs, datasets, checkpoints and deployments."""

    def close(self) -> None: ...


def open_store(location: str | Path) -> Store:
    """Open the store at ``location``: a PostgreSQL URL, ``sqlite:///path``, or a path."""
    text = str(location)
    if text.startswith(POSTGRES_SCHEMES):
        # Imported here so that an embedded (SQLite) install never loads the driver.
        from contracts.store_postgres import PostgresJobStore

        logger.info("job store: PostgreSQL at %s", redact(text))
        return PostgresJobStore(text)
    if text.startswith(SQLITE_SCHEME):
        text = text.removeprefix(SQLITE_SCHEME)
    elif "://" in text:
        raise ValueError(
            f"unsupported store URL {redact(text)!r}:"
            " use postgresql://..., sqlite:///path or a path"
        )
    if not text:
        raise ValueError("empty store location")
    logger.info("job store: SQLite at %s", text)
    return SqliteJobStore(Path(text).expanduser())


def redact(url: str) -> str:
    """``url`` with its password replaced, for logs and error messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rsplit("@", 1)[1]
    return urlunsplit(parts._replace(netloc=f"{parts.username}:***@{host}"))
