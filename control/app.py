"""The control plane's aiohttp application: context object, one cleanup_ctx entry per resource, routes."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

from aiohttp import web

from shared import topics
from shared.errors import ConfigError
from shared.messages import REGISTRY, ControlStatus
from shared.mqtt import Announcement, MqttSession
from shared.signing import Signer
from shared.tokens import TokenKeys
from shared.web import error_middleware, metrics_handler

from . import api_content, api_ingest, api_license, api_models, api_ops, api_play, api_recs, handlers, openapi
from .auth import TokenEntry, TokenStore, auth_middleware, token_hash
from .config import ControlConfig
from .context import CTX, ControlContext
from .fill_runner import fill_loop
from .fleet import Fleet
from .ingest import IngestMetrics, TelemetryIngest
from .metrics import ControlMetrics
from .planner import PlannerConfig
from .play import trusted_networks
from .popularity import DemandModel, PopularityConfig
from .registry import RegistryView
from .steering import MmdbLocator
from .store import OperatorToken
from .store_sqlite import SqliteStore

log = logging.getLogger(__name__)

SOFTWARE = "nearcast-control/0.1"
PUBLIC_PREFIXES = ("/v1/play/", "/v1/filesets/", "/v1/origin/", "/v1/license/", "/v1/profiles/", "/v1/artwork/",
                   "/v1/bundles/")
PUBLIC_PATHS = frozenset({"/v1/openapi.json", "/v1/enroll", "/v1/events", "/v1/edges"})

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

__all__ = ["CTX", "SOFTWARE", "ControlContext", "build_app"]


def _is_public(request: web.Request) -> bool:
    path = request.path
    return not path.startswith("/v1/") or path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES)


def _token_keys(config: ControlConfig) -> TokenKeys:
    path = config.token_keys_path
    if path.exists():
        return TokenKeys.load(path)
    keys = TokenKeys.generate()
    keys.save(path)
    return keys


def build_app(config: ControlConfig, *, api_url: str | None = None) -> web.Application:
    metrics = ControlMetrics()
    url = (api_url or config.http.public_url or f"http://{config.http.host}:{config.http.port}").rstrip("/")
    session = MqttSession(
        config.mqtt, client_id=topics.CONTROL_ID, registry=REGISTRY, metrics=metrics.mqtt,
        birth=Announcement(topics.control_status(), ControlStatus("online", url, SOFTWARE)),
        will=Announcement(topics.control_status(), ControlStatus("offline", url, SOFTWARE)),
        persistent=True,  # telemetry an appliance sends before this plane reconnects waits on the broker
    )
    fleet = Fleet(config.fleet.heartbeat_ttl_s)
    store = SqliteStore(config.db_path)
    registry = RegistryView(fleet, refresh_s=config.steering.refresh_s)
    f = config.fill
    demand = DemandModel(PopularityConfig(half_life_s=f.half_life_s, release_boost=f.release_boost))
    t = config.telemetry
    ingest = TelemetryIngest(store, registry, demand, IngestMetrics(metrics.registry), batch_max=t.batch_max,
                             flush_interval_s=t.flush_interval_s, queue_max=t.queue_max)
    config.state.dir.mkdir(parents=True, exist_ok=True)
    ctx = ControlContext(
        config, metrics, session, fleet, store, registry, demand, ingest, _token_keys(config),
        Signer.load_or_create(config.signing_key_path),
        PlannerConfig(min_copies=f.min_copies, extra_copy_weight=f.extra_copy_weight, hysteresis=f.hysteresis,
                      reserve_fraction=f.reserve_fraction),
        trusted_networks(config.http.trusted_proxies), url)

    async def check(token: str) -> TokenEntry | None:
        found = await store.find_token(token_hash(token))
        return TokenEntry(found.name, found.sha256, found.role) if found else None

    app = web.Application(middlewares=[error_middleware, auth_middleware(check, _is_public)],
                          client_max_size=config.http.max_body_bytes)
    app[CTX] = ctx
    session.subscribe(topics.ALL_STATUS, handlers.status_handler(ctx))
    session.subscribe(topics.ALL_TELEMETRY, handlers.telemetry_handler(ctx))
    session.subscribe(topics.ALL_ACKS, handlers.ack_handler(ctx))
    app.cleanup_ctx.append(_store)
    app.cleanup_ctx.append(_geoip)
    app.cleanup_ctx.append(api_models.lifecycle)  # before MQTT: the first acks find the deployment loaded
    app.cleanup_ctx.append(_mqtt)
    app.cleanup_ctx.append(_background)
    app.cleanup_ctx.append(api_ingest.lifecycle)
    app.cleanup_ctx.append(api_recs.lifecycle)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", _metrics(ctx))
    app.router.add_get("/v1/openapi.json", openapi_json)
    api_ops.add_routes(app)
    api_play.add_routes(app)
    api_content.add_routes(app)
    api_license.add_routes(app)
    api_ingest.add_routes(app)
    api_models.add_routes(app)
    api_recs.add_routes(app)
    app.router.add_static("/web/", Path(__file__).with_name("web") / "static", append_version=False)
    return app


async def _store(app: web.Application) -> AsyncIterator[None]:
    ctx = app[CTX]
    await ctx.store.open()
    bootstrap = TokenStore.load(ctx.config.tokens_path)
    now = time.time()
    added = await ctx.store.import_tokens([OperatorToken(e.name, e.sha256, e.role, now) for e in bootstrap.entries()])
    if added:
        log.info("imported %d operator token(s) from %s", added, ctx.config.tokens_path)
    await ctx.registry.reload(ctx.store)
    await api_ops.sync_broker_files(ctx)
    yield
    await ctx.store.close()


async def _geoip(app: web.Application) -> AsyncIterator[None]:
    """The MaxMind-format database, when configured, open for the daemon's life."""
    ctx = app[CTX]
    path = ctx.config.steering.geoip_db
    if path is None:
        yield
        return
    import maxminddb

    try:
        reader = maxminddb.open_database(str(path))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"steering.geoip_db {path}: {exc}") from None
    ctx.locator = MmdbLocator(reader)
    yield
    ctx.locator = None
    reader.close()


async def _mqtt(app: web.Application) -> AsyncIterator[None]:
    ctx = app[CTX]
    await ctx.session.start()
    yield
    await ctx.session.stop()


async def _prune_loop(ctx: ControlContext) -> None:
    t = ctx.config.telemetry
    while True:
        try:
            removed = await ctx.store.prune_telemetry(time.time(), raw_s=t.raw_retention_s,
                                                      minute_s=t.minute_retention_s, hour_s=t.hour_retention_s)
            if removed:
                log.info("telemetry retention removed %d rows", removed)
        except Exception:
            log.exception("telemetry pruning failed")
        await asyncio.sleep(600)


async def _background(app: web.Application) -> AsyncIterator[None]:
    ctx = app[CTX]
    ctx.tasks.spawn(ctx.ingest.run(), name="telemetry-ingest")
    ctx.tasks.spawn(_prune_loop(ctx), name="telemetry-prune")
    ctx.tasks.spawn(ctx.registry.refresh_loop(), name="steering-refresh")
    if ctx.config.fill.interval_s > 0:
        ctx.tasks.spawn(fill_loop(ctx), name="fill-plan")
    yield
    await ctx.tasks.aclose()


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


async def openapi_json(request: web.Request) -> web.Response:
    return web.json_response(openapi.document(request.app[CTX].api_url))
