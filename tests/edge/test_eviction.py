"""Eviction: the plan first, then popularity-aware recency; never what the plan holds."""

from __future__ import annotations

from edge.eviction import HeldSet, choose_evictions


def h(title: str, size: int, hits: int = 0, last: float = 0.0, complete: bool = True) -> HeldSet:
    return HeldSet((title, "v1"), size, hits, last, complete)


def test_nothing_evicted_when_it_fits() -> None:
    assert choose_evictions([h("a", 10)], planned=set(), capacity=100, need=90) == []


def test_planned_sets_are_never_evicted() -> None:
    held = [h("a", 50), h("b", 40)]
    assert choose_evictions(held, planned={("a", "v1"), ("b", "v1")}, capacity=100, need=20) is None
    assert choose_evictions(held, planned={("a", "v1")}, capacity=100, need=20) == [("b", "v1")]


def test_partial_fills_go_first_then_least_valuable() -> None:
    held = [h("popular-old", 30, hits=1000, last=0.0), h("touched-once-recently", 30, hits=1, last=3000.0),
            h("abandoned", 30, complete=False, last=9999.0), h("cold", 30, hits=0, last=100.0)]
    order = choose_evictions(held, planned=set(), capacity=120, need=120, half_life_s=3600)
    assert order == [("abandoned", "v1"), ("cold", "v1"), ("touched-once-recently", "v1"), ("popular-old", "v1")]
    # stops as soon as the need is met
    assert choose_evictions(held, planned=set(), capacity=120, need=40) == [("abandoned", "v1"), ("cold", "v1")]


def test_recency_breaks_ties_in_popularity() -> None:
    held = [h("new", 10, hits=5, last=500.0), h("old", 10, hits=5, last=100.0)]
    assert choose_evictions(held, planned=set(), capacity=20, need=10) == [("old", "v1")]


def test_superseded_versions_go_before_the_version_that_replaced_them_however_popular() -> None:
    old = HeldSet(("ta", "v1"), 10, 1000, 100.0, True, superseded=True)
    new = HeldSet(("ta", "v2"), 10, 1, 200.0, True)
    cold = HeldSet(("tb", "v1"), 10, 0, 0.0, True)
    assert choose_evictions([new, old, cold], planned=set(), capacity=30, need=10) == [("ta", "v1")]
    assert choose_evictions([new, old, cold], planned=set(), capacity=30, need=30) == [
        ("ta", "v1"), ("tb", "v1"), ("ta", "v2")]
