"""Build ``nearcast.json``, the Grafana dashboard over both daemons' Prometheus metrics.

The dashboard is generated so every panel's query names a metric the code really exports
(``tests/test_grafana.py`` checks that against the live registries); run this after changing panels:

    .venv/bin/python ops/grafana/build.py
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

OUT = Path(__file__).with_name("nearcast.json")

# (title, unit, [(PromQL, legend)], width)
PANELS: list[tuple[str, str, list[tuple[str, str]], int]] = [
    ("Edges up", "none", [("sum(nearcast_edge_up)", "up"), ("sum(nearcast_edge_draining)", "draining")], 6),
    ("Egress", "bps", [("sum by (instance) (rate(nearcast_edge_http_response_bytes_total[1m])) * 8", "{{instance}}")],
     9),
    ("Requests by status", "reqps",
     [("sum by (status) (rate(nearcast_edge_http_requests_total[1m]))", "{{status}}")], 9),
    ("Cache hit ratio", "percentunit",
     [("sum(rate(nearcast_edge_cache_hits_total[5m])) / (sum(rate(nearcast_edge_cache_hits_total[5m])) + "
       "sum(rate(nearcast_edge_cache_misses_total[5m])))", "hit ratio")], 8),
    ("Misses by cause", "reqps", [("sum by (cause) (rate(nearcast_edge_cache_misses_total[5m]))", "{{cause}}")], 8),
    ("Request latency p99 by kind", "s",
     [("histogram_quantile(0.99, sum by (le, kind) (rate(nearcast_edge_http_request_duration_seconds_bucket[5m])))",
       "{{kind}}")], 8),
    ("Cache disk", "bytes", [("sum by (instance) (nearcast_edge_cache_used_bytes)", "used {{instance}}"),
                             ("sum by (instance) (nearcast_edge_cache_capacity_bytes)", "capacity {{instance}}")], 8),
    ("Fill throughput by source", "Bps",
     [("sum by (source) (rate(nearcast_edge_fill_bytes_total[1m]))", "{{source}}")], 8),
    ("Fill queue", "bytes", [("sum by (instance) (nearcast_edge_fill_queue_bytes)", "{{instance}}")], 8),
    ("Connections and refusals", "short",
     [("sum(nearcast_edge_http_connections)", "open"),
      ("sum by (reason) (rate(nearcast_edge_http_refused_total[5m]))", "refused {{reason}}/s")], 8),
    ("Re-ranker", "reqps", [("sum(rate(nearcast_edge_rerank_requests_total[1m]))", "requests"),
                            ("sum(rate(nearcast_edge_rerank_errors_total[1m]))", "errors"),
                            ("sum(rate(nearcast_edge_rerank_fallbacks_total[1m]))", "fallbacks")], 8),
    ("Model version per edge", "none", [("nearcast_edge_model_info", "{{instance}} {{version}}")], 8),
    ("Play requests", "reqps", [("sum by (result) (rate(nearcast_control_play_requests_total[1m]))", "{{result}}")],
     8),
    ("Appliances by state", "none", [("nearcast_control_appliances", "{{state}}")], 8),
    ("Viewing events", "short", [("sum by (outcome) (rate(nearcast_control_events_total[5m]))", "{{outcome}}/s")], 8),
    ("Telemetry ingest", "short", [("rate(nearcast_control_telemetry_samples_total[1m])", "samples/s {{result}}"),
                                   ("nearcast_control_telemetry_queue", "queued")], 8),
    ("MQTT sessions", "short", [("nearcast_mqtt_connected", "{{instance}} connected"),
                                ("rate(nearcast_mqtt_inbound_dropped_total[5m])", "{{instance}} dropped/s")], 8),
]


def dashboard() -> dict[str, Any]:
    panels: list[dict[str, Any]] = []
    x = y = 0
    for i, (title, unit, queries, width) in enumerate(PANELS, start=1):
        if x + width > 24:
            x, y = 0, y + 8
        panels.append({
            "id": i, "type": "timeseries", "title": title,
            "datasource": {"type": "prometheus", "uid": "${datasource}"},
            "gridPos": {"x": x, "y": y, "w": width, "h": 8},
            "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
            "options": {"legend": {"displayMode": "list", "placement": "bottom"}},
            "targets": [{"refId": chr(65 + j), "expr": expr, "legendFormat": legend}
                        for j, (expr, legend) in enumerate(queries)],
        })
        x += width
    return {
        "title": "nearcast", "uid": "nearcast-overview", "schemaVersion": 39, "version": 1, "editable": True,
        "time": {"from": "now-6h", "to": "now"}, "refresh": "30s", "tags": ["nearcast"],
        "templating": {"list": [{"name": "datasource", "type": "datasource", "query": "prometheus",
                                 "label": "Prometheus"}]},
        "panels": panels,
    }


if __name__ == "__main__":
    OUT.write_text(json.dumps(dashboard(), indent=2) + "\n")
    print(f"wrote {OUT}")
