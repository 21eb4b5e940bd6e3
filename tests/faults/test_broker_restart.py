"""The fast subset of the broker-restart scenario (``bench/faults.py`` runs the long one): the edge keeps
serving, every telemetry sample arrives exactly once, a drain issued during an outage reaches the edge once."""

from __future__ import annotations

from pathlib import Path

from tests.faults.scenario_broker_restart import SCENARIO


def test_broker_restarts_lose_and_duplicate_nothing(tmp_path: Path) -> None:
    result = SCENARIO.run(SCENARIO.fast_trials, 7, tmp_path)
    assert result.ok, "\n".join(result.failures[:10]) + f"\n{result.detail}"
    d = result.detail
    assert d["outages"] == SCENARIO.fast_trials and d["samples"] > 10
    assert d["lost_samples"] == 0 and d["duplicate_samples"] == 0
    assert d["commands_issued"] == d["commands_applied"] == SCENARIO.fast_trials
