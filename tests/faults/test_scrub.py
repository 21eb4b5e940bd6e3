"""The fast subset of the scrub scenario (``bench/faults.py`` runs the long one): damaged cached files are
found, never served once found, and filled again."""

from __future__ import annotations

from pathlib import Path

from tests.faults.scenario_scrub import SCENARIO


def test_damaged_cached_files_are_found_and_filled_again(tmp_path: Path) -> None:
    result = SCENARIO.run(SCENARIO.fast_trials, 3, tmp_path)
    assert result.ok, "\n".join(result.failures[:10]) + f"\n{result.detail}"
    d = result.detail
    assert d["damaged"] == d["found"] == d["refilled"] == SCENARIO.fast_trials
    assert d["bad_serves"] == 0 and d["checked_serves"] > 0
