"""``GET /v1/play/{title_id}`` for players and ``GET /v1/steer`` for operators: one decision, two views."""

from __future__ import annotations

import time
from typing import Any

from aiohttp import web

from shared import tokens
from shared.errors import InvalidInput
from shared.ids import check_id

from . import play
from .api_ops import int_param
from .context import CTX, ControlContext
from .steering import MAX_ANSWERS, SteeringDecision, Verdict


def _count(request: web.Request, default: int) -> int:
    return int_param(request, "count", min(default, MAX_ANSWERS), 1, MAX_ANSWERS) or 1


def _verdict(v: Verdict) -> dict[str, Any]:
    return {"appliance_id": v.appliance_id, "kept": v.kept, "reason": v.reason.value, "detail": v.detail,
            "rank": v.rank, "distance_km": v.distance_km}


def decision_json(d: SteeringDecision) -> dict[str, Any]:
    where = {"lat": d.client_location.lat, "lon": d.client_location.lon} if d.client_location else None
    return {"client_ip": d.client_ip, "title_id": d.title_id, "matched_prefix": d.matched_prefix,
            "client_location": where, "location_source": d.location_source,
            "ranked": [_verdict(v) for v in d.ranked], "dropped": [_verdict(v) for v in d.dropped]}


def _decide(ctx: ControlContext, ip: str, title_id: str, count: int, explain: bool) -> SteeringDecision:
    return ctx.registry.index().steer(ip, title_id, count=count, locator=ctx.locator, explain=explain)


def _viewer_override(ctx: ControlContext, request: web.Request) -> str | None:
    """The demo's "act as a viewer in that ISP" switch: steering only; tokens keep the real address."""
    wanted = request.query.get("as")
    if wanted is None:
        return None
    if not ctx.config.steering.viewer_override:
        raise InvalidInput("the 'as' viewer override is disabled on this control plane")
    import ipaddress

    try:
        return str(ipaddress.ip_address(wanted))
    except ValueError:
        raise InvalidInput("'as' must be an IP address") from None


async def play_title(request: web.Request) -> web.Response:
    """Public: the ranked, signed manifest URLs for this client; 503 when no appliance can serve it."""
    ctx = request.app[CTX]
    title_id = check_id(request.match_info["title_id"], "title id")
    ip = play.client_ip(request.remote, request.headers.get("X-Forwarded-For"), ctx.trusted)
    steer_ip = _viewer_override(ctx, request) or ip
    count = _count(request, ctx.config.steering.answers)
    title = await ctx.store.get_title(title_id)
    decision = _decide(ctx, steer_ip, title_id, count, explain=False)
    ranked = [(v.appliance_id, ctx.registry.http_url(v.appliance_id)) for v in decision.ranked]
    ranked = [(a, u) for a, u in ranked if u]
    ctx.metrics.plays.labels("served" if ranked else "no_appliance").inc()
    ctx.recent_steering.append({
        "ts": round(time.time(), 3), "client_prefix": play.client_prefix(steer_ip), "title_id": title_id,
        "matched_prefix": decision.matched_prefix, "ranked": [v.appliance_id for v in decision.ranked],
        "reason": decision.ranked[0].reason.value if decision.ranked else "no_appliance"})
    if not ranked:
        return web.json_response({"error": f"no appliance can serve {title_id} now", "title_id": title_id},
                                 status=503, headers={"Retry-After": "30"})
    urls = play.play_urls(ctx.keys, title, ranked, ip, ctx.config.security.play_token_ttl_s)
    body: dict[str, Any] = {
        "title_id": title_id, "name": title.name, "client_ip": steer_ip,
        "expires": int(time.time() + ctx.config.security.play_token_ttl_s),
        "sources": [{"appliance_id": u.appliance_id, "hls": u.hls, "dash": u.dash} for u in urls],
    }
    if title.encrypted:
        token = tokens.sign(ctx.keys, path_prefix=f"{title_id}/", client_prefix=play.client_prefix(ip),
                            ttl_s=ctx.config.security.play_token_ttl_s)
        body["license_url"] = f"{ctx.api_url}/v1/license/{token}/{title_id}"
    return web.json_response(body, headers={"Cache-Control": "no-store"})


async def edges(request: web.Request) -> web.Response:
    """Public: the appliances this client should use for anything but a title (its homepage rows)."""
    ctx = request.app[CTX]
    ip = play.client_ip(request.remote, request.headers.get("X-Forwarded-For"), ctx.trusted)
    steer_ip = _viewer_override(ctx, request) or ip
    decision = ctx.registry.index().steer(steer_ip, None, count=_count(request, ctx.config.steering.answers),
                                          locator=ctx.locator, explain=False)
    ranked = [{"appliance_id": v.appliance_id, "url": ctx.registry.http_url(v.appliance_id)} for v in decision.ranked]
    return web.json_response({"client_ip": steer_ip, "edges": [e for e in ranked if e["url"]]},
                             headers={"Cache-Control": "no-store"})


async def steer(request: web.Request) -> web.Response:
    """Operator: the same decision with every appliance kept or dropped and why."""
    ctx = request.app[CTX]
    ip, title_id = request.query.get("client_ip"), request.query.get("title")
    if not ip or not title_id:
        raise InvalidInput("give client_ip and title")
    check_id(title_id, "title id")
    count = _count(request, ctx.config.steering.answers)
    decision = _decide(ctx, ip, title_id, count, explain=True)
    out = decision_json(decision)
    if title_id not in ctx.registry.title_versions:
        out["warning"] = f"title {title_id!r} is not registered"
    return web.json_response(out)


async def recent_steering(request: web.Request) -> web.Response:
    """Operator: the last play decisions, newest first (client addresses reduced to their /24 or /48)."""
    return web.json_response({"decisions": list(reversed(request.app[CTX].recent_steering))})


def add_routes(app: web.Application) -> None:
    app.router.add_get("/v1/play/{title_id}", play_title)
    app.router.add_get("/v1/steer", steer)
    app.router.add_get("/v1/edges", edges)
    app.router.add_get("/v1/steer/recent", recent_steering)
