"""Titles, the origin and signed file sets over HTTP; fill planning and telemetry reports for operators."""

from __future__ import annotations

import asyncio
import json
import math
import time
from pathlib import Path
from typing import Any

from aiohttp import web

from shared import tokens
from shared.errors import InvalidInput, NotFound
from shared.ids import check_id

from . import api_recs, origin
from .api_ops import _body, actor
from .context import CTX
from .fill_runner import run_fill
from .ingest import misses_by_site
from .play import client_ip
from .store import TitleRecord


def title_json(t: TitleRecord) -> dict[str, Any]:
    return {"title_id": t.title_id, "name": t.name, "genres": list(t.genres), "version": t.version, "size": t.size,
            "created": t.created, "released": t.released, "live": t.live, "encrypted": t.encrypted}


async def register_title(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    doc = await _body(request)
    released = doc.get("released")
    if released is not None and (isinstance(released, bool) or not isinstance(released, int | float)
                                 or not math.isfinite(released) or not 0 <= released < 1e11):
        raise InvalidInput("released must be a Unix time")
    title_id = check_id(doc.get("title_id"), "title id")
    record = origin.register(ctx.config.origin_dir, ctx.config.state.dir / "filesets", ctx.signer, title_id,
                             released=float(released) if released is not None else None)
    await ctx.store.put_title(record, actor=actor(request))
    ctx.registry.set_title(record.title_id, record.version, record.size)
    await api_recs.on_published(ctx, record)
    return web.json_response(title_json(record), status=201)


async def list_titles(request: web.Request) -> web.Response:
    return web.json_response({"titles": [title_json(t) for t in await request.app[CTX].store.list_titles()]})


async def show_title(request: web.Request) -> web.Response:
    title = await request.app[CTX].store.get_title(check_id(request.match_info["title_id"], "title id"))
    return web.json_response(title_json(title))


async def title_ladder(request: web.Request) -> web.Response:
    """Why the title's ladder is what it is: the rungs, every measured (bitrate, quality) point, the source."""
    ctx = request.app[CTX]
    title_id = check_id(request.match_info["title_id"], "title id")
    await ctx.store.get_title(title_id)
    doc = await asyncio.to_thread(_read_fileset, ctx.config.origin_dir / title_id / "fileset.json")
    ladder = doc.get("ladder") if isinstance(doc.get("ladder"), dict) else {}
    return web.json_response({"title_id": title_id, "ladder": ladder, "source": doc.get("source"),
                              "duration": doc.get("duration")})


def _read_fileset(path: Path) -> dict[str, Any]:
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        raise NotFound(f"{path.parent.name} has no encoder manifest (registered from files, not ingested)") from None
    except (OSError, ValueError) as exc:
        raise InvalidInput(f"{path.parent.name}: encoder manifest unreadable ({exc})") from None
    return doc if isinstance(doc, dict) else {}


async def fileset(request: web.Request) -> web.StreamResponse:
    """Public: the signed file-set manifest of one title version (its signature is its protection)."""
    ctx = request.app[CTX]
    title_id = check_id(request.match_info["title_id"], "title id")
    version = check_id(request.match_info["version"], "file set version")
    path = ctx.config.state.dir / "filesets" / title_id / f"{version}.json"
    if not path.is_file():
        raise NotFound(f"no file set {title_id}@{version}")
    return web.FileResponse(path, headers={"Content-Type": "application/json"})


async def origin_file(request: web.Request) -> web.StreamResponse:
    """Origin content for fills: token-checked like an edge, served with ranges by FileResponse."""
    ctx = request.app[CTX]
    title_id = check_id(request.match_info["title_id"], "title id")
    relative = request.match_info["path"]
    ip = client_ip(request.remote, None, ())
    tokens.verify(ctx.keys, request.match_info["token"], path=f"{title_id}/{relative}", client_ip=ip)
    return web.FileResponse(origin.content_path(ctx.config.origin_dir, title_id, relative))


async def fill_plan(request: web.Request) -> web.Response:
    """GET shows what a plan would change; POST publishes it."""
    ctx = request.app[CTX]
    publish = request.method == "POST"
    return web.json_response(await run_fill(ctx, publish=publish, actor=actor(request)))


async def fill_status(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    states = await ctx.store.fill_states()
    return web.json_response({"appliances": [
        {"appliance_id": s.appliance_id, "generation": s.generation, "published": s.published,
         "titles": len(s.titles), "bytes_planned": s.bytes_planned, "ack": s.ack_status or "none",
         "progress": s.progress, "ack_ts": s.ack_ts, "detail": s.detail,
         "titles_complete": len(ctx.registry.complete_titles(s.appliance_id))} for s in states]})


def _hours(request: web.Request) -> float:
    raw = request.query.get("hours", "24")
    try:
        hours = float(raw)
    except ValueError:
        raise InvalidInput("hours must be a number") from None
    if not math.isfinite(hours) or not 0 < hours <= 24 * 400:
        raise InvalidInput("hours must be in (0, 9600]")
    return hours


async def misses(request: web.Request) -> web.Response:
    """Misses by cause per site over the last ``hours`` (from the ``miss.<cause>`` counters)."""
    ctx = request.app[CTX]
    since = time.time() - _hours(request) * 3600
    rows = await ctx.store.rollups(resolution_s=3600, since=since - since % 3600)
    sites = {aid: rec.meta.site for aid, rec in ctx.registry.appliances.items()}
    data = misses_by_site([(r.appliance_id, r.name, r.total) for r in rows], sites)
    return web.json_response({"since": since, "sites": data})


async def rollups(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    res = request.query.get("resolution", "60")
    if res not in ("60", "3600"):
        raise InvalidInput("resolution must be 60 or 3600")
    aid = request.query.get("appliance")
    if aid is not None:
        check_id(aid, "appliance id")
    since = time.time() - _hours(request) * 3600
    rows = await ctx.store.rollups(resolution_s=int(res), since=since, appliance_id=aid)
    return web.json_response({"rollups": [{"appliance_id": r.appliance_id, "bucket": r.bucket, "name": r.name,
                                           "total": r.total, "peak": r.peak, "samples": r.samples}
                                          for r in rows[-10_000:]]})


def add_routes(app: web.Application) -> None:
    r = app.router
    r.add_get("/v1/titles", list_titles)
    r.add_post("/v1/titles", register_title)
    r.add_get("/v1/titles/{title_id}", show_title)
    r.add_get("/v1/titles/{title_id}/ladder", title_ladder)
    r.add_get("/v1/filesets/{title_id}/{version}", fileset)
    r.add_get("/v1/origin/{token}/{title_id}/{path:.+}", origin_file)
    r.add_get("/v1/fill/plan", fill_plan)
    r.add_post("/v1/fill/plan", fill_plan)
    r.add_get("/v1/fill/status", fill_status)
    r.add_get("/v1/telemetry/misses", misses)
    r.add_get("/v1/telemetry/rollups", rollups)
