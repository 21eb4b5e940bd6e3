"""The registry's steering snapshot: decisive changes at once, load folded in by the background refresh."""

from __future__ import annotations

import time
from dataclasses import replace

from control.fleet import Fleet
from control.registry import RegistryView
from control.store import ApplianceMeta, ApplianceRecord, Holding
from shared.messages import ApplianceStatus, Telemetry


def _registry() -> RegistryView:
    fleet = Fleet(30.0)
    reg = RegistryView(fleet, refresh_s=0.0)
    reg.set_title("t1", "v1", 100)
    for aid in ("a", "b"):
        reg.put(ApplianceRecord(aid, ApplianceMeta("s1", "r1", prefixes=("10.0.0.0/8",), load_threshold=1.0),
                                "$7$x", 0.0))
        fleet.on_status(aid, ApplianceStatus("online", http_url=f"http://{aid}"), time.time())
        reg.set_holdings(aid, [Holding(aid, "t1", "v1", True)])
    return reg


def _ranked(reg: RegistryView) -> list[str]:
    return reg.index().steer("10.1.2.3", "t1").appliance_ids


async def test_load_arrives_through_refresh_and_drain_at_once() -> None:
    reg = _registry()
    assert _ranked(reg) == ["a", "b"]
    reg.fleet.on_telemetry("a", Telemetry(1, 10.0, gauges={"load": 5.0}))
    assert _ranked(reg) == ["a", "b"]  # load alone does not rebuild on the request path
    await reg.refresh()
    decision = reg.index().steer("10.1.2.3", "t1")
    assert decision.appliance_ids == ["b"]
    assert {v.appliance_id: v.reason.value for v in decision.dropped} == {"a": "overloaded"}
    reg.put(replace(reg.appliances["b"], draining=True))
    assert _ranked(reg) == []  # a drain is decisive: the very next decision sees it


async def test_stale_versions_and_dead_appliances() -> None:
    reg = _registry()
    reg.set_title("t1", "v2", 100)  # a new version: the old copies no longer count
    assert _ranked(reg) == []
    reg.set_holdings("a", [Holding("a", "t1", "v2", True)])
    assert _ranked(reg) == ["a"]
    reg.fleet.on_status("a", ApplianceStatus("offline"), time.time() + 1)
    assert _ranked(reg) == []
