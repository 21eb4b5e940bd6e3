"""The fast subset of the edge-kill-during-model-swap scenario (``bench/faults.py`` runs the long one)."""

from __future__ import annotations

from pathlib import Path

from tests.faults.scenario_edge_kill_model import SCENARIO


def test_edge_killed_during_model_swaps_always_runs_a_whole_verified_model(tmp_path: Path) -> None:
    result = SCENARIO.run(SCENARIO.fast_trials, 1, tmp_path)
    assert result.ok, "\n".join(result.failures[:20]) + f"\n{result.detail}"
    assert result.detail["kills"] >= SCENARIO.fast_trials
    assert result.detail["swaps_completed"] >= 1
