"""The fast subset of the disk-full scenario (``bench/faults.py`` runs the long one): fills stop with a clear
status before or during a fill, nothing partial is visible, serving goes on, fills resume with room."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.faults.scenario_disk_full import SCENARIO


def test_a_full_disk_stops_fills_clearly_and_serving_goes_on(tmp_path: Path) -> None:
    result = SCENARIO.run(SCENARIO.fast_trials, 2, tmp_path)
    if "skipped" in result.detail:
        pytest.skip(result.detail["skipped"])
    assert result.ok, "\n".join(result.failures[:10]) + f"\n{result.detail}"
    d = result.detail
    assert d["disk_full_reported"] >= 1 and d["resumed"] == d["disk_full_reported"]
    assert d["keeper_serves"] > 0
