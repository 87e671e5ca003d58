"""Two serving replicas on one PostgreSQL store: a deploy through one and a rollback through the
other reach both, and a replica killed with SIGKILL comes back serving what is live (including a
change made while it was down). Real `alignserve serve` processes, real vLLM, the embedded model;
every answer is checked by the version it names and by its greedy text."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.real.conftest import ADMIN_KEY, USER_KEY
from tests.real.server_process import ServerProcess
from tests.real.swap_checkpoints import make_adapter

MESSAGES = [{"role": "user", "content": "Write a short poem about the sea."}]
MAX_TOKENS = 16
# The seeds of test_hot_swap's swap-a1/swap-a2, whose greedy answers to MESSAGES differ.
ADAPTERS = {"replica-a1": 11, "replica-a2": 12}
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
FOLLOW_TIMEOUT_S = 120.0


def _replica(home: Path, store_url: str, replica_id: str, run: int) -> ServerProcess:
    return ServerProcess(
        home,
        env={
            "ALIGNSERVE_API_KEYS": USER_KEY,
            "ALIGNSERVE_ADMIN_KEYS": ADMIN_KEY,
            "ALIGNSERVE_KV_CACHE_GIB": "1",
            "ALIGNSERVE_STORE_URL": store_url,
            "ALIGNSERVE_REPLICA_ID": replica_id,
            "ALIGNSERVE_RECONCILE_INTERVAL_S": "0.5",
        },
        log=home / f"{replica_id}-{run}.log",
    )


def _start_together(servers: list[ServerProcess]) -> None:
    errors: list[BaseException] = []

    def start(server: ServerProcess) -> None:
        try:
            server.start(timeout=600)
        except BaseException as exc:  # re-raised below, in the test's thread
            errors.append(exc)

    threads = [threading.Thread(target=start, args=(s,)) for s in servers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]


def _ask(server: ServerProcess, model: str) -> tuple[str | None, str]:
    """(version label, text) of a greedy answer; (None, error) while ``model`` is not served."""
    r = httpx.post(
        f"{server.base_url}/v1/chat/completions",
        headers={"Authorization": f"Bearer {USER_KEY}"},
        json={"model": model, "messages": MESSAGES, "max_tokens": MAX_TOKENS, "temperature": 0},
        timeout=120,
    )
    if r.status_code == 404:
        return None, r.text
    assert r.status_code == 200, r.text
    body = r.json()
    return body["system_fingerprint"].removeprefix("alignserve:"), body["choices"][0][
        "message"
    ]["content"]


def _follows(
    server: ServerProcess, model: str, label: str, took: list[float] | None = None
) -> str:
    """Poll ``server`` until it answers ``model`` with version ``label``; that answer's text
    (and the seconds it took appended to ``took``)."""
    started = time.monotonic()
    seen: str | None = None
    while time.monotonic() < started + FOLLOW_TIMEOUT_S:
        seen, text = _ask(server, model)
        if seen == label:
            if took is not None:
                took.append(time.monotonic() - started)
            return text
        time.sleep(0.5)
    pytest.fail(f"{server.base_url} still answers {seen}, not {label}:\n{server.log_tail()}")


def _admin(server: ServerProcess, method: str, path: str, **kwargs: Any) -> httpx.Response:
    return httpx.request(
        method, f"{server.base_url}/admin/v1/deployments{path}", headers=ADMIN, timeout=300,
        **kwargs,
    )


@pytest.fixture
def replicas(
    alignserve_home: Path, default_model: Path, pg_url: str
) -> Iterator[tuple[list[ServerProcess], str]]:
    """Replicas A and B started, and the store's URL; the fixture stops every server the test
    appends to the list."""
    for checkpoint_id, seed in ADAPTERS.items():
        make_adapter(default_model, alignserve_home, checkpoint_id, seed)
    # One ALIGNSERVE_HOME, so the checkpoints are at the same path for both.
    a = _replica(alignserve_home, pg_url, "replica-a", 1)
    b = _replica(alignserve_home, pg_url, "replica-b", 1)
    servers = [a, b]
    try:
        _start_together(servers)
        yield servers, pg_url
    finally:
        for server in servers:
            server.stop()


def test_two_replicas_serve_the_same_live_versions(
    replicas: tuple[list[ServerProcess], str], alignserve_home: Path
) -> None:
    servers, store_url = replicas
    a, b = servers
    took: list[float] = []  # seconds until the other replica answered each change

    r = _admin(a, "POST", "", json={"checkpoint": "replica-a1", "name": "rep", "mode": "adapter"})
    assert r.status_code == 201 and r.json()["label"] == "rep@1", r.text
    assert _ask(a, "rep")[0] == "rep@1"  # live on the replica that deployed it when it answers
    text1 = _follows(b, "rep", "rep@1", took)
    assert _ask(a, "rep") == ("rep@1", text1)  # same version, same weights, same greedy text

    r = _admin(a, "POST", "", json={"checkpoint": "replica-a2", "name": "rep", "mode": "adapter"})
    assert r.status_code == 201 and r.json()["label"] == "rep@2", r.text
    text2 = _follows(b, "rep", "rep@2", took)
    assert text2 != text1  # B really runs the new adapter, not just its name
    assert _ask(a, "rep") == ("rep@2", text2)

    r = _admin(b, "POST", "/rep/rollback")  # through the other replica
    assert r.status_code == 200 and r.json()["label"] == "rep@1", r.text
    assert _ask(b, "rep") == ("rep@1", text1)
    assert _follows(a, "rep", "rep@1", took) == text1

    deadline = time.monotonic() + 30  # a replica reports right after its switch
    while True:
        listing = _admin(a, "GET", "").json()
        reports = {(s["replica_id"], s["name"]): (s["version"], s["state"])
                   for s in listing["replicas"]}
        if reports.get(("replica-a", "rep")) == reports.get(("replica-b", "rep")) == (1, "live"):
            break
        assert time.monotonic() < deadline, reports
        time.sleep(0.5)
    statuses = {d["version"]: d["status"] for d in listing["data"] if d["name"] == "rep"}
    assert statuses == {1: "live", 2: "retired"}

    # SIGKILL: no shutdown, no chance to write anything. While A is down, B deploys again.
    assert a.proc is not None
    a.proc.kill()
    a.proc.wait(30)
    r = _admin(b, "POST", "", json={"checkpoint": "replica-a2", "name": "rep", "mode": "adapter"})
    assert r.status_code == 201 and r.json()["label"] == "rep@3", r.text
    restarted = _replica(alignserve_home, store_url, "replica-a", 2)
    servers.append(restarted)
    restart_began = time.monotonic()
    restarted.start(timeout=600)
    restart_s = time.monotonic() - restart_began
    # No polling: a replica reconciles before it takes its first request.
    assert _ask(restarted, "rep") == ("rep@3", text2)
    assert _ask(b, "rep") == ("rep@3", text2)
    print("the other replica answered the new version after "
          + ", ".join(f"{s:.1f}" for s in took)
          + f" s (deploy, deploy, rollback); restart to serving rep@3 in {restart_s:.1f} s")
