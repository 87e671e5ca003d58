"""Is the engine making progress? What ``/health`` and ``/metrics`` say about a running engine.

An engine can stop without failing: a wedged engine-core process, a kernel that never returns,
a deadlock between its processes. Requests then wait forever while the process looks alive, so
a load balancer keeps sending traffic to it. The :class:`Watchdog` notices: the engine tells it
when work arrives at an idle engine (:meth:`Watchdog.submitted`) and whenever a step delivered
output (:meth:`Watchdog.progress`); while requests are pending and nothing was delivered for
``stall_s`` seconds, the engine is *stalled*. Idle time never counts: the clock starts when the
first request reaches an idle engine, so a quiet night is not a stall.

A dead engine core (its process exited) is reported by the engine itself; the watchdog only
remembers since when, for the message.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

HealthState = Literal["starting", "ready", "stalled", "dead", "failed", "stopping"]
STATES: tuple[HealthState, ...] = ("starting", "ready", "stalled", "dead", "failed", "stopping")


@dataclass(frozen=True)
class EngineHealth:
    """One look at the engine. ``since``: wall-clock time the state began (a stall: the last
    progress), None when unknown; ``pending``: requests the engine holds; ``silent_s``: seconds
    without output while requests were pending (0 when idle)."""

    state: HealthState
    message: str = ""
    since: float | None = None
    pending: int = 0
    silent_s: float = 0.0

    @property
    def ok(self) -> bool:
        return self.state == "ready"

    def since_text(self) -> str | None:
        if self.since is None:
            return None
        return datetime.fromtimestamp(self.since, UTC).isoformat(timespec="seconds")


class Watchdog:
    def __init__(
        self,
        stall_s: float,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.stall_s = stall_s
        self._clock, self._wall = clock, wall
        self._last = clock()  # last progress, or when work reached an idle engine
        self._dead_since: float | None = None

    def submitted(self, pending_before: int) -> None:
        """A request is about to reach the engine, which held ``pending_before`` requests."""
        if pending_before == 0:  # idle until now: the silence so far was not the engine's fault
            self._last = self._clock()

    def progress(self) -> None:
        """The engine delivered output (any request, any step)."""
        self._last = self._clock()

    def check(self, pending: int) -> EngineHealth:
        """``ready`` or ``stalled`` for an engine holding ``pending`` requests."""
        if pending <= 0:
            return EngineHealth("ready")
        silent = max(0.0, self._clock() - self._last)
        if silent < self.stall_s:
            return EngineHealth("ready", pending=pending, silent_s=silent)
        since = self._wall() - silent
        message = (
            f"the engine is stalled: no output for {silent:.0f} s with {pending} requests "
            f"pending (limit {self.stall_s:g} s, ALIGNSERVE_ENGINE_STALL_S)"
        )
        return EngineHealth("stalled", message, since, pending, silent)

    def dead(self, reason: str, pending: int = 0) -> EngineHealth:
        """The engine core is gone (reported by the engine); remembers when it was first seen."""
        if self._dead_since is None:
            self._dead_since = self._wall()
        message = f"the engine core died ({reason}); restart the server"
        return EngineHealth("dead", message, self._dead_since, pending)


class HealthCollector(Collector):
    """``/metrics`` view of the engine's health, read at scrape time:
    ``alignserve_engine_state{state=...}`` (1 for the current state, 0 for the others) and
    ``alignserve_engine_silent_seconds`` (seconds without output while requests are pending)."""

    def __init__(self, health: Callable[[], EngineHealth]) -> None:
        self._health = health

    def collect(self) -> Iterator[GaugeMetricFamily]:
        health = self._health()
        state = GaugeMetricFamily(
            "alignserve_engine_state",
            "Engine health: 1 for the current state (ready, starting, stalled, dead, failed, "
            "stopping).",
            labels=["state"],
        )
        for name in STATES:
            state.add_metric([name], 1.0 if health.state == name else 0.0)
        yield state
        yield GaugeMetricFamily(
            "alignserve_engine_silent_seconds",
            "Seconds since the engine last delivered output while requests were pending "
            "(0 when idle); the engine counts as stalled past ALIGNSERVE_ENGINE_STALL_S.",
            value=health.silent_s,
        )
