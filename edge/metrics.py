"""The edge's Prometheus metrics, on a registry owned by the daemon (no global state)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge

from shared.mqtt import MqttMetrics


class EdgeMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.mqtt = MqttMetrics(self.registry)
        self.up = Gauge("nearcast_edge_up", "1 while the edge daemon runs", registry=self.registry)
        self.draining = Gauge("nearcast_edge_draining", "1 while the operator drains this appliance",
                              registry=self.registry)
        self.commands = Counter("nearcast_edge_commands_total", "Commands handled, by type and outcome",
                                ["type", "result"], registry=self.registry)
        self.telemetry_sent = Counter("nearcast_edge_telemetry_messages_total",
                                      "Telemetry messages published", registry=self.registry)
        self.disk_capacity = Gauge("nearcast_edge_cache_capacity_bytes", "Configured cache disk budget",
                                   registry=self.registry)
