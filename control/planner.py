"""Fill planning: which file sets every appliance should hold, where to fetch them, and what that buys.

Pure: the control plane hands in the fleet, the catalogue, the popularity forecast per region and what
every appliance holds now; it gets back one desired state per appliance (to publish retained), the
diff against today, and the expected offload per region (the share of forecast bytes that appliances
inside the region can serve once the plan is filled).

How a site is planned (greedy over value per byte, the usual knapsack heuristic):

* Serving a title in a site is worth its forecast bytes (views x size) and costs ``K`` copies, because
  a title is only live with ``K`` complete copies; so the first item per title is a K-copy bundle with
  value density ``views / K``.  Each further copy ``n`` spreads load and is worth ``beta * views / n``
  of density, which makes copy counts grow with popularity.
* Copies are placed by rendezvous hashing of the title over the site's appliances (weighted by disk),
  so adding or losing an appliance moves only its share; an appliance without room is skipped, and a
  bundle that cannot find ``K`` appliances with room is not placed at all.  Capacity is therefore
  never exceeded by construction.
* Hysteresis: anything already held gets its density multiplied by ``1 + hysteresis`` and is placed
  back on the appliances that hold it.  A challenger must beat an incumbent by more than that margin
  to displace it, so forecast noise smaller than the margin moves no bytes at all.
"""

from __future__ import annotations

import heapq
import math
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from shared import hashring
from shared.errors import InvalidInput
from shared.ids import check_id

MAX_APPLIANCES = 100_000
MAX_TITLES = 1_000_000

SourceKind = Literal["peer", "appliance", "origin"]


