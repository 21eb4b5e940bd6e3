"""The control plane's Prometheus metrics, on a registry owned by the daemon."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge

from shared.mqtt import MqttMetrics
from shared.runtime_metrics import RuntimeMetrics


class ControlMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.mqtt = MqttMetrics(self.registry)
        self.runtime = RuntimeMetrics(self.registry)
        self.appliances = Gauge("nearcast_control_appliances", "Known appliances by effective state",
                                ["state"], registry=self.registry)
        self.api_requests = Counter("nearcast_control_api_requests_total", "API requests by route and status",
                                    ["route", "status"], registry=self.registry)
        self.plays = Counter("nearcast_control_play_requests_total", "Play requests by outcome", ["result"],
                             registry=self.registry)
        self.events = Counter("nearcast_control_events_total", "Viewing events by outcome (accepted, duplicate, "
                              "rejected)", ["outcome"], registry=self.registry)
        self.home_requests = Counter("nearcast_control_home_requests_total", "Candidate-row requests by whether "
                                     "the model scored the profile", ["source"], registry=self.registry)
