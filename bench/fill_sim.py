"""Fill simulation: 30 days of a simulated fleet driven by the real popularity model and planner.

The fleet has regions (one ISP network each) with a few sites of appliances with disk budgets; the
catalogue has a Zipf-like popularity with regional taste, daily drift, and new releases every day
(announced a day ahead, with a random hit factor and a fading novelty peak).  Each simulated night:

* the **planner** forecasts with :class:`control.popularity.DemandModel` (what was observed so far,
  plus the new-release prior) and plans with :func:`control.planner.plan_fill` from what the fleet
  holds; the fill completes during the night;
* the **oracle** runs the same planner on the day's true demand (no hysteresis), from its own
  holdings -- the best this planner could do with perfect foresight.

Then the day's demand is drawn, offload (share of bytes servable inside the client's region) is
scored for both, and the observed views are fed to the model.  Printed: mean offload of both, the
ratio, and bytes moved per day.

    .venv/bin/python bench/fill_sim.py [--days 30] [--titles 3000] [--seed 7]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import numpy.typing as npt

from control.planner import ApplianceSpec, FillPlan, Holding, PlannerConfig, TitleSpec, plan_fill
from control.popularity import DemandModel, DemandSample, PopularityConfig

DAY = 86_400.0
GB = 1_000_000_000


class World:
    """The ground truth the planner never sees directly."""

    def __init__(self, rng: np.random.Generator, titles: int, regions: int, releases_per_day: int) -> None:
        self.rng = rng
        self.regions = [f"isp-{r}" for r in range(regions)]
        self.releases_per_day = releases_per_day
        self.size: list[int] = []
        self.base: list[float] = []  # long-run appeal
        self.taste: list[npt.NDArray[np.float64]] = []  # per-region multiplier
        self.hit: list[float] = []  # novelty peak multiplier
        self.released: list[float] = []
        self.views_per_day = 200_000.0
        for i in range(titles):
            self._add_title(released=-DAY * float(rng.uniform(30, 3000)), rank=i + 1)

    def _add_title(self, released: float, rank: int | None = None) -> None:
        film = self.rng.random() < 0.4
        self.size.append(int(GB * (self.rng.lognormal(1.4, 0.3) if film else self.rng.lognormal(0.0, 0.3))))
        if rank is None:  # a new release: appeal drawn like a mid-catalogue title
            rank = int(self.rng.integers(50, 3000))
        self.base.append(1.0 / rank**0.9)
        self.taste.append(self.rng.lognormal(0.0, 0.5, len(self.regions)))
        self.hit.append(float(self.rng.lognormal(2.0, 1.0)) if released > -DAY * 60 else 0.0)
        self.released.append(released)

    def new_day(self, day: int) -> None:
        """Tastes drift a little; tomorrow's releases are announced."""
        self.base = list(np.array(self.base) * self.rng.lognormal(0.0, 0.08, len(self.base)))
        for _ in range(self.releases_per_day):
            self._add_title(released=(day + 1) * DAY)

    def expected(self, day: int) -> npt.NDArray[np.float64]:
        """Expected views per region (rows) and title (columns) on ``day``."""
        now = day * DAY
        age = (now - np.array(self.released)) / DAY
        novelty = np.where(age >= 0, 1.0 + np.array(self.hit) * 0.5 ** (np.maximum(age, 0) / 5.0), 0.0)
        appeal = np.array(self.base) * novelty
        weights = appeal[None, :] * np.array(self.taste).T
        return np.asarray(self.views_per_day * weights / weights.sum(axis=1, keepdims=True), dtype=np.float64)

    def draw(self, day: int) -> npt.NDArray[np.float64]:
        return self.rng.poisson(self.expected(day)).astype(float)


def build_fleet(rng: np.random.Generator, regions: list[str], sites: int, per_site: int,
                disk_gb: float) -> list[ApplianceSpec]:
    fleet = []
    for region in regions:
        for s in range(sites):
            for a in range(per_site):
                disk = int(GB * disk_gb * rng.uniform(0.6, 1.4))
                fleet.append(ApplianceSpec(f"{region}-s{s}-a{a}", f"{region}-s{s}", region, disk))
    return fleet


def offload(plan: FillPlan, fleet: list[ApplianceSpec], world: World, views: npt.NDArray[np.float64]) -> float:
    """Share of the day's bytes that an appliance inside the viewer's region could serve."""
    region_of = {a.appliance_id: a.region for a in fleet}
    held: dict[str, set[int]] = {r: set() for r in world.regions}
    for p in plan.appliances:
        held[region_of[p.appliance_id]].update(int(x.title_id[1:]) for x in p.hold)
    size = np.array(world.size, dtype=float)[: views.shape[1]]
    total = served = 0.0
    for r, region in enumerate(world.regions):
        bytes_ = views[r] * size
        total += bytes_.sum()
        served += bytes_[sorted(held[region])].sum() if held[region] else 0.0
    return served / total


