"""Prometheus metrics of the hub: the objects every part records into, and scrape-time collectors.

No Litestar here: services and streams import this module and call the objects directly, e.g.
``metrics.START_SECONDS.labels(runtime="docker", outcome="ok").observe(elapsed)`` or
``with metrics.docker_call("create"): ...``. Everything lives in prometheus_client's default registry,
one set per process (``codehub serve`` runs one worker: scrape every hub process).

Label cardinality is bounded on purpose: HTTP metrics use the route *template*
(``/api/workspaces/{workspace_id}``), never the raw path; Docker and LLM metrics use small fixed label sets.
No label carries a workspace id: the relay's series are per server (its id, or ``hub`` for workspaces the
hub runs itself), so they are bounded by the number of registered servers.

Values read from the database (workspaces by state) or from other objects (event hub counters, dependency
checks) are computed at scrape time: ``/metrics`` awaits ``refresh`` before rendering, and
``HubStatsCollector`` reads ``stats()`` of the registered hubs.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, suppress
from typing import Any

from prometheus_client import REGISTRY, Counter, Gauge, Histogram, disable_created_metrics
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

disable_created_metrics()  # no *_created series: half the exposition, nothing dashboards use

# Latency buckets (seconds) for HTTP and Docker calls: sub-millisecond to tens of seconds.
FAST_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
SLOW_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0)

INFO = Gauge("codehub_info", "Always 1; labels describe this hub process.", ["version", "event_backend"])

HTTP_REQUESTS = Counter(
    "codehub_http_requests_total",
    "HTTP requests by method, route template and status code.",
    ["method", "route", "status"],
)
HTTP_SECONDS = Histogram(
    "codehub_http_request_duration_seconds",
    "HTTP request latency by method and route template (for text/event-stream: time to the response headers).",
    ["method", "route"],
    buckets=FAST_BUCKETS,
)

WORKSPACES = Gauge(
    "codehub_workspaces",
    "Workspaces by state, read from the database at scrape time (the same in every hub process: use max()).",
    ["state"],
)
START_SECONDS = Histogram(
    "codehub_workspace_start_duration_seconds",
    "Time from a start request to the workspace running (outcome: ok, failed, timeout).",
    ["runtime", "outcome"],
    buckets=SLOW_BUCKETS,
)

RELAY_CONNECTIONS = Gauge(
    "codehub_relay_connections",
    "Open relay connections (HTTP requests in flight, WebSockets, terminals) per server (``hub``: hub-run).",
    ["server"],
)
RELAY_BYTES = Counter(
    "codehub_relay_bytes_total",
    "Bytes relayed per server (direction: up = client to workspace, down = workspace to client).",
    ["server", "direction"],
)

DOCKER_SECONDS = Histogram(
    "codehub_docker_call_duration_seconds",
    "Docker engine API call latency by operation (create, start, stop, remove, inspect, exec, pull, ...).",
    ["operation"],
    buckets=FAST_BUCKETS,
)
DOCKER_ERRORS = Counter("codehub_docker_call_errors_total", "Docker engine API calls that raised.", ["operation"])

LLM_TOKENS = Counter("codehub_llm_tokens_total", "LLM tokens by kind (prompt, completion).", ["kind"])
LLM_SECONDS = Histogram(
    "codehub_llm_request_duration_seconds",
    "LLM request latency, start to last token (outcome: ok, error, cancelled, rate_limited).",
    ["outcome"],
    buckets=SLOW_BUCKETS,
)
LLM_FIRST_TOKEN_SECONDS = Histogram(
    "codehub_llm_first_token_seconds", "Time to the first streamed LLM token.", buckets=SLOW_BUCKETS
)

RATE_LIMITED = Counter("codehub_rate_limited_total", "Requests refused with 429 by the hub's limits.", ["scope"])

DEPENDENCY_UP = Gauge(
    "codehub_dependency_up",
    "1 when a /ready check (database, redis, events, engine:<server>) answers, else 0.",
    ["name"],
)
DEPENDENCY_SECONDS = Gauge(
    "codehub_dependency_check_seconds", "Duration of the last /ready-style check at scrape time.", ["name"]
)


@contextmanager
def docker_call(operation: str) -> Iterator[None]:
    """Time one Docker API call into ``DOCKER_SECONDS`` (and count it in ``DOCKER_ERRORS`` if it raises)."""
    started = time.perf_counter()
    try:
        yield
    except BaseException:
        DOCKER_ERRORS.labels(operation).inc()
        raise
    finally:
        DOCKER_SECONDS.labels(operation).observe(time.perf_counter() - started)


_http_children: dict[tuple[str, str, int], tuple[Any, Any]] = {}


def observe_http(method: str, route: str, status: int, seconds: float) -> None:
    """Record one finished HTTP request (called by the request middleware; children cached: ~2 µs)."""
    key = (method, route, status)
    children = _http_children.get(key)
    if children is None:
        children = (HTTP_REQUESTS.labels(method, route, str(status)), HTTP_SECONDS.labels(method, route))
        _http_children[key] = children
    children[0].inc()
    children[1].observe(seconds)


# -- event hub counters, read from ``hub.stats()`` at scrape time --------------------------------------

HUB_COUNTERS = {
    "published": "Events published by this process.",
    "delivered": "Events delivered to local subscribers.",
    "dropped": "Events dropped because a subscriber fell behind (the subscriber gets a reset).",
    "replayed": "Events replayed from history (Last-Event-ID resume).",
    "resets": "stream.reset events sent to subscribers.",
    "reconnects": "Reconnects of the Redis pub/sub listener.",
    "publish_errors": "Publishes that failed (Redis unreachable).",
}
HUB_GAUGES = {
    "subscribers": "Open event subscriptions in this process (SSE streams and internal listeners).",
    "topics": "Topics with at least one local subscriber.",
}


class HubStatsCollector(Collector):
    """Exposes ``stats()`` of every registered event hub (normally one per process) as metrics."""

    def __init__(self) -> None:
        self.sources: dict[int, Callable[[], Mapping[str, Any]]] = {}

    def add(self, stats: Callable[[], Mapping[str, Any]]) -> Callable[[], None]:
        """Register a ``stats`` callable; returns a function that unregisters it."""
        key = id(stats)
        self.sources[key] = stats
        return lambda: self.sources.pop(key, None) and None

    def _totals(self) -> tuple[dict[str, float], bool]:
        totals: dict[str, float] = {}
        up = bool(self.sources)
        for stats in list(self.sources.values()):
            try:
                values = stats()
            except Exception:  # a broken hub must not break the scrape
                up = False
                continue
            up = up and bool(values.get("up", True))
            for name, value in values.items():
                if isinstance(value, bool):
                    value = int(value)
                if isinstance(value, int | float):
                    totals[name] = totals.get(name, 0) + value
        return totals, up

    def collect(self) -> Iterator[Metric]:
        """Yield the hub counters and gauges (names as in ``HUB_COUNTERS`` / ``HUB_GAUGES``)."""
        totals, up = self._totals()
        for name, doc in HUB_COUNTERS.items():
            counter = CounterMetricFamily(f"codehub_events_{name}", doc)
            counter.add_metric([], totals.get(name, 0))
            yield counter
        for name, doc in HUB_GAUGES.items():
            gauge = GaugeMetricFamily(f"codehub_event_{name}", doc)
            gauge.add_metric([], totals.get(name, 0))
            yield gauge
        hub_up = GaugeMetricFamily("codehub_event_hub_up", "1 when the event hub of this process can deliver events.")
        hub_up.add_metric([], 1 if up else 0)
        yield hub_up

    def describe(self) -> Iterator[Metric]:
        """Describe without calling the hubs (the registry calls this once at registration)."""
        return iter(())


HUB_STATS = HubStatsCollector()
REGISTRY.register(HUB_STATS)


# -- values set at scrape time by ``app.services.workspaces.monitoring.refresh`` ------------------------------------


def set_workspace_counts(counts: Mapping[str, int], states: tuple[str, ...]) -> None:
    """Set ``WORKSPACES`` for every known state (absent states read 0)."""
    for state in states:
        WORKSPACES.labels(state).set(counts.get(state, 0))


def set_dependency(name: str, up: bool, seconds: float) -> None:
    """Record the outcome of one dependency check."""
    DEPENDENCY_UP.labels(name).set(1 if up else 0)
    DEPENDENCY_SECONDS.labels(name).set(round(seconds, 6))


def forget_dependency(name: str) -> None:
    """Drop the series of a dependency that is gone (a deleted server's engine)."""
    for gauge in (DEPENDENCY_UP, DEPENDENCY_SECONDS):
        with suppress(KeyError):
            gauge.remove(name)
