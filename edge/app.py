"""The edge daemon's aiohttp application: one context object, one cleanup_ctx entry per resource.

Process model, chosen by measurement: one process owns MQTT, the fill agent, the SQLite index (its
writes on the writer thread) and serving.  N serving processes sharing the port with SO_REUSEPORT
were measured on the 2-core reference machine with the load generator on the same cores: two
processes served 0.67x the manifest requests/s and 0.48x the segment GB/s of one, because they
compete with each other and with the clients for the same cores.  The way to add them on a larger
appliance is already laid: serving needs only ``sets/`` (complete sets, renamed into place after
verification) and ``served.json`` (:class:`~edge.catalog.Catalog`, which a worker follows with
``ContentServer(follow_catalog_file=True)``), never the index; what they would still need is their
counters shipped to the agent for ``/metrics`` and telemetry.

Within that one process, content requests are carried by :mod:`edge.fastpath` (``http.fast_path``,
on by default), an asyncio.Protocol HTTP/1.1 server over the same decisions as the aiohttp handler,
with every other route handed to aiohttp on the same connection.  aiohttp itself was the ceiling: a
bare aiohttp hello-world reached 0.57x nginx's single worker on 1 KB bodies.  ``bench/serve.py``
(2 cores shared with wrk and other work, four runs, median of 2 each): manifests 25.4k-36.2k
req/s against nginx's 34.6k-54.2k (0.57x-0.74x, median 0.70x; 0.39-0.40x before parsed paths,
request heads and rendered memory answers were remembered, ~24 -> ~11 us of Python per request;
the aiohttp handler was 0.33x), segments 0.84x-1.13x nginx's GB/s, median 0.96x (0.69-0.73x before
they were sendfile'd from ``data_received`` with the head corked to the body, as nginx's
``tcp_nopush``).  Raising the process count remains the wrong lever on 2 cores (see above); what
is left per manifest is the event loop itself and the metric updates (prometheus_client takes a
lock for each).

Since then (session 3) a segment is opened with one ``openat2`` (:mod:`edge.beneath`) and the
serving counters are plain ints exported at scrape time (:class:`edge.metrics.ServingStats`):
in-process Python cost 51 -> ~19 us per segment, 23 -> ~8-13 us per memory-hit manifest.
``bench/serve.py --repeats 5`` on that session's machine, idle: segments 1.60 vs nginx 1.64 GB/s
(0.97x); manifests 14.5k vs 31.1k req/s (0.47x), on a machine where a bare aiohttp server reached
0.25x nginx (0.57x on the first session's), i.e. Python ran about half as fast relative to nginx;
a quick uvloop trial under the fast path gave 16.6k and 19.6k req/s against asyncio's 16.7k in one
alternation (within the machine's noise), not enough evidence to adopt it then.

Session 4 (this machine: raw asyncio Protocol answering 1 KB 70.7k req/s, uvloop 107k, nginx ~45k;
perf: ~56% of the edge's CPU in the interpreter, the rest the kernel's send/receive): what a request
head decides is remembered with it, connections are tracked once and the clock read once per read
(in-process 13.0 -> 9.9 us), manifests 0.49x -> 0.61x nginx; on uvloop (``http.event_loop``, now the
default) 0.72x in the same conditions (``bench/serve.py --repeats 3``: 34.0k vs 47.1k req/s).  Idle,
``bench/serve.py --repeats 5`` (both loops in one run): manifests 31.9k (uvloop) and 26.8k (asyncio)
vs nginx 45.8k req/s = 0.70x and 0.59x; segments 2.43 vs 2.49 GB/s = 0.97x on either loop.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from shared import tokens
from shared.envelope import Envelope
from shared.errors import ConfigError, InvalidInput
from shared.httplimits import ConnectionLimits, GuardedFactory, GuardedSite
from shared.signing import parse_public_keys
from shared.tasks import TaskGroup
from shared.web import error_middleware, metrics_handler

from .agent import DesiredHandler, EdgeAgent
from .catalog import Catalog
from .config import EdgeConfig
from .fastpath import FastSite
from .fill import FillAgent, FillOptions
from .home import HomeService
from .memcache import MemoryCache
from .metrics import EdgeMetrics
from .models import ModelManager
from .rerank import RecentDemand
from .scrub import Scrubber
from .serving import ContentServer, ServingOptions
from .store import CacheStore

log = logging.getLogger(__name__)

HOUSEKEEPING_S = 5.0


@dataclass
class EdgeContext:
    config: EdgeConfig
    metrics: EdgeMetrics
    agent: EdgeAgent
    server: ContentServer
    store: CacheStore
    fill: FillAgent
    models: ModelManager
    home: HomeService
    scrub: Scrubber
    tasks: TaskGroup = field(default_factory=lambda: TaskGroup("edge"))
    model_tasks: TaskGroup = field(default_factory=lambda: TaskGroup("edge-models"))


CTX = web.AppKey("edge", EdgeContext)


def public_url(config: EdgeConfig, bound_port: int | None = None) -> str:
    if config.http.public_url:
        return config.http.public_url.rstrip("/")
    return f"http://{config.http.host}:{bound_port or config.http.port}"


def load_token_keys(config: EdgeConfig) -> tokens.TokenKeys | None:
    path = config.security.token_keys_file
    return tokens.TokenKeys.load(path) if path is not None else None


def load_control_keys(config: EdgeConfig) -> dict[str, bytes]:
    path = config.security.control_public_keys_file
    if path is None:
        return {}
    try:
        doc = json.loads(path.read_text())
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read control public keys: {exc.strerror}") from None
    except ValueError:
        raise ConfigError(f"{path}: control public keys are not JSON") from None
    if not isinstance(doc, dict) or not all(isinstance(v, str) for v in doc.values()):
        raise ConfigError(f"{path}: expected a JSON object {{key_id: base64 public key}}")
    return parse_public_keys({str(k): v for k, v in doc.items()})


def make_server(config: EdgeConfig, metrics: EdgeMetrics, catalog: Catalog, url: str, *,
                follow_catalog_file: bool) -> ContentServer:
    options = ServingOptions(load_token_keys(config), config.security.token_leeway_s, (url,),
                             config.http.max_in_flight)
    return ContentServer(config.cache.dir, catalog, MemoryCache(config.cache.memory_bytes), metrics, options,
                         follow_catalog_file=follow_catalog_file)


def handler_options(config: EdgeConfig) -> dict[str, Any]:
    """aiohttp's own connection limits, from the same settings the fast path applies."""
    h = config.http
    return {"keepalive_timeout": h.idle_timeout_s, "max_line_size": h.max_header_bytes,
            "max_field_size": h.max_header_bytes}


