"""The control plane's aiohttp application: context object, cleanup_ctx per resource, routes."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from shared import topics
from shared.envelope import Envelope
from shared.errors import InvalidInput, NotFound
from shared.messages import REGISTRY, ApplianceStatus, ControlStatus, Ping, SetDraining, Telemetry
from shared.mqtt import Announcement, MqttSession
from shared.tasks import TaskGroup
from shared.web import error_middleware, metrics_handler

from .auth import TokenStore, auth_middleware
from .config import ControlConfig
from .fleet import Fleet
from .metrics import ControlMetrics

log = logging.getLogger(__name__)

SOFTWARE = "nearcast-control/0.1"


@dataclass
class ControlContext:
    config: ControlConfig
    metrics: ControlMetrics
    session: MqttSession
    fleet: Fleet
    tokens: TokenStore
    api_url: str
    tasks: TaskGroup = field(default_factory=lambda: TaskGroup("control"))


CTX = web.AppKey("control", ControlContext)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _is_public(request: web.Request) -> bool:
    return not request.path.startswith("/v1/") or request.path == "/v1/openapi.json"


def build_app(config: ControlConfig, *, api_url: str | None = None) -> web.Application:
    metrics = ControlMetrics()
    url = api_url or config.http.public_url or f"http://{config.http.host}:{config.http.port}"
    session = MqttSession(
        config.mqtt, client_id=topics.CONTROL_ID, registry=REGISTRY, metrics=metrics.mqtt,
        birth=Announcement(topics.control_status(), ControlStatus("online", url, SOFTWARE)),
        will=Announcement(topics.control_status(), ControlStatus("offline", url, SOFTWARE)),
    )
    ctx = ControlContext(config, metrics, session, Fleet(config.fleet.heartbeat_ttl_s),
                         TokenStore.load(config.tokens_path), url)
    app = web.Application(
        middlewares=[error_middleware, auth_middleware(lambda: ctx.tokens, _is_public)],
        client_max_size=config.http.max_body_bytes,
    )
    app[CTX] = ctx
    session.subscribe(topics.ALL_STATUS, _status_handler(ctx))
    session.subscribe(topics.ALL_TELEMETRY, _telemetry_handler(ctx))
    session.subscribe(topics.ALL_ACKS, _ack_handler(ctx))
    app.cleanup_ctx.append(_mqtt)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", _metrics(ctx))
    app.router.add_get("/v1/appliances", list_appliances)
    app.router.add_get("/v1/appliances/{id}", show_appliance)
    app.router.add_post("/v1/appliances/{id}/ping", ping_appliance)
    app.router.add_post("/v1/appliances/{id}/drain", drain_appliance)
    app.router.add_post("/v1/appliances/{id}/undrain", drain_appliance)
    return app


async def _mqtt(app: web.Application) -> AsyncIterator[None]:
    ctx = app[CTX]
    await ctx.session.start()
    yield
    await ctx.tasks.aclose()
    await ctx.session.stop()


def _appliance_id(topic: str) -> str:
    return topics.parse(topic).appliance_id


def _status_handler(ctx: ControlContext) -> Callable[[Envelope[Any], str], Awaitable[None]]:
    async def handle(env: Envelope[Any], topic: str) -> None:
        aid = _appliance_id(topic)
        if not isinstance(env.body, ApplianceStatus):
            raise InvalidInput(f"{env.type} on a status topic")
        if env.sender != aid:
            raise InvalidInput(f"status for {aid} sent by {env.sender}")
        ctx.fleet.on_status(aid, env.body, env.ts)
        log.info("appliance %s is %s", aid, env.body.state)

    return handle


def _telemetry_handler(ctx: ControlContext) -> Callable[[Envelope[Any], str], Awaitable[None]]:
    async def handle(env: Envelope[Any], topic: str) -> None:
        aid = _appliance_id(topic)
        if not isinstance(env.body, Telemetry) or env.sender != aid:
            raise InvalidInput(f"bad telemetry on {topic}")
        ctx.fleet.on_telemetry(aid, env.body)

    return handle


def _ack_handler(ctx: ControlContext) -> Callable[[Envelope[Any], str], Awaitable[None]]:
    async def handle(env: Envelope[Any], topic: str) -> None:
        log.info("ack from %s: %s", _appliance_id(topic), env.body)

    return handle


def _metrics(ctx: ControlContext) -> Handler:
    inner = metrics_handler(ctx.metrics.registry)

    async def handle(request: web.Request) -> web.StreamResponse:
        now = time.time()
        counts: dict[str, int] = {}
        for a in ctx.fleet.snapshot():
            state = a.effective_state(now, ctx.fleet.ttl_s)
            counts[state] = counts.get(state, 0) + 1
        for state in ("online", "draining", "offline", "stale"):
            ctx.metrics.appliances.labels(state).set(counts.get(state, 0))
        return await inner(request)

    return handle


async def healthz(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    return web.json_response({"status": "ok", "mqtt": "connected" if ctx.session.connected.is_set()
                              else "disconnected"})


def _appliance_json(ctx: ControlContext, aid: str) -> dict[str, Any]:
    a = ctx.fleet.get(aid)
    if a is None:
        raise NotFound(f"no appliance {aid!r}")
    now = time.time()
    return {"id": a.id, "state": a.effective_state(now, ctx.fleet.ttl_s), "http_url": a.http_url,
            "software": a.software, "last_seen_s_ago": round(now - a.last_seen, 1) if a.last_seen else None}


async def list_appliances(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    return web.json_response({"appliances": [_appliance_json(ctx, a.id) for a in ctx.fleet.snapshot()]})


async def show_appliance(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    return web.json_response(_appliance_json(ctx, request.match_info["id"]))


async def ping_appliance(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    aid = request.match_info["id"]
    _appliance_json(ctx, aid)
    msg_id = await ctx.session.publish(topics.appliance_commands(aid), Ping("operator ping"))
    return web.json_response({"command_id": msg_id}, status=202)


async def drain_appliance(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    aid = request.match_info["id"]
    _appliance_json(ctx, aid)
    draining = request.path.endswith("/drain")
    msg_id = await ctx.session.publish(topics.appliance_commands(aid), SetDraining(draining))
    return web.json_response({"command_id": msg_id, "draining": draining}, status=202)
