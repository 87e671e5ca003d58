"""Prometheus metrics, on a registry owned by the app (nothing global at import)."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from server.engine.types import EngineStats

_LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 40, 80, 160)


class Metrics:
    def __init__(self, engine_stats: Callable[[], EngineStats] | None = None):
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "alignserve_requests_total",
            "Finished API requests.",
            ["model", "endpoint", "status", "aligned"],
            registry=self.registry,
        )
        self.prompt_tokens = Counter(
            "alignserve_prompt_tokens_total",
            "Prompt tokens processed.",
            ["model"],
            registry=self.registry,
        )
        self.completion_tokens = Counter(
            "alignserve_completion_tokens_total",
            "Completion tokens returned.",
            ["model"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "alignserve_request_latency_seconds",
            "End-to-end request latency.",
            ["model", "endpoint"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.ttft = Histogram(
            "alignserve_time_to_first_token_seconds",
            "Time to the first generated token.",
            ["model"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.queue_depth = Gauge(
            "alignserve_queue_depth", "Requests waiting for engine slots.", registry=self.registry
        )
        self.running = Gauge(
            "alignserve_running_requests", "Requests being decoded.", registry=self.registry
        )
        self.pair_restarts = Gauge(
            "alignserve_alignment_pair_restarts_total",
            "Guidance groups (alignment, contrast) that lost lockstep and were restarted from "
            "their last good token.",
            registry=self.registry,
        )
        self.swaps = Counter(
            "alignserve_swaps_total",
            "Deployment swaps by outcome.",
            ["mode", "outcome"],
            registry=self.registry,
        )
        self.swap_seconds = Histogram(
            "alignserve_swap_duration_seconds",
            "Time to put a version live (incl. checks).",
            ["mode"],
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 3, 5, 10, 30),
            registry=self.registry,
        )
        self.aborted_by_swap = Counter(
            "alignserve_requests_aborted_by_swap_total",
            "Requests aborted because of a swap (swaps never abort requests: stays 0).",
            registry=self.registry,
        )
        self.version_requests = Counter(
            "alignserve_requests_by_version_total",
            "Requests by the model version that served them.",
            ["model", "version"],
            registry=self.registry,
        )
        self._engine_stats = engine_stats

    def render(self) -> bytes:
        if self._engine_stats is not None:
            stats = self._engine_stats()
            self.queue_depth.set(stats.waiting)
            self.running.set(stats.running)
            self.pair_restarts.set(stats.extra.get("pair_restarts", 0.0))
        return generate_latest(self.registry)