def make_site(config: EdgeConfig, app: web.Application, runner: web.AppRunner, host: str,
              port: int) -> web.BaseSite:
    """The listening site: the fast path (default) in front of the app, or aiohttp alone.

    aiohttp's connections, whether its own (``fast_path = false``) or handed over by the fast path,
    get the same head deadline, head size bound and connection cap (:mod:`shared.httplimits`).
    """
    h = config.http
    guard = ConnectionLimits(max_header_bytes=h.max_header_bytes, header_timeout_s=h.header_timeout_s,
                             idle_timeout_s=h.idle_timeout_s, max_connections=h.max_connections)
    refused = app[CTX].metrics.refused

    def on_refused(reason: str) -> None:
        refused.labels(reason).inc()

    if not h.fast_path:
        return GuardedSite(runner, host, port, guard, on_refused=on_refused)
    return FastSite(runner, app[CTX].server, host, port, limits=guard, shutdown_timeout=h.shutdown_timeout_s,
                    handover=lambda server: GuardedFactory(server, guard, on_refused))


def build_app(config: EdgeConfig, *, bound_port: int | None = None) -> web.Application:
    metrics = EdgeMetrics()
    metrics.disk_capacity.set(config.cache.capacity_bytes)
    url = public_url(config, bound_port)
    agent = EdgeAgent(config, metrics, url)
    catalog = Catalog(config.cache.dir)
    store = CacheStore(config.cache.dir, config.cache.capacity_bytes, catalog)
    server = make_server(config, metrics, catalog, url, follow_catalog_file=False)
    demand = RecentDemand(config.rerank.demand_window_s)

    def on_hit(key: tuple[str, str]) -> None:
        now = time.time()
        store.record_hit(key, now)
        demand.add(key[0], now)

    server.on_hit = on_hit
    f = config.fill
    fill = FillAgent(store, metrics, FillOptions(concurrency=f.concurrency, rate_limit_bps=f.rate_limit_bps,
                                                 window=f.window, max_manifest_bytes=f.max_manifest_bytes,
                                                 retry_s=f.retry_s,
                                                 eviction_half_life_s=config.cache.eviction_half_life_s,
                                                 reserve_bytes=config.cache.reserve_bytes),
                     load_control_keys(config), agent.send_ack)
    agent.desired_handlers["fill"] = _fill_handler(fill, fill.public_keys)
    r = config.rerank
    models = ModelManager(r.models_dir or config.cache.dir / "models", fill.public_keys, metrics, agent.send_ack,
                          retry_s=r.model_retry_s)
    agent.desired_handlers["model"] = _model_handler(models, fill.public_keys)
    home = HomeService(r, config.control.api_url, models, catalog, metrics, demand)
    scrub = Scrubber(store, fill, metrics, config.scrub, server.memory)
    if config.scrub.verify_on_read:
        server.verify_read = scrub.verify_read
    ctx = EdgeContext(config, metrics, agent, server, store, fill, models, home, scrub)
    app = web.Application(middlewares=[error_middleware], client_max_size=64 * 1024)
    app[CTX] = ctx
    app.cleanup_ctx.append(_store)
    app.cleanup_ctx.append(_fill)
    app.cleanup_ctx.append(_scrub)
    app.cleanup_ctx.append(_models)
    app.cleanup_ctx.append(_mqtt)
    app.cleanup_ctx.append(_background)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics_handler(metrics.registry))
    app.router.add_get("/v1/home/{profile_id}", home.handle)
    server.add_routes(app)
    app.on_cleanup.append(_close_server)
    return app


