"""Prometheus metrics of one app, in a registry of its own (two apps in a process do not collide).

Counters and histograms are updated where things happen (request middleware, trajectory jobs,
execution sessions); gauges of the kernel pool, the admission queue and the sessions are read at
scrape time by a collector, so they can never drift from the state they describe.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from runtime.server.limits import AdmissionStats
from sandbox.pool import PoolStats

__all__ = ["CONTENT_TYPE_LATEST", "Metrics"]

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


class _StateCollector(Collector):
    def __init__(
        self,
        pool: Callable[[], PoolStats | None],
        admission: Callable[[], AdmissionStats | None],
        sessions: Callable[[], int],
    ) -> None:
        self._pool, self._admission, self._sessions = pool, admission, sessions

    def collect(self) -> Iterator[Metric]:
        admission = self._admission()
        if admission is not None:
            yield GaugeMetricFamily(
                "mathcoder_queue_depth",
                "Trajectories admitted and waiting for a slot.",
                value=admission.queued,
            )
            yield GaugeMetricFamily(
                "mathcoder_trajectories_in_flight", "Trajectories running now.", value=admission.running
            )
        yield GaugeMetricFamily(
            "mathcoder_sessions_open", "Execution sessions open now.", value=self._sessions()
        )
        pool = self._pool()
        if pool is None:
            return
        kernels = GaugeMetricFamily(
            "mathcoder_pool_kernels", "Kernels of the pool by state.", labels=["state"]
        )
        for state, value in (("idle", pool.idle), ("leased", pool.leased), ("starting", pool.starting)):
            kernels.add_metric([state], value)
        yield kernels
        yield GaugeMetricFamily(
            "mathcoder_pool_size",
            "Kernels alive (idle + leased + starting).",
            value=pool.idle + pool.leased + pool.starting,
        )
        yield GaugeMetricFamily(
            "mathcoder_pool_waiting", "Sessions waiting for a kernel.", value=pool.waiting
        )
        yield CounterMetricFamily("mathcoder_pool_kernels_started", "Kernels started.", value=pool.started)
        yield CounterMetricFamily(
            "mathcoder_pool_restarts", "Kernels replaced inside a session (crash, kill).", value=pool.restarts
        )
        yield CounterMetricFamily(
            "mathcoder_pool_start_failures", "Kernels that failed to start.", value=pool.start_failures
        )


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "mathcoder_http_requests",
            "HTTP requests by route template, method and status.",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "mathcoder_http_request_duration_seconds",
            "Time from request to the end of its response (streams included), by route and status.",
            ["route", "method", "status"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.trajectories = Counter(
            "mathcoder_trajectories",
            "Trajectories ended, by outcome (a stop reason, error or cancelled).",
            ["outcome"],
            registry=self.registry,
        )
        self.executions = Counter(
            "mathcoder_executions",
            "Code cells executed, by status and origin (trajectory or session).",
            ["status", "origin"],
            registry=self.registry,
        )
        self.tokens = Counter(
            "mathcoder_tokens_generated", "Tokens the model generated.", registry=self.registry
        )
        self.prompt_tokens = Counter(
            "mathcoder_prompt_tokens",
            "Prompt tokens sent to the model (summed over steps).",
            registry=self.registry,
        )

    def watch(
        self,
        pool: Callable[[], PoolStats | None],
        admission: Callable[[], AdmissionStats | None],
        sessions: Callable[[], int],
    ) -> None:
        self.registry.register(_StateCollector(pool, admission, sessions))

    def observe_request(self, route: str, method: str, status: int, seconds: float) -> None:
        labels = (route, method, str(status))
        self.requests.labels(*labels).inc()
        self.latency.labels(*labels).observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)
