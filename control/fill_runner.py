"""Running a fill plan against the live fleet: plan, publish what changed, mark titles live."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from shared import topics

from . import fill
from .context import ControlContext

log = logging.getLogger(__name__)


async def run_fill(ctx: ControlContext, *, publish: bool, actor: str) -> dict[str, Any]:
    """Plan; when ``publish``, send a new generation to every appliance whose plan changed."""
    async with ctx.fill_lock:
        now = time.time()
        titles = await ctx.store.list_titles()
        inputs = fill.gather(ctx.registry, titles, ctx.demand, now, ctx.config.fill.floor_views)
        plan = await asyncio.get_running_loop().run_in_executor(None, fill.plan, inputs, ctx.planner)
        out = fill.plan_json(plan, ctx.planner.min_copies)
        published: list[str] = []
        if publish:
            previous = {s.appliance_id: s for s in await ctx.store.fill_states()}
            todo = [p for p in plan.appliances if not p.skipped and fill.changed(p, previous.get(p.appliance_id))]
            if todo:
                generation = await ctx.store.next_fill_generation()
                urls = {aid: ctx.registry.http_url(aid) for aid in ctx.registry.appliances}
                states = []
                for p in todo:
                    meta = ctx.registry.appliances[p.appliance_id].meta
                    doc = fill.desired(p, generation, api_url=ctx.api_url, urls=urls, keys=ctx.keys,
                                       ttl_s=ctx.config.security.fill_token_ttl_s, fill_window=meta.fill_window,
                                       rate_limit_bps=ctx.config.fill.rate_limit_bps, now=now)
                    await ctx.session.publish(topics.appliance_desired(p.appliance_id, "fill"), doc, retain=True)
                    states.append(fill.state_for(p, generation, now))
                    published.append(p.appliance_id)
                await ctx.store.record_fill(states, actor=actor)
        await ctx.store.set_live(fill.live_titles(ctx.registry, titles, ctx.planner.min_copies, now))
        out["published"] = published
        return out


async def fill_loop(ctx: ControlContext) -> None:
    interval = ctx.config.fill.interval_s
    while True:
        await asyncio.sleep(interval)
        try:
            result = await run_fill(ctx, publish=True, actor="scheduler")
            if result["published"]:
                log.info("fill plan published to %s", ", ".join(result["published"]))
        except Exception:
            log.exception("periodic fill planning failed")
