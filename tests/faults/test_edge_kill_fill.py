"""The fast subset of the edge-kill-during-fill scenario (``bench/faults.py`` runs the long one)."""

from __future__ import annotations

from pathlib import Path

from tests.faults.scenario_edge_kill_fill import SCENARIO


def test_edge_killed_during_fills_never_serves_a_bad_or_stale_file(tmp_path: Path) -> None:
    result = SCENARIO.run(SCENARIO.fast_trials, 1, tmp_path)
    assert result.ok, "\n".join(result.failures[:20]) + f"\n{result.detail}"
    assert result.detail["kills"] == SCENARIO.fast_trials
    assert result.detail["verified_serves"] > 0 and result.detail["plans_done"] >= 1
