"""The edge daemon's aiohttp application: one context object, one cleanup_ctx entry per resource."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from aiohttp import web

from shared.tasks import TaskGroup
from shared.web import error_middleware, metrics_handler

from .agent import EdgeAgent
from .config import EdgeConfig
from .metrics import EdgeMetrics

log = logging.getLogger(__name__)


@dataclass
class EdgeContext:
    config: EdgeConfig
    metrics: EdgeMetrics
    agent: EdgeAgent
    tasks: TaskGroup = field(default_factory=lambda: TaskGroup("edge"))


CTX = web.AppKey("edge", EdgeContext)


def public_url(config: EdgeConfig, bound_port: int | None = None) -> str:
    if config.http.public_url:
        return config.http.public_url.rstrip("/")
    return f"http://{config.http.host}:{bound_port or config.http.port}"


def build_app(config: EdgeConfig, *, bound_port: int | None = None) -> web.Application:
    metrics = EdgeMetrics()
    metrics.disk_capacity.set(config.cache.capacity_bytes)
    agent = EdgeAgent(config, metrics, public_url(config, bound_port))
    ctx = EdgeContext(config, metrics, agent)
    app = web.Application(middlewares=[error_middleware], client_max_size=64 * 1024)
    app[CTX] = ctx
    app.cleanup_ctx.append(_mqtt)
    app.cleanup_ctx.append(_background)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics_handler(metrics.registry))
    return app


async def _mqtt(app: web.Application) -> AsyncIterator[None]:
    ctx = app[CTX]
    ctx.metrics.up.set(1)
    await ctx.agent.start()
    yield
    await ctx.agent.stop()
    ctx.metrics.up.set(0)


async def _background(app: web.Application) -> AsyncIterator[None]:
    ctx = app[CTX]
    ctx.tasks.spawn(ctx.agent.telemetry_loop(), name="telemetry")
    yield
    await ctx.tasks.aclose()


async def healthz(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    mqtt_ok = ctx.agent.session.connected.is_set()
    return web.json_response({
        "status": "ok",
        "appliance": ctx.config.appliance.id,
        "draining": ctx.agent.draining,
        "mqtt": "connected" if mqtt_ok else "disconnected",
    })
