"""The edge's Prometheus metrics, on a registry owned by the daemon (no global state).

Per-title demand is not a Prometheus label (titles are unbounded); it is tallied in
:class:`DemandTally` and shipped to the control plane in telemetry, which is where popularity lives.
"""

from __future__ import annotations

import itertools
from bisect import bisect_left
from collections import deque

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric

from shared.mqtt import MqttMetrics
from shared.runtime_metrics import RuntimeMetrics

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
MAX_TITLES = 10_000


class DemandTally:
    """Requests and bytes per title since the last telemetry sample (bounded in titles)."""

    def __init__(self, max_titles: int = MAX_TITLES) -> None:
        self.max_titles = max_titles
        self.titles: dict[str, list[int]] = {}
        self.overflow = 0

    def add(self, title_id: str, nbytes: int) -> None:
        row = self.titles.get(title_id)
        if row is None:
            if len(self.titles) >= self.max_titles:
                self.overflow += 1
                return
            row = self.titles[title_id] = [0, 0]
        row[0] += 1
        row[1] += nbytes

    def take(self) -> dict[str, tuple[int, int]]:
        out = {k: (v[0], v[1]) for k, v in self.titles.items()}
        self.titles = {}
        return out


class LatencyWindow:
    """The last ``size`` durations; a scrape or telemetry sample reads their p99 (no histogram bucket
    is fine enough to compare a 3 ms p99 with a 4 ms one, which is what the rollout gate does)."""

    def __init__(self, size: int = 2048) -> None:
        self._ms: deque[float] = deque(maxlen=size)

    def add(self, seconds: float) -> None:
        self._ms.append(seconds * 1000.0)

    def p99_ms(self) -> float:
        return float(np.percentile(np.fromiter(self._ms, dtype=np.float64), 99)) if self._ms else 0.0


