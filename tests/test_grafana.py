"""The shipped Grafana dashboard is current and only queries metrics the daemons export."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

from control.ingest import IngestMetrics
from control.metrics import ControlMetrics
from edge.metrics import EdgeMetrics

ROOT = Path(__file__).resolve().parents[1]
BUILD = ROOT / "ops" / "grafana" / "build.py"


def _build_module() -> object:
    spec = importlib.util.spec_from_file_location("grafana_build", BUILD)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _exported() -> set[str]:
    """Every series name the daemons' registries can produce (labelled families have no samples yet)."""
    control = ControlMetrics()
    IngestMetrics(control.registry)  # the telemetry ingest registers its metrics on the control registry
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "summary": ("_sum", "_count")}
    names: set[str] = set()
    for registry in (control.registry, EdgeMetrics().registry):
        for family in registry.collect():
            names.add(family.name)
            names.update(family.name + suffix for suffix in suffixes.get(family.type, ()))
    return names


def test_dashboard_file_is_current_and_queries_real_metrics() -> None:
    shipped = json.loads((ROOT / "ops" / "grafana" / "nearcast.json").read_text())
    built = _build_module().dashboard()  # type: ignore[attr-defined]
    assert shipped == built, "ops/grafana/nearcast.json is stale: run ops/grafana/build.py"
    exported = _exported()
    queried = {m for p in shipped["panels"] for t in p["targets"]
               for m in re.findall(r"nearcast_[a-z0-9_]+", t["expr"])}
    assert queried, "no queries found"
    missing = sorted(queried - exported)
    assert not missing, f"dashboard queries metrics nobody exports: {missing}"
    ids = [p["id"] for p in shipped["panels"]]
    assert len(ids) == len(set(ids))
    assert all(0 <= p["gridPos"]["x"] + p["gridPos"]["w"] <= 24 for p in shipped["panels"])
