"""The engine watchdog: a stalled or dead engine makes /health 503 (with the reason and since
when) and shows in /metrics; idle time is never a stall."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from server.api.app import create_app
from server.auth import KeyRing
from server.engine.watchdog import Watchdog
from tests.fakes import FakeEngine


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def engine(clock: Clock) -> FakeEngine:
    engine = FakeEngine()
    engine.watchdog = Watchdog(5.0, clock=clock, wall=lambda: 1_800_000_000.0 + clock.now)
    return engine


@pytest.fixture
def client(engine: FakeEngine) -> Iterator[TestClient]:
    with TestClient(create_app(engine, KeyRing.build([], []))) as c:
        yield c


def test_idle_time_is_not_a_stall(clock: Clock) -> None:
    dog = Watchdog(5.0, clock=clock)
    clock.now += 3600  # an hour without requests
    assert dog.check(0).state == "ready"
    dog.submitted(pending_before=0)  # the first request reaches the idle engine: clock starts
    clock.now += 4
    assert dog.check(1).state == "ready"
    dog.submitted(pending_before=1)  # more requests do not restart the clock
    clock.now += 2
    stalled = dog.check(2)
    assert stalled.state == "stalled" and stalled.silent_s == 6
    assert "no output for 6 s with 2 requests" in stalled.message
    dog.progress()
    assert dog.check(2).state == "ready"


def test_a_stalled_engine_is_503_with_since_and_in_metrics(
    client: TestClient, engine: FakeEngine, clock: Clock
) -> None:
    engine.pending = 2
    engine.watchdog.submitted(0)
    clock.now += 4.0
    assert client.get("/health").status_code == 200  # busy, not stalled yet
    clock.now += 3.0
    r = client.get("/health")
    assert r.status_code == 503 and r.headers["Retry-After"].isdigit()
    body = r.json()
    assert body["error"]["code"] == "engine_stalled" and body["status"] == "stalled"
    assert "no output for 7 s with 2 requests pending" in body["error"]["message"]
    # since = the last progress: wall clock 1_800_000_000 + 1000 (when the work arrived)
    assert body["since"] == "2027-01-15T08:16:40+00:00"
    text = client.get("/metrics").text
    assert 'alignserve_engine_state{state="stalled"} 1.0' in text
    assert 'alignserve_engine_state{state="ready"} 0.0' in text
    assert "alignserve_engine_silent_seconds 7.0" in text
    engine.watchdog.progress()  # output again: healthy
    assert client.get("/health").json()["status"] == "ok"
    assert 'alignserve_engine_state{state="ready"} 1.0' in client.get("/metrics").text


def test_a_dead_engine_core_is_503_without_retry(client: TestClient, engine: FakeEngine) -> None:
    engine.dead_reason = "the engine-core process exited"
    r = client.get("/health")
    assert r.status_code == 503 and "Retry-After" not in r.headers
    body = r.json()
    assert body["error"]["code"] == "engine_dead" and body["status"] == "dead"
    assert "engine-core process exited" in body["error"]["message"] and body["since"]
    assert 'alignserve_engine_state{state="dead"} 1.0' in client.get("/metrics").text