async def _close_server(app: web.Application) -> None:
    app[CTX].server.close()


def _fill_handler(fill: FillAgent, keys: Mapping[str, bytes]) -> DesiredHandler:
    async def apply(env: Envelope[Any]) -> None:
        if not keys:
            raise InvalidInput("no control public keys configured (security.control_public_keys_file): "
                               "file-set manifests cannot be verified")
        await fill.apply(env)

    return apply


def _model_handler(models: ModelManager, keys: Mapping[str, bytes]) -> DesiredHandler:
    async def apply(env: Envelope[Any]) -> None:
        if not keys:
            raise InvalidInput("no control public keys configured (security.control_public_keys_file): "
                               "model bundles cannot be verified")
        await models.apply(env)

    return apply


async def _store(app: web.Application) -> AsyncIterator[None]:
    ctx = app[CTX]
    await ctx.store.open()
    done = await ctx.store.recover()
    if any(done.values()):
        log.warning("cache recovery: %s", done)
    ctx.metrics.disk_used.set(await ctx.store.used_bytes())
    yield
    await ctx.store.close()


async def _fill(app: web.Application) -> AsyncIterator[None]:
    ctx = app[CTX]
    await ctx.fill.start()
    ctx.tasks.spawn(ctx.fill.run(), name="fill")
    yield
    await ctx.tasks.aclose()
    await ctx.fill.stop()


async def _scrub(app: web.Application) -> AsyncIterator[None]:
    ctx = app[CTX]
    ctx.scrub.start()
    yield
    await ctx.scrub.stop()


async def _models(app: web.Application) -> AsyncIterator[None]:
    """Before MQTT, so the retained desired model finds the manager running and the active model loaded."""
    ctx = app[CTX]
    await ctx.models.start()
    await ctx.home.start()
    ctx.model_tasks.spawn(ctx.models.run(), name="models")
    yield
    await ctx.model_tasks.aclose()
    await ctx.home.stop()
    await ctx.models.stop()


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
    ctx.tasks.spawn(_housekeeping(ctx), name="housekeeping")
    yield


async def _housekeeping(ctx: EdgeContext) -> None:
    """Hits to the index (for eviction) and disk gauges, off the request path."""
    while True:
        await asyncio.sleep(HOUSEKEEPING_S)
        await ctx.store.flush_hits()
        ctx.metrics.disk_used.set(await ctx.store.used_bytes())
        try:
            ctx.metrics.fs_free.set(await asyncio.get_running_loop().run_in_executor(None, ctx.store.free_bytes))
        except OSError as exc:
            log.warning("cannot read the cache filesystem's free space: %s", exc)
        for state, n in (await ctx.store.count_by_state()).items():
            ctx.metrics.file_sets.labels(state).set(n)


async def healthz(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    mqtt_ok = ctx.agent.session.connected.is_set()
    doc: dict[str, Any] = {
        "status": "ok",
        "appliance": ctx.config.appliance.id,
        "draining": ctx.agent.draining,
        "mqtt": "connected" if mqtt_ok else "disconnected",
        "disk": "full" if ctx.fill.disk_full else "ok",  # serving goes on either way; fills stop when full
    }
    if ctx.fill.disk_full:
        doc["disk_detail"] = ctx.fill.disk_full
    return web.json_response(doc)
