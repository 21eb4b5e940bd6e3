"""The fast subset of the clock-skew scenario (``bench/faults.py`` runs the long one): with the edge's clock
off by up to twice the leeway, tokens inside the leeway are accepted and the rest refused with 403."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.faults.scenario_clock_skew import SCENARIO


def test_tokens_hold_within_the_leeway_whatever_the_edges_clock(tmp_path: Path) -> None:
    result = SCENARIO.run(SCENARIO.fast_trials, 5, tmp_path)
    if "skipped" in result.detail:
        pytest.skip(result.detail["skipped"])
    assert result.ok, "\n".join(result.failures[:10]) + f"\n{result.detail}"
    d = result.detail
    assert d["accepted"] > 0 and d["refused"] > 0 and d["server_errors"] == 0
    assert min(d["skews"]) < 0 < max(d["skews"])
