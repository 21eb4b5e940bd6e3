"""The fast subset of the control-plane-down scenario (``bench/faults.py`` runs the long one): the edge serves
its last desired state and model, /v1/home goes stale, and everything resynchronises on return."""

from __future__ import annotations

from pathlib import Path

from tests.faults.scenario_control_down import SCENARIO


def test_edges_ride_out_a_control_plane_outage_and_resynchronise(tmp_path: Path) -> None:
    result = SCENARIO.run(SCENARIO.fast_trials, 4, tmp_path)
    assert result.ok, "\n".join(result.failures[:10]) + f"\n{result.detail}"
    d = result.detail
    assert d["outages"] == SCENARIO.fast_trials and d["content_serves"] > 0
    assert d["home_stale"] + d["edge_restarts"] >= SCENARIO.fast_trials
    assert d["drains_applied"] == SCENARIO.fast_trials
