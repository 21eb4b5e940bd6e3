"""The control plane's aiohttp application: context object, one cleanup_ctx entry per resource, routes."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

from aiohttp import web
from prometheus_client import Counter

from shared import topics
from shared.errors import ConfigError
from shared.httplimits import ConnectionLimits, GuardedSite
from shared.messages import REGISTRY, ControlStatus
from shared.mqtt import Announcement, MqttSession
from shared.signing import Signer
from shared.tokens import TokenKeys
from shared.web import BODY_TIMEOUT, error_middleware, metrics_handler

from . import api_content, api_ingest, api_license, api_models, api_ops, api_play, api_recs, handlers, openapi
from .auth import TokenEntry, TokenStore, auth_middleware, token_hash
from .config import ControlConfig
from .context import CTX, ControlContext
from .fill_runner import fill_loop
from .fleet import Fleet
from .ingest import IngestMetrics, TelemetryIngest
from .metrics import ControlMetrics
from .planner import PlannerConfig
from .play import client_ip, trusted_networks
from .popularity import DemandModel, PopularityConfig
from .ratelimit import RateLimits, client_middleware
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

__all__ = ["CTX", "RATE_LIMITS", "SOFTWARE", "ControlContext", "build_app", "make_site"]

# Write routes whose handlers audit every change they make themselves, with the domain's own action
# and detail (a failed one changed nothing).  Every write on any other route an operator token attempts,
# and every write refused for the token's role (403), gets an ``api.<method>`` row from the auth
# middleware; tests/control/test_hostile_api.py walks the route table and checks each write route
# leaves a row either way.
SELF_AUDITED = frozenset({
    ("POST", "/v1/tokens"), ("DELETE", "/v1/tokens/{name}"), ("POST", "/v1/enrollments"),
    ("PATCH", "/v1/appliances/{id}"), ("DELETE", "/v1/appliances/{id}"), ("POST", "/v1/appliances/{id}/ping"),
    ("POST", "/v1/appliances/{id}/drain"), ("POST", "/v1/appliances/{id}/undrain"),
    ("POST", "/v1/titles"), ("POST", "/v1/fill/plan"), ("POST", "/v1/models"), ("POST", "/v1/deployment"),
    ("POST", "/v1/deployment/rollback"), ("POST", "/v1/experiments"),
    ("POST", "/v1/experiments/{experiment_id}/stop"), ("PUT", "/v1/catalog"),
})
RATE_LIMITS = web.AppKey("rate_limits", RateLimits)
HTTP_REFUSED = web.AppKey("http_refused", Counter)


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

    async def audit(entry: TokenEntry, method: str, path: str, route: str, status: int) -> None:
        if (method, route) in SELF_AUDITED and status != 403:
            return  # its handler audits what it changes (token.create, fill.publish, ...) in the same transaction
        await store.record_audit(f"operator:{entry.name}", f"api.{method.lower()}", path[:300],
                                 {"route": route, "status": status})

    def address(request: web.Request) -> str:
        return client_ip(request.remote, request.headers.get("X-Forwarded-For"), ctx.trusted)

    rl = config.ratelimit
    limits = RateLimits.create(metrics.registry, operator_rate=rl.operator_rate, operator_burst=rl.operator_burst,
                               client_rate=rl.client_rate, client_burst=rl.client_burst)
    app = web.Application(middlewares=[
        error_middleware,
        client_middleware(limits, address),
        auth_middleware(check, _is_public, limit=lambda entry: limits.check("operator", entry.name), audit=audit),
    ], client_max_size=config.http.max_body_bytes)
    app[CTX] = ctx
    app[RATE_LIMITS] = limits
    app[BODY_TIMEOUT] = config.http.body_timeout_s
    app[HTTP_REFUSED] = Counter("nearcast_control_http_refused_total", "Connections refused by the HTTP limits "
                                "(connections: 503, limits: 431, timeout: 408)", ["reason"],
                                registry=metrics.registry)
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


def connection_limits(config: ControlConfig) -> ConnectionLimits:
    h = config.http
    return ConnectionLimits(max_header_bytes=h.max_header_bytes, header_timeout_s=h.header_timeout_s,
                            idle_timeout_s=h.idle_timeout_s, max_connections=h.max_connections)


def make_site(config: ControlConfig, app: web.Application, runner: web.AppRunner, host: str,
              port: int) -> web.BaseSite:
    """The listening site: aiohttp with a header deadline, a head size bound and a connection cap
    (:mod:`shared.httplimits`); the runner takes ``connection_limits(config).handler_options()``."""
    refused = app[HTTP_REFUSED]
    return GuardedSite(runner, host, port, connection_limits(config),
                       on_refused=lambda reason: refused.labels(reason).inc())


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
    from .commands import CommandOutbox

    ctx = app[CTX]
    ctx.commands = CommandOutbox(ctx.config.state.dir / "spool" / "commands", ctx.session, ctx.metrics.registry)
    await ctx.commands.start()
    await ctx.session.start()
    yield
    await ctx.commands.stop()
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
