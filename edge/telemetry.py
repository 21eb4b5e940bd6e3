"""Telemetry for the control plane: the same numbers as ``/metrics``, flattened, plus per-title demand.

Reading the Prometheus registry (rather than keeping a second set of counters) guarantees the MQTT
telemetry and a scrape never disagree about what happened.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from shared.messages import Telemetry, TitleDemand

from .metrics import DemandTally


def _key(name: str, labels: dict[str, str]) -> str:
    if not labels:
        return name
    return name + "{" + ",".join(f"{k}={v}" for k, v in sorted(labels.items())) + "}"


def flatten(registry: CollectorRegistry) -> tuple[dict[str, float], dict[str, float]]:
    """(counters, gauges) from every ``nearcast_`` metric; histograms contribute ``_count``/``_sum``."""
    counters: dict[str, float] = {}
    gauges: dict[str, float] = {}
    for metric in registry.collect():
        if not metric.name.startswith("nearcast_"):
            continue
        for sample in metric.samples:
            if sample.name.endswith("_created"):
                continue
            if metric.type == "counter" or (metric.type == "histogram" and sample.name.endswith(("_count", "_sum"))):
                counters[_key(sample.name, sample.labels)] = sample.value
            elif metric.type == "gauge":
                gauges[_key(sample.name, sample.labels)] = sample.value
    return counters, gauges


def sample(registry: CollectorRegistry, demand: DemandTally, *, seq: int, interval_s: float,
           extra_gauges: dict[str, float]) -> Telemetry:
    counters, gauges = flatten(registry)
    gauges.update(extra_gauges)
    titles = {t: TitleDemand(requests=r, bytes=b) for t, (r, b) in demand.take().items()}
    return Telemetry(seq=seq, interval_s=interval_s, counters=counters, gauges=gauges, titles=titles)
