"""Fill planning: capacity, K copies, hysteresis, fill sources, offload, and hostile input."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from control.planner import (
    ApplianceSpec,
    FillPlan,
    Holding,
    PlannerConfig,
    SourcePlan,
    TitleSpec,
    live_titles,
    plan_fill,
)
from shared.errors import InvalidInput

GB = 1_000_000_000


def holdings_of(plan: FillPlan) -> dict[str, list[Holding]]:
    """What every appliance holds once the plan has been filled completely."""
    return {p.appliance_id: [Holding(x.title_id, x.version) for x in p.hold] for p in plan.appliances}


def copies(plan: FillPlan, site: str | None = None) -> Counter[str]:
    return Counter(x.title_id for p in plan.appliances if not p.skipped and (site is None or p.site == site)
                   for x in p.hold)


def simple_fleet(n: int = 3, capacity: int = 10 * GB, site: str = "s1", region: str = "isp-a") -> list[ApplianceSpec]:
    return [ApplianceSpec(f"{site}-a{i}", site, region, capacity) for i in range(n)]


def catalogue(n: int, size: int = GB) -> list[TitleSpec]:
    return [TitleSpec(f"t{i}", "v1", size) for i in range(n)]


def zipf(n: int) -> dict[str, float]:
    return {f"t{i}": 1000.0 / (i + 1) for i in range(n)}


def test_most_popular_titles_fill_the_site_with_k_copies_each() -> None:
    cfg = PlannerConfig(min_copies=2, extra_copy_weight=0.0, reserve_fraction=0.0)
    plan = plan_fill(simple_fleet(3, 4 * GB), catalogue(20), {"isp-a": zipf(20)}, {}, cfg)
    # 12 GB of disk, 2 copies per title of 1 GB: the top 6 titles.
    assert copies(plan) == {f"t{i}": 2 for i in range(6)}
    for p in plan.appliances:
        assert p.planned_bytes <= p.usable_bytes == 4 * GB
        assert set(p.add) == {x.title_id for x in p.hold}
        assert all(x.sources == (SourcePlan("origin"),) for x in p.hold)
    region = plan.regions[0]
    assert region.offload_now == 0.0
    expected = sum(1000 / (i + 1) for i in range(6)) / sum(1000 / (i + 1) for i in range(20))
    assert region.offload_planned == pytest.approx(expected)
    assert region.live_planned == 6 and region.live_now == 0
    assert plan.bytes_to_fill == 12 * GB and plan.bytes_to_delete == 0


def test_extra_copies_go_to_the_most_popular_titles() -> None:
    cfg = PlannerConfig(min_copies=1, extra_copy_weight=1.0, hysteresis=0.0, reserve_fraction=0.0)
    plan = plan_fill(simple_fleet(4, 5 * GB), catalogue(30), {"isp-a": zipf(30)}, {}, cfg)
    counts = copies(plan)
    ordered = [counts.get(f"t{i}", 0) for i in range(30)]
    assert ordered == sorted(ordered, reverse=True)
    assert ordered[0] == 4 and ordered[-1] == 0
    assert sum(ordered) == 20


def test_fill_sources_rank_peers_then_other_appliances_then_origin() -> None:
    fleet = [*simple_fleet(2, 10 * GB, "s1"), *simple_fleet(1, 10 * GB, "s2"),
             ApplianceSpec("far", "s3", "isp-b", 10 * GB), ApplianceSpec("down", "s1", "isp-a", 10 * GB, online=False)]
    held = {"s1-a0": [Holding("t0", "v1")], "s2-a0": [Holding("t0", "v1"), Holding("t1", "v1")],
            "far": [Holding("t1", "v1"), Holding("t2", "v1")], "down": [Holding("t2", "v1")]}
    cfg = PlannerConfig(min_copies=2, reserve_fraction=0.0)
    plan = plan_fill(fleet, catalogue(3), {"isp-a": {"t0": 10.0, "t1": 5.0, "t2": 1.0}}, held, cfg)
    a1 = {x.title_id: x for x in plan.for_appliance("s1-a1").hold}
    assert a1["t0"].sources == (SourcePlan("peer", "s1-a0"), SourcePlan("appliance", "s2-a0"), SourcePlan("origin"))
    assert a1["t1"].sources == (SourcePlan("appliance", "s2-a0"), SourcePlan("appliance", "far"), SourcePlan("origin"))
    # The offline holder of t2 is no source.
    assert a1["t2"].sources == (SourcePlan("appliance", "far"), SourcePlan("origin"))
    assert {x.title_id: x.sources for x in plan.for_appliance("s1-a0").hold}["t0"] == ()
    assert plan.for_appliance("down").skipped == "offline"
    assert plan.for_appliance("down").add == () and plan.for_appliance("down").remove == ()


def test_hysteresis_keeps_incumbents_against_marginal_challengers() -> None:
    fleet = simple_fleet(2, 2 * GB)
    cfg = PlannerConfig(min_copies=2, extra_copy_weight=0.0, hysteresis=0.1, reserve_fraction=0.0)
    held = {"s1-a0": [Holding("t0", "v1"), Holding("t1", "v1")], "s1-a1": [Holding("t0", "v1"), Holding("t1", "v1")]}
    slightly = plan_fill(fleet, catalogue(3), {"isp-a": {"t0": 100.0, "t1": 50.0, "t2": 54.0}}, held, cfg)
    assert set(copies(slightly)) == {"t0", "t1"} and slightly.bytes_to_fill == 0
    clearly = plan_fill(fleet, catalogue(3), {"isp-a": {"t0": 100.0, "t1": 50.0, "t2": 56.0}}, held, cfg)
    assert set(copies(clearly)) == {"t0", "t2"} and clearly.bytes_to_fill == 2 * GB
    assert clearly.for_appliance("s1-a0").remove == ("t1",) and clearly.bytes_to_delete == 2 * GB
    without = plan_fill(fleet, catalogue(3), {"isp-a": {"t0": 100.0, "t1": 50.0, "t2": 54.0}}, held,
                        PlannerConfig(min_copies=2, extra_copy_weight=0.0, hysteresis=0.0, reserve_fraction=0.0))
    assert set(copies(without)) == {"t0", "t2"}


def test_partial_copies_stay_put_and_new_versions_replace_old_ones() -> None:
    fleet = simple_fleet(2, 3 * GB)
    titles = [TitleSpec("t0", "v2", GB), TitleSpec("t1", "v1", GB)]
    held = {"s1-a0": [Holding("t0", "v1"), Holding("t1", "v1", complete=False)], "s1-a1": [Holding("gone", "v1")]}
    plan = plan_fill(fleet, titles, {"isp-a": {"t0": 9.0, "t1": 3.0}}, held, PlannerConfig(min_copies=2))
    a0 = plan.for_appliance("s1-a0")
    assert set(a0.add) == {"t0", "t1"} and a0.remove == ("t0",)
    assert {x.title_id: x.version for x in a0.hold} == {"t0": "v2", "t1": "v1"}
    assert plan.for_appliance("s1-a1").remove == ("gone",)


def test_draining_and_diskless_appliances_are_planned_around() -> None:
    fleet = [*simple_fleet(2, 2 * GB), ApplianceSpec("drain", "s1", "isp-a", 2 * GB, draining=True),
             ApplianceSpec("nodisk", "s1", "isp-a", 0)]
    plan = plan_fill(fleet, catalogue(4), {"isp-a": zipf(4)}, {"drain": [Holding("t3", "v1")]},
                     PlannerConfig(min_copies=3, extra_copy_weight=0.0, reserve_fraction=0.0))
    # Only two appliances can take content: K is clamped to 2 for this site, and region "live" needs 3.
    assert copies(plan) == {"t0": 2, "t1": 2}
    assert plan.for_appliance("drain").skipped == "draining"
    assert [x.title_id for x in plan.for_appliance("drain").hold] == ["t3"]
    assert plan.for_appliance("nodisk").skipped == "no disk"
    assert plan.regions[0].live_planned == 0


def test_unknown_titles_in_the_forecast_are_reported_not_planned() -> None:
    plan = plan_fill(simple_fleet(2), catalogue(2), {"isp-a": {"t0": 1.0, "nope": 99.0}}, {})
    assert plan.unknown_titles == ("nope",)
    assert set(copies(plan)) == {"t0"}


def test_a_new_appliance_takes_only_its_share() -> None:
    titles = catalogue(200, GB)
    demand = {"isp-a": zipf(200)}
    cfg = PlannerConfig(min_copies=1, extra_copy_weight=0.0, reserve_fraction=0.0)
    before = plan_fill(simple_fleet(4, 20 * GB), titles, demand, {}, cfg)
    after = plan_fill(simple_fleet(5, 20 * GB), titles, demand, holdings_of(before), cfg)
    moved_within_old = sum(len(p.add) for p in after.appliances if p.appliance_id != "s1-a4")
    assert moved_within_old == 0
    assert len(after.for_appliance("s1-a4").add) == 20


@st.composite
def fleets(draw: st.DrawFn) -> tuple[list[ApplianceSpec], list[TitleSpec], dict[str, dict[str, float]], PlannerConfig]:
    appliances = []
    for i in range(draw(st.integers(1, 8))):
        site = draw(st.sampled_from(["s1", "s2", "s3"]))
        region = {"s1": "r1", "s2": "r1", "s3": "r2"}[site]
        appliances.append(ApplianceSpec(f"a{i}", site, region, draw(st.integers(0, 40)) * 100,
                                        online=draw(st.booleans()) or draw(st.booleans()),
                                        draining=draw(st.integers(0, 5)) == 0))
    titles = [TitleSpec(f"t{i}", "v1", draw(st.integers(1, 900))) for i in range(draw(st.integers(1, 40)))]
    demand = {r: {t.title_id: draw(st.floats(0, 1000)) for t in titles} for r in ("r1", "r2")}
    cfg = PlannerConfig(min_copies=draw(st.integers(1, 3)), extra_copy_weight=draw(st.sampled_from([0.0, 0.25, 1.0])),
                        hysteresis=0.1, reserve_fraction=draw(st.sampled_from([0.0, 0.05])))
    return appliances, titles, demand, cfg


def _check_invariants(plan: FillPlan, appliances: list[ApplianceSpec], cfg: PlannerConfig) -> None:
    active = [a for a in appliances if a.online and not a.draining and a.capacity_bytes > 0]
    per_site = Counter(a.site for a in active)
    for p in plan.appliances:
        if not p.skipped:
            assert p.planned_bytes <= p.usable_bytes
            assert len({x.title_id for x in p.hold}) == len(p.hold)
    for site, members in per_site.items():
        for title, count in copies(plan, site).items():
            assert count >= min(cfg.min_copies, members), (site, title, count)


@settings(max_examples=120, deadline=None)
@given(fleets())
def test_capacity_is_never_exceeded_and_planned_titles_have_k_copies(
        case: tuple[list[ApplianceSpec], list[TitleSpec], dict[str, dict[str, float]], PlannerConfig]) -> None:
    appliances, titles, demand, cfg = case
    plan = plan_fill(appliances, titles, demand, {}, cfg)
    _check_invariants(plan, appliances, cfg)


@settings(max_examples=120, deadline=None)
@given(fleets(), st.data())
def test_small_demand_changes_move_few_bytes(
        case: tuple[list[ApplianceSpec], list[TitleSpec], dict[str, dict[str, float]], PlannerConfig],
        data: st.DataObject) -> None:
    appliances, titles, demand, cfg = case
    first = plan_fill(appliances, titles, demand, {}, cfg)
    # Every forecast moves by up to +-4 %, less than the 10 % hysteresis margin.
    nudged: Mapping[str, dict[str, float]] = {
        r: {t: v * data.draw(st.floats(0.96, 1.04)) for t, v in views.items()} for r, views in demand.items()}
    second = plan_fill(appliances, titles, nudged, holdings_of(first), cfg)
    _check_invariants(second, appliances, cfg)
    planned = sum(p.planned_bytes for p in first.appliances if not p.skipped)
    assert second.bytes_to_fill <= 0.05 * planned


def test_large_demand_changes_do_move_content() -> None:
    fleet = simple_fleet(3, 5 * GB)
    cfg = PlannerConfig(min_copies=2, reserve_fraction=0.0)
    first = plan_fill(fleet, catalogue(40), {"isp-a": zipf(40)}, {}, cfg)
    flipped = {f"t{i}": 1000.0 / (40 - i) for i in range(40)}
    second = plan_fill(fleet, catalogue(40), {"isp-a": flipped}, holdings_of(first), cfg)
    assert second.bytes_to_fill > 0.5 * sum(p.planned_bytes for p in first.appliances)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: ApplianceSpec("a", "s", "r", -1), "capacity"),
        (lambda: ApplianceSpec("a/b", "s", "r", 1), "appliance id"),
        (lambda: ApplianceSpec("a", "s", "r#", 1), "region"),
        (lambda: TitleSpec("t", "v1", 0), "size"),
        (lambda: TitleSpec("t", "../v1", 10), "version"),
        (lambda: TitleSpec("t", "v1", 1.5), "size"),  # type: ignore[arg-type]
        (lambda: PlannerConfig(min_copies=0), "min_copies"),
        (lambda: PlannerConfig(hysteresis=float("nan")), "hysteresis"),
        (lambda: PlannerConfig(reserve_fraction=1.0), "reserve_fraction"),
        (lambda: plan_fill([ApplianceSpec("a", "s", "r", 1)] * 2, [], {}, {}), "twice"),
        (lambda: plan_fill([ApplianceSpec("a", "s", "r1", 1), ApplianceSpec("b", "s", "r2", 1)], [], {}, {}),
         "two regions"),
        (lambda: plan_fill([], [TitleSpec("t", "v", 1)] * 2, {}, {}), "twice"),
        (lambda: plan_fill([], [], {"r": {"t": -1.0}}, {}), "forecast"),
        (lambda: plan_fill([], [], {"r": {"t": float("inf")}}, {}), "forecast"),
        (lambda: plan_fill([], [], {"r": {"t": "many"}}, {}), "forecast"),  # type: ignore[dict-item]
        (lambda: plan_fill([("a", "s", "r", 1)], [], {}, {}), "ApplianceSpec"),  # type: ignore[list-item]
        (lambda: plan_fill([ApplianceSpec(f"a{i}", "s", "r", 1) for i in range(100_001)], [], {}, {}), "at most"),
    ],
)
def test_hostile_input_gives_typed_errors(call: object, message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        call()  # type: ignore[operator]


def test_live_titles_need_k_complete_current_copies_on_serving_appliances() -> None:
    fleet = [*simple_fleet(2, GB, "s1", "isp-a"), ApplianceSpec("b1", "s2", "isp-a", GB),
             ApplianceSpec("off", "s2", "isp-a", GB, online=False), ApplianceSpec("c1", "s3", "isp-c", GB)]
    held = {"s1-a0": [Holding("t0", "v1"), Holding("t1", "v1"), Holding("t2", "v0")],
            "b1": [Holding("t0", "v1"), Holding("t1", "v1", complete=False), Holding("t2", "v0")],
            "off": [Holding("t1", "v1")], "c1": [Holding("t0", "v1")]}
    live = live_titles(fleet, catalogue(3), held, 2)
    assert live == {"isp-a": frozenset({"t0"}), "isp-c": frozenset()}