def _finite(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


@dataclass(frozen=True)
class PlannerConfig:
    #: Complete copies a title needs in a region to be live (and the copies placed per site when it fits).
    min_copies: int = 2
    #: Weight of a copy beyond ``min_copies`` relative to serving a title at all (0: no extra copies).
    extra_copy_weight: float = 0.25
    #: Cap on copies of one title per site (0: one per appliance at most).
    max_copies: int = 0
    #: Incumbent advantage: held content is displaced only by content worth this fraction more.
    hysteresis: float = 0.1
    #: Share of each appliance's disk kept free for manifests, partial files and slack.
    reserve_fraction: float = 0.05
    #: Fill sources listed per file set before the origin.
    max_sources: int = 3

    def __post_init__(self) -> None:
        if not (_count(self.min_copies) and self.min_copies >= 1):
            raise InvalidInput(f"min_copies must be an integer >= 1, not {self.min_copies!r}")
        if not _count(self.max_copies) or not _count(self.max_sources):
            raise InvalidInput("max_copies and max_sources must be integers >= 0")
        for name in ("extra_copy_weight", "hysteresis"):
            if not (_finite(getattr(self, name)) and getattr(self, name) >= 0):
                raise InvalidInput(f"{name} must be a finite number >= 0, not {getattr(self, name)!r}")
        if not (_finite(self.reserve_fraction) and 0 <= self.reserve_fraction < 1):
            raise InvalidInput(f"reserve_fraction must be in [0, 1), not {self.reserve_fraction!r}")


@dataclass(frozen=True)
class TitleSpec:
    """The current file set of a title: only this version counts as held."""

    title_id: str
    version: str
    size: int

    def __post_init__(self) -> None:
        check_id(self.title_id, "title id")
        check_id(self.version, "file set version")
        if not (_count(self.size) and self.size > 0):
            raise InvalidInput(f"title {self.title_id}: size {self.size!r} must be an integer > 0")


@dataclass(frozen=True)
class ApplianceSpec:
    appliance_id: str
    site: str
    region: str
    capacity_bytes: int
    online: bool = True
    draining: bool = False

    def __post_init__(self) -> None:
        check_id(self.appliance_id, "appliance id")
        check_id(self.site, "site")
        check_id(self.region, "region")
        if not _count(self.capacity_bytes):
            raise InvalidInput(f"appliance {self.appliance_id}: capacity {self.capacity_bytes!r} must be an int >= 0")


@dataclass(frozen=True)
class Holding:
    """A file set on an appliance's disk, complete or still filling."""

    title_id: str
    version: str
    complete: bool = True


@dataclass(frozen=True)
class SourcePlan:
    kind: SourceKind
    appliance_id: str | None = None


@dataclass(frozen=True)
class Assignment:
    title_id: str
    version: str
    size: int
    #: Ranked fill sources (empty when the appliance already holds a complete copy).
    sources: tuple[SourcePlan, ...] = ()


@dataclass(frozen=True)
class AppliancePlan:
    appliance_id: str
    site: str
    usable_bytes: int
    planned_bytes: int
    hold: tuple[Assignment, ...]
    add: tuple[str, ...]
    remove: tuple[str, ...]
    #: Why the appliance was left out of planning (offline, draining, no disk); its holdings stay as they are.
    skipped: str = ""


@dataclass(frozen=True)
class RegionSummary:
    region: str
    forecast_bytes: float
    offload_now: float
    offload_planned: float
    live_now: int
    live_planned: int


@dataclass(frozen=True)
class FillPlan:
    appliances: tuple[AppliancePlan, ...]
    regions: tuple[RegionSummary, ...]
    bytes_to_fill: int
    bytes_to_delete: int
    #: Titles in the forecast that are not in the catalogue (ignored, reported so the mismatch is visible).
    unknown_titles: tuple[str, ...] = field(default_factory=tuple)

    def for_appliance(self, appliance_id: str) -> AppliancePlan:
        for plan in self.appliances:
            if plan.appliance_id == appliance_id:
                return plan
        raise KeyError(appliance_id)


def _validate(appliances: Sequence[ApplianceSpec], titles: Sequence[TitleSpec],
              demand: Mapping[str, Mapping[str, float]]) -> tuple[dict[str, TitleSpec], dict[str, str]]:
    if len(appliances) > MAX_APPLIANCES:
        raise InvalidInput(f"{len(appliances)} appliances; at most {MAX_APPLIANCES} are allowed")
    if len(titles) > MAX_TITLES:
        raise InvalidInput(f"{len(titles)} titles; at most {MAX_TITLES} are allowed")
    seen: set[str] = set()
    site_region: dict[str, str] = {}
    for a in appliances:
        if not isinstance(a, ApplianceSpec):
            raise InvalidInput(f"expected an ApplianceSpec, got {type(a).__name__}")
        if a.appliance_id in seen:
            raise InvalidInput(f"appliance id {a.appliance_id!r} appears twice")
        seen.add(a.appliance_id)
        if site_region.setdefault(a.site, a.region) != a.region:
            raise InvalidInput(f"site {a.site!r} is in two regions ({site_region[a.site]!r}, {a.region!r})")
    catalogue: dict[str, TitleSpec] = {}
    for t in titles:
        if not isinstance(t, TitleSpec):
            raise InvalidInput(f"expected a TitleSpec, got {type(t).__name__}")
        if t.title_id in catalogue:
            raise InvalidInput(f"title {t.title_id!r} appears twice in the catalogue")
        catalogue[t.title_id] = t
    for region, views in demand.items():
        if sum(1 for _ in views) > MAX_TITLES:
            raise InvalidInput(f"region {region!r}: more than {MAX_TITLES} titles in the forecast")
        for title_id, value in views.items():
            if not (_finite(value) and value >= 0):
                raise InvalidInput(f"region {region!r} title {title_id!r}: forecast {value!r} must be finite and >= 0")
    return catalogue, site_region


class _Site:
    """Greedy placement state for one site."""

    def __init__(self, members: list[ApplianceSpec], config: PlannerConfig,
                 held: Mapping[str, Mapping[str, Holding]], catalogue: Mapping[str, TitleSpec]) -> None:
        self.config = config
        self.members = members
        self.site = members[0].site
        self.free = {a.appliance_id: int(a.capacity_bytes * (1 - config.reserve_fraction)) for a in members}
        self.ring = hashring.Rendezvous({a: float(max(free, 1)) for a, free in self.free.items()}, salt=self.site)
        self.k = min(config.min_copies, len(members))
        cap = config.max_copies or len(members)
        self.max_copies = max(self.k, min(cap, len(members)))
        self.placed: dict[str, list[str]] = defaultdict(list)
        self.holders: dict[str, list[str]] = defaultdict(list)
        for a in members:
            for title_id, holding in held.get(a.appliance_id, {}).items():
                spec = catalogue.get(title_id)
                if spec is not None and holding.version == spec.version:
                    self.holders[title_id].append(a.appliance_id)

    def _order(self, title_id: str) -> list[str]:
        ranked = self.ring.rank(title_id)
        holders = set(self.holders.get(title_id, ()))
        return [a for a in ranked if a in holders] + [a for a in ranked if a not in holders]

    def _density(self, views: float, title_id: str, copy: int) -> float:
        base = views / self.k if copy == self.k else self.config.extra_copy_weight * views / copy
        incumbent = len(self.holders.get(title_id, ())) >= (1 if copy == self.k else copy)
        return base * (1 + self.config.hysteresis) if incumbent else base

    def plan(self, views: Mapping[str, float], catalogue: Mapping[str, TitleSpec]) -> None:
        heap: list[tuple[float, str, int]] = [
            (-self._density(v, t, self.k), t, self.k) for t, v in views.items() if v > 0 and t in catalogue]
        heapq.heapify(heap)
        orders: dict[str, list[str]] = {}
        while heap:
            _, title_id, copy = heapq.heappop(heap)
            size = catalogue[title_id].size
            order = orders.get(title_id) or orders.setdefault(title_id, self._order(title_id))
            taken = self.placed[title_id]
            want = self.k if copy == self.k else 1
            chosen = [a for a in order if a not in taken and self.free[a] >= size][:want]
            if len(chosen) < want:
                continue
            for a in chosen:
                self.free[a] -= size
                taken.append(a)
            if copy < self.max_copies and self.config.extra_copy_weight > 0:
                heapq.heappush(heap, (-self._density(views[title_id], title_id, copy + 1), title_id, copy + 1))


def _sources(title_id: str, appliance: ApplianceSpec, complete_holders: Mapping[str, list[ApplianceSpec]],
             limit: int) -> tuple[SourcePlan, ...]:
    """Same-site peers first, then other appliances (same region before others), then the origin."""
    holders = [h for h in complete_holders.get(title_id, ()) if h.appliance_id != appliance.appliance_id]
    peers = [h.appliance_id for h in holders if h.site == appliance.site]
    near = [h.appliance_id for h in holders if h.site != appliance.site and h.region == appliance.region]
    far = [h.appliance_id for h in holders if h.region != appliance.region]
    # Ranking each group by the fetching appliance spreads the fill load over the holders.
    def spread(group: list[str]) -> list[str]:
        return hashring.rank(title_id, group, salt=appliance.appliance_id) if len(group) > 1 else group

    out = [SourcePlan("peer", p) for p in spread(peers)]
    for group in (near, far):
        out += [SourcePlan("appliance", p) for p in spread(group)]
    return (*out[:limit], SourcePlan("origin"))


def _offload(region_titles: set[str], views: Mapping[str, float], catalogue: Mapping[str, TitleSpec]) -> float:
    total = sum(v * catalogue[t].size for t, v in views.items() if t in catalogue)
    served = sum(views[t] * catalogue[t].size for t in region_titles if t in views and t in catalogue)
    return served / total if total > 0 else 0.0


def plan_fill(appliances: Sequence[ApplianceSpec], titles: Sequence[TitleSpec],
              demand: Mapping[str, Mapping[str, float]],
              holdings: Mapping[str, Iterable[Holding]], config: PlannerConfig | None = None) -> FillPlan:
    """Plan every site; see the module docstring for the rules."""
    cfg = config or PlannerConfig()
    catalogue, _ = _validate(appliances, titles, demand)
    held: dict[str, dict[str, Holding]] = {a.appliance_id: {} for a in appliances}
    for appliance_id, items in holdings.items():
        if appliance_id in held:
            for h in items:
                held[appliance_id][h.title_id] = h
    complete: dict[str, list[ApplianceSpec]] = defaultdict(list)  # title -> online appliances with a full copy
    complete_on: dict[str, set[str]] = defaultdict(set)  # appliance -> titles it holds complete
    for a in appliances:
        for h in held[a.appliance_id].values():
            spec = catalogue.get(h.title_id)
            if h.complete and spec is not None and h.version == spec.version:
                complete_on[a.appliance_id].add(h.title_id)
                if a.online:
                    complete[h.title_id].append(a)

    skipped: dict[str, str] = {}
    sites: dict[str, list[ApplianceSpec]] = defaultdict(list)
    for a in appliances:
        reason = "offline" if not a.online else "draining" if a.draining else "no disk" if a.capacity_bytes == 0 else ""
        if reason:
            skipped[a.appliance_id] = reason
        else:
            sites[a.site].append(a)
    placed: dict[str, set[str]] = defaultdict(set)  # appliance -> titles
    for members in sites.values():
        site = _Site(members, cfg, held, catalogue)
        site.plan(demand.get(members[0].region, {}), catalogue)
        for title_id, where in site.placed.items():
            for appliance_id in where:
                placed[appliance_id].add(title_id)

    plans: list[AppliancePlan] = []
    to_fill = to_delete = 0
    for a in appliances:
        mine = held[a.appliance_id]
        usable = int(a.capacity_bytes * (1 - cfg.reserve_fraction))
        if a.appliance_id in skipped:
            keep = tuple(Assignment(t, catalogue[t].version, catalogue[t].size) for t in complete_on[a.appliance_id])
            plans.append(AppliancePlan(a.appliance_id, a.site, usable, sum(x.size for x in keep),
                                       tuple(sorted(keep, key=lambda x: x.title_id)), (), (), skipped[a.appliance_id]))
            continue
        hold: list[Assignment] = []
        add: list[str] = []
        for title_id in sorted(placed[a.appliance_id]):
            spec = catalogue[title_id]
            have = mine.get(title_id)
            if have is not None and have.complete and have.version == spec.version:
                hold.append(Assignment(title_id, spec.version, spec.size))
            else:
                sources = _sources(title_id, a, complete, cfg.max_sources)
                hold.append(Assignment(title_id, spec.version, spec.size, sources))
                add.append(title_id)
                to_fill += spec.size
        # Superseded versions go too: the desired state names only the current one.
        remove = sorted(t for t, h in mine.items() if t not in placed[a.appliance_id] or t not in catalogue
                        or catalogue[t].version != h.version)
        to_delete += sum(catalogue[t].size for t in remove if t in catalogue and mine[t].complete)
        plans.append(AppliancePlan(a.appliance_id, a.site, usable, sum(x.size for x in hold), tuple(hold),
                                   tuple(add), tuple(remove)))

    regions: list[RegionSummary] = []
    for region in sorted({a.region for a in appliances}):
        members = [a for a in appliances if a.region == region]
        now_copies: dict[str, int] = defaultdict(int)
        plan_copies: dict[str, int] = defaultdict(int)
        for a in members:
            if a.online and not a.draining:
                for title_id in complete_on[a.appliance_id]:
                    now_copies[title_id] += 1
                for title_id in placed[a.appliance_id]:
                    plan_copies[title_id] += 1
        views = demand.get(region, {})
        total = sum(v * catalogue[t].size for t, v in views.items() if t in catalogue)
        regions.append(RegionSummary(
            region, total, _offload(set(now_copies), views, catalogue), _offload(set(plan_copies), views, catalogue),
            sum(1 for c in now_copies.values() if c >= cfg.min_copies),
            sum(1 for c in plan_copies.values() if c >= cfg.min_copies)))
    unknown = sorted({t for views in demand.values() for t in views if t not in catalogue})
    return FillPlan(tuple(plans), tuple(regions), to_fill, to_delete, tuple(unknown[:1000]))


def live_titles(appliances: Sequence[ApplianceSpec], titles: Sequence[TitleSpec],
                holdings: Mapping[str, Iterable[Holding]], min_copies: int) -> dict[str, frozenset[str]]:
    """Per region, the titles with at least ``min_copies`` complete current copies on serving appliances.

    The catalogue shows a title as playable in a region only once this holds, so one lost disk
    cannot make it unplayable there.
    """
    if not (_count(min_copies) and min_copies >= 1):
        raise InvalidInput(f"min_copies must be an integer >= 1, not {min_copies!r}")
    catalogue, _ = _validate(appliances, titles, {})
    counts: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for a in appliances:
        if not a.online or a.draining:
            continue
        for h in holdings.get(a.appliance_id, ()):
            spec = catalogue.get(h.title_id)
            if h.complete and spec is not None and spec.version == h.version:
                counts[a.region][h.title_id] += 1
    return {region: frozenset(t for t, c in counts.get(region, {}).items() if c >= min_copies)
            for region in sorted({a.region for a in appliances})}
