"""HTTP for recommendations: viewing events, homepage rows, catalog metadata, training and export.

``POST /v1/events`` and ``GET /v1/profiles/{id}/home`` are public like ``/v1/play``: players post
events and appliances fetch candidate rows without operator tokens.  Both are bounded (body size,
batch length, id syntax) and neither can change anything but the log it appends to.  Catalog writes
and training need an admin token; reading them a read token.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from aiohttp import web

from shared.errors import InvalidInput, NotFound
from shared.ids import check_id, is_valid_id
from shared.web import read_json

from . import ab, catalog
from .api_ops import _body, actor
from .context import CTX, ControlContext
from .recs_service import RecsService
from .store import TitleRecord

CATALOG_BATCH = 1000


def _recs(ctx: ControlContext) -> RecsService:
    if ctx.recs is None:
        raise web.HTTPServiceUnavailable(reason="recommendations are starting")
    return ctx.recs


async def lifecycle(app: web.Application) -> AsyncIterator[None]:
    """cleanup_ctx entry: after the store opens, before it closes."""
    ctx = app[CTX]
    service = RecsService(ctx.store, ctx.config.recs, ctx.config.recs_dir)
    await service.start()
    ctx.recs = service
    yield
    ctx.recs = None
    await service.stop()


async def on_published(ctx: ControlContext, record: TitleRecord) -> None:
    """A title was published: seed its catalog entry (fields an operator set are kept) and its artwork."""
    art = await asyncio.to_thread(catalog.artwork_variants, ctx.config.origin_dir / record.title_id)
    fields = {"name": record.name, "genres": record.genres, "artwork": art}
    await ctx.store.put_catalog([(record.title_id, fields)], actor="system", only_missing=True)
    if ctx.recs is not None:
        ctx.recs.invalidate()


async def post_events(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    doc = await _body_any(request)
    result = await _recs(ctx).add_events(doc)
    ctx.metrics.events.labels("accepted").inc(result["accepted"])
    ctx.metrics.events.labels("duplicate").inc(result["duplicates"])
    ctx.metrics.events.labels("rejected").inc(len(result["rejected"]))
    if result["accepted"] == 0 and result["duplicates"] == 0:
        return web.json_response({"error": f"every event was rejected; the first: {result['rejected'][0]['error']}",
                                  **result}, status=400)
    return web.json_response(result)


async def _body_any(request: web.Request) -> object:
    return await read_json(request, request.app[CTX].config.http.max_body_bytes)


async def profile_home(request: web.Request) -> web.Response:
    profile_id = check_id(request.match_info["profile_id"], "profile id")
    ctx = request.app[CTX]
    doc = await _recs(ctx).home(profile_id)
    ctx.metrics.home_requests.labels("model" if doc.get("model_version") else "fallback").inc()
    return web.json_response(doc, headers={"Cache-Control": "no-store"})


async def list_catalog(request: web.Request) -> web.Response:
    entries = await request.app[CTX].store.list_catalog()
    return web.json_response({"titles": [e.to_json() for e in entries]})


async def show_catalog(request: web.Request) -> web.Response:
    title_id = check_id(request.match_info["title_id"], "title id")
    return web.json_response((await request.app[CTX].store.get_catalog(title_id)).to_json())


async def put_catalog(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    entries = catalog.parse_entries(await _body(request))
    if len(entries) > CATALOG_BATCH:
        raise InvalidInput(f"at most {CATALOG_BATCH} entries per request; send several")
    changed = await ctx.store.put_catalog(entries, actor=actor(request))
    _recs(ctx).invalidate()
    return web.json_response({"received": len(entries), "changed": changed})


async def recs_status(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    body = _recs(ctx).status()
    body["events"] = await ctx.store.count_events()
    return web.json_response(body)


async def start_training(request: web.Request) -> web.Response:
    job = _recs(request.app[CTX]).train(actor(request))
    return web.json_response(job.to_json(), status=202)


async def export(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    if name in ("interactions.csv", "catalog.csv"):
        interactions, cat = await _recs(request.app[CTX]).export()
        text = interactions if name == "interactions.csv" else cat
    elif name in ("choices.csv", "plays.csv"):
        choices, plays = await _recs(request.app[CTX]).export_choices()
        text = choices if name == "choices.csv" else plays
    else:
        raise InvalidInput("export is interactions.csv, catalog.csv, choices.csv or plays.csv")
    return web.Response(text=text, content_type="text/csv")


async def artwork(request: web.Request) -> web.StreamResponse:
    """Public: one artwork variant of a published title (marketing stills are not protected content)."""
    ctx = request.app[CTX]
    title_id = check_id(request.match_info["title_id"], "title id")
    name = request.match_info["name"]
    if not name.endswith(".jpg") or not is_valid_id(name[:-4]):
        raise InvalidInput("artwork is <variant>.jpg")
    await ctx.store.get_title(title_id)  # 404 unless published
    path = ctx.config.origin_dir / title_id / "artwork" / name
    if not await asyncio.to_thread(path.is_file):
        raise NotFound(f"no artwork {name} for {title_id}")
    return web.FileResponse(path, headers={"Cache-Control": "public, max-age=86400",
                                           "Access-Control-Allow-Origin": "*"})


async def create_experiment(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    service = _recs(ctx)
    definition = ab.parse_definition(await _body(request), service.versions())
    await ctx.store.create_experiment(definition["id"], definition, actor=actor(request))
    await service.refresh_experiments()
    return web.json_response({k: v for k, v in definition.items() if k != "salt"}, status=201)


async def list_experiments(request: web.Request) -> web.Response:
    docs = await request.app[CTX].store.list_experiments()
    return web.json_response({"experiments": [{k: v for k, v in d.items() if k != "salt"} for d in docs]})


async def stop_experiment(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    experiment_id = check_id(request.match_info["experiment_id"], "experiment id")
    await ctx.store.stop_experiment(experiment_id, actor=actor(request))
    await _recs(ctx).refresh_experiments()
    return web.json_response({"id": experiment_id, "state": "stopped"})


async def experiment_report(request: web.Request) -> web.Response:
    experiment_id = check_id(request.match_info["experiment_id"], "experiment id")
    return web.json_response(await _recs(request.app[CTX]).report(experiment_id))


def add_routes(app: web.Application) -> None:
    r = app.router
    r.add_post("/v1/experiments", create_experiment)
    r.add_get("/v1/experiments", list_experiments)
    r.add_post("/v1/experiments/{experiment_id}/stop", stop_experiment)
    r.add_get("/v1/experiments/{experiment_id}/report", experiment_report)
    r.add_get("/v1/artwork/{title_id}/{name}", artwork)
    r.add_post("/v1/events", post_events)
    r.add_get("/v1/profiles/{profile_id}/home", profile_home)
    r.add_get("/v1/catalog", list_catalog)
    r.add_put("/v1/catalog", put_catalog)
    r.add_get("/v1/catalog/{title_id}", show_catalog)
    r.add_get("/v1/recs", recs_status)
    r.add_post("/v1/recs/train", start_training)
    r.add_get("/v1/recs/export/{name}", export)

