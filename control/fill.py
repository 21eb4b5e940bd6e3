"""The fill shell: gather the planner's inputs, run it, and publish desired state per appliance.

The planner decides (:mod:`control.planner`); this module only translates.  Fill sources become URLs
with fill tokens (any client, one title, a couple of days), the same-site peer first as the planner
ranked them, the origin last.  An appliance whose planned titles did not change keeps its retained
generation, so re-planning with unchanged demand publishes nothing.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from shared import tokens
from shared.messages import DesiredFill, FileSetRef, FillSource

from . import planner
from .popularity import DemandModel
from .registry import RegistryView
from .store import FillState, TitleRecord


@dataclass(frozen=True)
class FillInputs:
    appliances: list[planner.ApplianceSpec]
    titles: list[planner.TitleSpec]
    demand: dict[str, dict[str, float]]
    holdings: dict[str, list[planner.Holding]]


def gather(registry: RegistryView, titles: Sequence[TitleRecord], demand: DemandModel, now: float,
           floor_views: float = 0.0) -> FillInputs:
    """The planner's inputs from the live registry.

    ``floor_views`` gives every registered title a token forecast where nothing was observed: a new
    catalogue or a quiet region then fills spare disk instead of staying empty, and any real demand
    outranks the floor, so it never displaces what people watch.
    """
    specs = []
    for view in registry.views(now):
        rec = registry.appliances[view.appliance_id]
        specs.append(planner.ApplianceSpec(view.appliance_id, rec.meta.site, rec.meta.region, rec.meta.disk_bytes,
                                           online=view.online, draining=view.draining))
    catalogue = [planner.TitleSpec(t.title_id, t.version, t.size) for t in titles if t.size > 0]
    releases = {t.title_id: t.released for t in titles}
    regions = {s.region for s in specs}
    forecast = {r: demand.forecast(r, now, releases) for r in sorted(regions)}
    if floor_views > 0:
        for views in forecast.values():
            for t in catalogue:
                if views.get(t.title_id, 0.0) < floor_views:
                    views[t.title_id] = floor_views
    held = {aid: [planner.Holding(h.title_id, h.version, h.complete) for h in items.values()]
            for aid, items in registry.holdings.items()}
    return FillInputs(specs, catalogue, forecast, held)


def plan(inputs: FillInputs, config: planner.PlannerConfig) -> planner.FillPlan:
    return planner.plan_fill(inputs.appliances, inputs.titles, inputs.demand, inputs.holdings, config)


def _token(keys: tokens.TokenKeys, title_id: str, ttl_s: float, now: float) -> str:
    return tokens.sign(keys, path_prefix=f"{title_id}/", client_prefix="*", ttl_s=ttl_s, now=now)


def desired(p: planner.AppliancePlan, generation: int, *, api_url: str, urls: Mapping[str, str],
            keys: tokens.TokenKeys, ttl_s: float, fill_window: str, rate_limit_bps: int,
            now: float) -> DesiredFill:
    """One appliance's desired state; peers without a known URL are left out of its sources."""
    refs = []
    for a in p.hold:
        sources = []
        for s in a.sources:
            if s.kind == "origin":
                base = f"{api_url}/v1/origin/{_token(keys, a.title_id, ttl_s, now)}/{a.title_id}/"
                sources.append(FillSource(base, "origin"))
            elif s.appliance_id and urls.get(s.appliance_id):
                base = f"{urls[s.appliance_id]}/v1/content/{_token(keys, a.title_id, ttl_s, now)}/{a.title_id}/"
                sources.append(FillSource(base, s.kind, s.appliance_id))
        manifest = f"{api_url}/v1/filesets/{a.title_id}/{a.version}"
        refs.append(FileSetRef(a.title_id, a.version, manifest, a.size, sources))
    return DesiredFill(generation, refs, fill_window, rate_limit_bps)


def changed(p: planner.AppliancePlan, previous: FillState | None) -> bool:
    return previous is None or tuple(sorted(f"{a.title_id}@{a.version}" for a in p.hold)) != previous.titles


def state_for(p: planner.AppliancePlan, generation: int, now: float) -> FillState:
    return FillState(p.appliance_id, generation, now, tuple(sorted(f"{a.title_id}@{a.version}" for a in p.hold)),
                     p.planned_bytes)


def plan_json(fp: planner.FillPlan, min_copies: int) -> dict[str, Any]:
    """The operator's view of a plan: the diff per appliance and the expected offload per region."""
    return {
        "bytes_to_fill": fp.bytes_to_fill,
        "bytes_to_delete": fp.bytes_to_delete,
        "min_copies": min_copies,
        "unknown_titles": list(fp.unknown_titles),
        "regions": [{"region": r.region, "forecast_bytes": r.forecast_bytes, "offload_now": round(r.offload_now, 4),
                     "offload_planned": round(r.offload_planned, 4), "live_now": r.live_now,
                     "live_planned": r.live_planned} for r in fp.regions],
        "appliances": [{"appliance_id": a.appliance_id, "site": a.site, "usable_bytes": a.usable_bytes,
                        "planned_bytes": a.planned_bytes, "hold": [h.title_id for h in a.hold],
                        "add": list(a.add), "remove": list(a.remove), "skipped": a.skipped}
                       for a in fp.appliances],
    }


def live_titles(registry: RegistryView, titles: Sequence[TitleRecord], min_copies: int,
                now: float | None = None) -> dict[str, bool]:
    """A title is live when some region holds at least ``min_copies`` complete current copies online."""
    now = time.time() if now is None else now
    copies: dict[tuple[str, str], int] = {}
    for view in registry.views(now):
        if not view.online:
            continue
        region = registry.appliances[view.appliance_id].meta.region
        for t in view.titles:
            copies[(region, t)] = copies.get((region, t), 0) + 1
    return {t.title_id: any(n >= min_copies for (_, tid), n in copies.items() if tid == t.title_id) for t in titles}
