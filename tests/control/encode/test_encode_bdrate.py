"""BD-rate (pure): known shifts give known answers, nonsense gives a typed error."""

from __future__ import annotations

import pytest

from control.encode.bdrate import BDRateError, bd_rate

REF = [(200_000, 32.0), (400_000, 35.0), (800_000, 37.5), (1_600_000, 39.5)]


def test_encode_bdrate_of_identical_curves_is_zero() -> None:
    assert abs(bd_rate(REF, REF)) < 1e-9


def test_encode_bdrate_of_a_uniform_saving() -> None:
    cheaper = [(r * 0.8, q) for r, q in REF]
    assert bd_rate(REF, cheaper) == pytest.approx(-20.0, abs=1e-6)
    assert bd_rate(cheaper, REF) == pytest.approx(25.0, abs=1e-6)


def test_encode_bdrate_refuses_disjoint_or_degenerate_curves() -> None:
    with pytest.raises(BDRateError):
        bd_rate(REF, [(100, 50.0), (200, 51.0)])
    with pytest.raises(BDRateError):
        bd_rate(REF, [(100, 33.0)])
    with pytest.raises(BDRateError):
        bd_rate(REF, [(100, 33.0), (200, 33.0)])
