"""The fleet's view of appliance statuses: ordered within a run by time, across runs by arrival."""

from __future__ import annotations

from control.fleet import Fleet
from shared.messages import ApplianceStatus


def test_a_late_status_of_the_same_run_is_ignored() -> None:
    fleet = Fleet(30.0)
    fleet.on_status("a", ApplianceStatus("draining", started_at=100.0), 120.0, now=1000.0)
    fleet.on_status("a", ApplianceStatus("online", started_at=100.0), 110.0, now=1001.0)  # older, late
    live = fleet.get("a")
    assert live is not None and live.state == "draining"


def test_a_restarted_appliance_whose_clock_went_back_is_seen_online() -> None:
    """Regression: run 1 with its clock 50 s ahead stops (offline at its 1050); run 2 starts with the clock
    right (online at 1010).  The second status was taken for a late one and the appliance stayed offline
    until its clock passed the first run's (found by tests/faults/scenario_clock_skew.py)."""
    fleet = Fleet(30.0)
    fleet.on_status("a", ApplianceStatus("online", http_url="http://a", started_at=1040.0), 1041.0, now=992.0)
    fleet.on_status("a", ApplianceStatus("offline", http_url="http://a", started_at=1040.0), 1050.0, now=1000.0)
    fleet.on_status("a", ApplianceStatus("online", http_url="http://a", started_at=1009.0), 1010.0, now=1010.0)
    live = fleet.get("a")
    assert live is not None and live.state == "online" and live.online(1011.0, 30.0)