class ServingStats:
    """Requests, body bytes, latency and cache hits of content requests, counted in plain Python on the
    serving path and turned into Prometheus families when the registry is collected (a scrape, a
    telemetry sample): the same names, labels and buckets as ``Counter``/``Histogram`` objects would
    export, without four locked updates and their label lookups per request (``bench/serve.py``: about
    a fifth of the Python time of a manifest answered from memory).  Only the event loop writes these.
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        #: (status, kind) -> [requests, body bytes]
        self.rows: dict[tuple[str, str], list[int]] = {}
        #: kind -> [sum of seconds, count per bucket ... (not cumulative), count above the last bound]
        self.latency: dict[str, list[float]] = {}
        self.hits: dict[str, int] = {"memory": 0, "disk": 0}
        self._bounds = [repr(float(b)) for b in LATENCY_BUCKETS] + ["+Inf"]  # as prometheus_client writes them
        registry.register(self)

    def record(self, status: str, kind: str, sent: int, elapsed: float) -> None:
        row = self.rows.get((status, kind))
        if row is None:
            row = self.rows[(status, kind)] = [0, 0]
        row[0] += 1
        row[1] += sent
        lat = self.latency.get(kind)
        if lat is None:
            lat = self.latency[kind] = [0.0] * (len(LATENCY_BUCKETS) + 2)
        lat[0] += elapsed
        lat[1 + bisect_left(LATENCY_BUCKETS, elapsed)] += 1

    def _families(self, *, with_samples: bool) -> list[Metric]:
        requests = CounterMetricFamily("nearcast_edge_http_requests", "Content requests, by status and kind",
                                       labels=["status", "kind"])
        sent = CounterMetricFamily("nearcast_edge_http_response_bytes", "Body bytes sent, by status and kind",
                                   labels=["status", "kind"])
        latency = HistogramMetricFamily("nearcast_edge_http_request_duration_seconds",
                                        "Time to serve a content request, body included", labels=["kind"])
        hits = CounterMetricFamily("nearcast_edge_cache_hits", "Requests served from this appliance, by where",
                                   labels=["where"])
        if with_samples:
            for (status, kind), row in list(self.rows.items()):
                requests.add_metric([status, kind], row[0])
                sent.add_metric([status, kind], row[1])
            for kind, lat in list(self.latency.items()):
                cumulative = list(itertools.accumulate(lat[1:]))
                latency.add_metric([kind], list(zip(self._bounds, cumulative, strict=True)), sum_value=lat[0])
            for where, n in list(self.hits.items()):
                hits.add_metric([where], n)
        return [requests, sent, latency, hits]

    def describe(self) -> list[Metric]:
        return self._families(with_samples=False)

    def collect(self) -> list[Metric]:
        return self._families(with_samples=True)


class EdgeMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.mqtt = MqttMetrics(r)
        self.runtime = RuntimeMetrics(r)
        self.up = Gauge("nearcast_edge_up", "1 while the edge daemon runs", registry=r)
        self.draining = Gauge("nearcast_edge_draining", "1 while the operator drains this appliance", registry=r)
        self.commands = Counter("nearcast_edge_commands_total", "Commands handled, by type and outcome",
                                ["type", "result"], registry=r)
        self.telemetry_sent = Counter("nearcast_edge_telemetry_messages_total",
                                      "Telemetry messages published", registry=r)
        self.telemetry_dropped = Counter("nearcast_edge_telemetry_dropped_total",
                                         "Telemetry samples dropped unsent because the spool was full", registry=r)
        self.telemetry_spool_bytes = Gauge("nearcast_edge_telemetry_spool_bytes",
                                           "Bytes of telemetry on disk waiting for the broker", registry=r)
        self.disk_capacity = Gauge("nearcast_edge_cache_capacity_bytes", "Configured cache disk budget",
                                   registry=r)
        self.disk_used = Gauge("nearcast_edge_cache_used_bytes",
                               "Bytes held or reserved by file sets in the cache", registry=r)
        self.disk_full = Gauge("nearcast_edge_cache_disk_full",
                               "1 while fills are stopped because the cache filesystem is full", registry=r)
        self.fs_free = Gauge("nearcast_edge_cache_fs_free_bytes",
                             "Bytes free on the cache filesystem (for the cache's user), as last read", registry=r)
        self.file_sets = Gauge("nearcast_edge_cache_file_sets", "File sets in the cache, by state", ["state"],
                               registry=r)
        # serving
        self.serving = ServingStats(r)  # requests, bytes, latency and hits of content requests
        self.misses = Counter("nearcast_edge_cache_misses_total",
                              "Requests this appliance could not serve, by cause (content, health, corrupt)", ["cause"],
                              registry=r)
        self.refused = Counter("nearcast_edge_http_refused_total", "Requests refused, by reason", ["reason"],
                               registry=r)
        self.in_flight = Gauge("nearcast_edge_http_in_flight_requests", "Content requests being served",
                               registry=r)
        self.connections = Gauge("nearcast_edge_http_connections", "Open client connections", registry=r)
        self.memory_cache_bytes = Gauge("nearcast_edge_memory_cache_bytes",
                                        "Bytes of manifests and init segments held in memory", registry=r)
        # fill
        self.fill_bytes = Counter("nearcast_edge_fill_bytes_total", "Bytes downloaded by fills, by source kind",
                                  ["source"], registry=r)
        self.fill_files = Counter("nearcast_edge_fill_files_total", "Files fetched by fills, by result",
                                  ["result"], registry=r)
        self.fill_queue = Gauge("nearcast_edge_fill_queue_bytes", "Bytes still to fetch for the current plan",
                                registry=r)
        self.fill_sets = Counter("nearcast_edge_fill_file_sets_total", "File sets filled, by result", ["result"],
                                 registry=r)
        self.evictions = Counter("nearcast_edge_evictions_total", "File sets evicted, by reason", ["reason"],
                                 registry=r)
        self.scrub_bytes = Counter("nearcast_edge_scrub_bytes_total", "Bytes of cached files re-hashed by the scrub",
                                   registry=r)
        self.scrub_files = Counter("nearcast_edge_scrub_files_total", "Cached files re-hashed by the scrub",
                                   registry=r)
        self.scrub_corrupt = Counter("nearcast_edge_scrub_corrupt_total",
                                     "Cached files found damaged or missing, by who found them (scrub, read)",
                                     ["found_by"], registry=r)
        self.scrub_passes = Counter("nearcast_edge_scrub_passes_total", "Scrub passes over the whole cache finished",
                                    registry=r)
        self.demand = DemandTally()
        # model rollout and re-ranking: the control plane's rollout gates read these names from telemetry
        self.model_info = Gauge("nearcast_edge_model_info", "1 for the model version serving re-ranks",
                                ["version"], registry=r)
        self.model_loads = Counter("nearcast_edge_model_loads_total",
                                   "Model bundles handled, by result (loaded, refused, retry)", ["result"],
                                   registry=r)
        self.rerank_requests = Counter("nearcast_edge_rerank_requests_total", "Home pages requested", registry=r)
        self.rerank_errors = Counter("nearcast_edge_rerank_errors_total",
                                     "Home pages whose model scoring failed (served in candidate order)",
                                     registry=r)
        self.rerank_fallbacks = Counter("nearcast_edge_rerank_fallbacks_total",
                                        "Home pages not re-ranked by a model or not from fresh candidates "
                                        "(no model, model error, stale candidates, local trending)", registry=r)
        self.rerank_latency = LatencyWindow()
        self.rerank_p99 = Gauge("nearcast_edge_rerank_p99_ms",
                                "p99 of the last home pages' handling time, in milliseconds", registry=r)
        self.rerank_p99.set_function(self.rerank_latency.p99_ms)
