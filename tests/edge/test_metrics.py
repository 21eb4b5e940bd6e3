"""edge.metrics.ServingStats exports exactly what prometheus_client's Counter and Histogram would."""

from __future__ import annotations

import random

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from edge.metrics import LATENCY_BUCKETS, EdgeMetrics, ServingStats
from edge.telemetry import flatten


def _reference(events: list[tuple[str, str, int, float]], hits: dict[str, int]) -> bytes:
    r = CollectorRegistry()
    requests = Counter("nearcast_edge_http_requests_total", "Content requests, by status and kind",
                       ["status", "kind"], registry=r)
    sent = Counter("nearcast_edge_http_response_bytes_total", "Body bytes sent, by status and kind",
                   ["status", "kind"], registry=r)
    latency = Histogram("nearcast_edge_http_request_duration_seconds",
                        "Time to serve a content request, body included", ["kind"], buckets=LATENCY_BUCKETS,
                        registry=r)
    hit = Counter("nearcast_edge_cache_hits_total", "Requests served from this appliance, by where", ["where"],
                  registry=r)
    for status, kind, nbytes, elapsed in events:
        requests.labels(status, kind).inc()
        sent.labels(status, kind).inc(nbytes)
        latency.labels(kind).observe(elapsed)
    for where, n in hits.items():
        hit.labels(where).inc(n)
    return generate_latest(r)


def _without_created(text: bytes) -> list[bytes]:
    return [line for line in text.splitlines() if b"_created" not in line]


def test_same_exposition_as_prometheus_client_objects() -> None:
    rng = random.Random(7)
    # values on and around every bucket bound, as well as beyond the last one
    times = [b for b in LATENCY_BUCKETS] + [b * 1.0001 for b in LATENCY_BUCKETS] + [0.0, 11.0, 1e-7]
    events = [(rng.choice(["200", "206", "302", "403"]), rng.choice(["segment", "manifest", "init"]),
               rng.randrange(0, 3 << 20), rng.choice(times) if i % 3 else rng.expovariate(200))
              for i in range(3000)]
    registry = CollectorRegistry()
    stats = ServingStats(registry)
    for event in events:
        stats.record(*event)
    stats.hits["memory"] += 1234
    stats.hits["disk"] += 56
    assert _without_created(generate_latest(registry)) == _without_created(
        _reference(events, {"memory": 1234, "disk": 56}))


def test_telemetry_and_registry_lookups_see_the_counts() -> None:
    metrics = EdgeMetrics()
    metrics.serving.record("200", "segment", 2048, 0.003)
    metrics.serving.record("200", "segment", 1024, 0.2)
    metrics.serving.hits["disk"] += 2
    counters, _ = flatten(metrics.registry)
    assert counters["nearcast_edge_http_requests_total{kind=segment,status=200}"] == 2
    assert counters["nearcast_edge_http_response_bytes_total{kind=segment,status=200}"] == 3072
    assert counters["nearcast_edge_http_request_duration_seconds_count{kind=segment}"] == 2
    assert abs(counters["nearcast_edge_http_request_duration_seconds_sum{kind=segment}"] - 0.203) < 1e-9
    assert counters["nearcast_edge_cache_hits_total{where=disk}"] == 2
    assert metrics.registry.get_sample_value("nearcast_edge_http_request_duration_seconds_bucket",
                                             {"kind": "segment", "le": "0.005"}) == 1
