"""Decayed per-region demand, the new-release prior, bounded memory and hostile samples."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from control.popularity import DemandModel, DemandSample, PopularityConfig
from shared.errors import InvalidInput

DAY = 86_400.0


def test_bytes_become_views_and_decay_by_half_per_half_life() -> None:
    model = DemandModel(PopularityConfig(half_life_s=DAY))
    model.observe([DemandSample.from_bytes("isp-a", "t1", 3_000, 1_000, at=0.0)], now=0.0)
    assert model.observed("isp-a", 0.0) == {"t1": pytest.approx(3.0)}
    assert model.observed("isp-a", DAY)["t1"] == pytest.approx(1.5)
    assert model.observed("isp-a", 3 * DAY)["t1"] == pytest.approx(0.375)
    assert model.observed("isp-b", 0.0) == {}
    # Asking about the past never inflates a score.
    assert model.observed("isp-a", -DAY)["t1"] == pytest.approx(3.0)


def test_regions_are_independent() -> None:
    model = DemandModel()
    model.observe([DemandSample("isp-a", "t1", 1.0, 0.0), DemandSample("isp-b", "t2", 2.0, 0.0)], now=0.0)
    assert model.regions() == ["isp-a", "isp-b"]
    assert model.observed("isp-a", 0.0) == {"t1": 1.0}
    assert model.observed("isp-b", 0.0) == {"t2": 2.0}
    assert len(model) == 2


@settings(max_examples=80, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["t1", "t2", "t3"]), st.floats(0, 100), st.floats(0, 10 * DAY)),
                min_size=1, max_size=30), st.randoms(use_true_random=False))
def test_arrival_order_does_not_change_the_result(rows: list[tuple[str, float, float]], rnd: object) -> None:
    samples = [DemandSample("r", t, v, at) for t, v, at in rows]
    in_order = DemandModel()
    in_order.observe(sorted(samples, key=lambda s: s.at), now=10 * DAY)
    shuffled = list(samples)
    rnd.shuffle(shuffled)  # type: ignore[attr-defined]
    one_by_one = DemandModel()
    for sample in shuffled:
        one_by_one.observe([sample], now=10 * DAY)
    a, b = in_order.observed("r", 10 * DAY), one_by_one.observed("r", 10 * DAY)
    assert a.keys() == b.keys()
    for title in a:
        assert a[title] == pytest.approx(b[title], rel=1e-9, abs=1e-12)


def test_new_release_prior_scales_from_the_reference_title_and_fades() -> None:
    model = DemandModel(PopularityConfig(reference_rank=2, release_boost=0.5, release_half_life_s=DAY,
                                         prefill_s=DAY / 2))
    model.observe([DemandSample("r", "hit", 100.0, 0.0), DemandSample("r", "second", 40.0, 0.0),
                   DemandSample("r", "tail", 1.0, 0.0)], now=0.0)
    releases = {"new": 2 * DAY, "old": -30 * DAY}
    assert "new" not in model.forecast("r", 0.0, releases)  # more than prefill_s before release
    at = 2 * DAY - DAY / 4
    before = model.forecast("r", at, releases)
    reference = model.observed("r", at)["second"]
    assert before["new"] == pytest.approx(0.5 * reference)
    a_day_later = model.observed("r", 3 * DAY)["second"]
    assert model.forecast("r", 3 * DAY, releases)["new"] == pytest.approx(0.5 * a_day_later / 2)
    assert model.forecast("r", 3 * DAY, releases)["old"] < 1e-6
    # Observed demand replaces the prior once it is larger.
    model.observe([DemandSample("r", "new", 500.0, 2 * DAY)], now=2 * DAY)
    assert model.forecast("r", 2 * DAY, releases)["new"] == pytest.approx(500.0)
    assert DemandModel(PopularityConfig(release_boost=0)).forecast("r", 0.0, releases) == {}


def test_memory_is_bounded_and_the_faintest_are_forgotten() -> None:
    model = DemandModel(PopularityConfig(max_entries=100))
    model.observe([DemandSample("r", f"t{i}", float(i), 0.0) for i in range(150)], now=0.0)
    assert len(model) == 90
    kept = model.observed("r", 0.0)
    assert set(kept) == {f"t{i}" for i in range(60, 150)}


def test_a_batch_with_one_bad_sample_changes_nothing() -> None:
    model = DemandModel()
    good = DemandSample("r", "t1", 1.0, 0.0)
    future = DemandSample("r", "t2", 1.0, 10_000.0)
    with pytest.raises(InvalidInput, match="future"):
        model.observe([good, future], now=0.0)
    with pytest.raises(InvalidInput, match="DemandSample"):
        model.observe([good, ("r", "t1", 1.0, 0.0)], now=0.0)  # type: ignore[list-item]
    assert len(model) == 0 and model.observed("r", 0.0) == {}


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: DemandSample("r", "t", -1.0, 0.0), "views"),
        (lambda: DemandSample("r", "t", float("nan"), 0.0), "views"),
        (lambda: DemandSample("r", "t", float("inf"), 0.0), "views"),
        (lambda: DemandSample("r", "t", 1.0, float("nan")), "time"),
        (lambda: DemandSample("r/x", "t", 1.0, 0.0), "region"),
        (lambda: DemandSample("r", "#", 1.0, 0.0), "title id"),
        (lambda: DemandSample("r", "t", True, 0.0), "views"),
        (lambda: DemandSample.from_bytes("r", "t", 10, 0, 0.0), "size"),
        (lambda: DemandSample.from_bytes("r", "t", -5, 10, 0.0), "bytes"),
        (lambda: DemandSample.from_bytes("r", "t", 1.5, 10, 0.0), "bytes"),  # type: ignore[arg-type]
        (lambda: PopularityConfig(half_life_s=0), "half_life_s"),
        (lambda: PopularityConfig(release_boost=-1), "release_boost"),
        (lambda: PopularityConfig(reference_rank=0), "reference_rank"),
        (lambda: PopularityConfig(max_entries=0), "max_entries"),
        (lambda: DemandModel().observe([], now=float("nan")), "now"),
        (lambda: DemandModel().forecast("r", float("inf")), "forecast"),
    ],
)
def test_hostile_values_are_typed_errors(build: object, message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        build()  # type: ignore[operator]