def holdings(plan: FillPlan) -> dict[str, list[Holding]]:
    return {p.appliance_id: [Holding(x.title_id, x.version) for x in p.hold] for p in plan.appliances}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=7)
    parser.add_argument("--titles", type=int, default=3000)
    parser.add_argument("--regions", type=int, default=4)
    parser.add_argument("--sites", type=int, default=2)
    parser.add_argument("--per-site", type=int, default=4)
    parser.add_argument("--disk-gb", type=float, default=1500.0)
    parser.add_argument("--releases-per-day", type=int, default=15)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--half-life-days", type=float, default=2.0)
    parser.add_argument("--hysteresis", type=float, default=0.1)
    parser.add_argument("--reference-rank", type=int, default=20)
    parser.add_argument("--release-boost", type=float, default=1.0)
    parser.add_argument("--release-half-life-days", type=float, default=1.0)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    world = World(rng, args.titles, args.regions, args.releases_per_day)
    fleet = build_fleet(rng, world.regions, args.sites, args.per_site, args.disk_gb)
    config = PlannerConfig(min_copies=2, extra_copy_weight=0.25, hysteresis=args.hysteresis)
    oracle_config = PlannerConfig(min_copies=2, extra_copy_weight=0.25, hysteresis=0.0)
    model = DemandModel(PopularityConfig(half_life_s=args.half_life_days * DAY, release_boost=args.release_boost,
                                         reference_rank=args.reference_rank,
                                         release_half_life_s=args.release_half_life_days * DAY))

    def catalogue() -> list[TitleSpec]:
        return [TitleSpec(f"t{i}", "v1", s) for i, s in enumerate(world.size)]

    def observe(day: int, views: npt.NDArray[np.float64]) -> None:
        samples = [DemandSample(region, f"t{i}", float(v), day * DAY + DAY / 2)
                   for r, region in enumerate(world.regions) for i, v in enumerate(views[r]) if v > 0]
        model.observe(samples, now=(day + 1) * DAY)

    for day in range(-args.warmup, 0):
        world.new_day(day)
        observe(day, world.draw(day))

    held: dict[str, list[Holding]] = {}
    oracle_held: dict[str, list[Holding]] = {}
    rows = []
    started = time.perf_counter()
    for day in range(args.days):
        world.new_day(day)
        titles = catalogue()
        releases = {f"t{i}": r for i, r in enumerate(world.released) if r > (day - 30) * DAY}
        forecast = {region: model.forecast(region, day * DAY, releases) for region in world.regions}
        plan = plan_fill(fleet, titles, forecast, held, config)
        expected = world.expected(day)
        views = world.draw(day)
        truth = {region: {f"t{i}": float(v) for i, v in enumerate(expected[r]) if v > 0}
                 for r, region in enumerate(world.regions)}
        oracle = plan_fill(fleet, titles, truth, oracle_held, oracle_config)
        drawn = {region: {f"t{i}": float(v) for i, v in enumerate(views[r]) if v > 0}
                 for r, region in enumerate(world.regions)}
        clairvoyant = plan_fill(fleet, titles, drawn, {}, oracle_config)
        rows.append((offload(plan, fleet, world, views), offload(oracle, fleet, world, views),
                     plan.bytes_to_fill, oracle.bytes_to_fill, sum(p.planned_bytes for p in plan.appliances),
                     offload(clairvoyant, fleet, world, views)))
        held, oracle_held = holdings(plan), holdings(oracle)
        observe(day, views)

    elapsed = time.perf_counter() - started
    disk = sum(a.capacity_bytes for a in fleet)
    planner_off = statistics.mean(r[0] for r in rows)
    oracle_off = statistics.mean(r[1] for r in rows)
    steady = rows[1:]  # day 0 fills from empty disks
    print(f"fleet: {len(fleet)} appliances in {args.regions} regions, {disk / 1e12:.1f} TB of disk; catalogue "
          f"{args.titles} titles + {args.releases_per_day}/day, {sum(world.size) / 1e12:.1f} TB at the end")
    print(f"simulated {args.days} days in {elapsed:.1f} s ({elapsed / args.days / 3:.2f} s per plan, 3 plans a day)")
    print(f"offload: planner {planner_off:.2%}, oracle {oracle_off:.2%} -> ratio {planner_off / oracle_off:.4f} "
          f"(gap {100 * (oracle_off - planner_off):.2f} points; goal: within 2 %)")
    clair = statistics.mean(r[5] for r in rows)
    print(f"clairvoyant (plans on the day's realised views, noise included): {clair:.2%} -> ratio "
          f"{planner_off / clair:.4f}")
    print(f"worst day: planner {min(r[0] for r in rows):.2%}, ratio {min(r[0] / r[1] for r in rows):.4f}")
    moved = statistics.mean(r[2] for r in steady)
    oracle_moved = statistics.mean(r[3] for r in steady)
    planned = statistics.mean(r[4] for r in steady)
    print(f"bytes moved per day after day 0: planner {moved / 1e12:.2f} TB ({moved / planned:.1%} of planned bytes), "
          f"oracle {oracle_moved / 1e12:.2f} TB -> ratio {moved / max(oracle_moved, 1):.2f}")


if __name__ == "__main__":
    main()
