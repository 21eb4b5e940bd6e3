"""Edge model API: build and list bundle versions, serve bundles, deploy in waves, roll back, status.

Writes need the admin role and are audited; ``GET /v1/bundles/V.ncb`` is public like the file-set
manifests (appliances fetch it without an operator token: the Ed25519 signature in the retained
descriptor is what protects it), and served with ``FileResponse`` so an interrupted download resumes
with a Range request.  It lives outside ``/v1/models/`` because public routes are matched by prefix.
"""

from __future__ import annotations

import asyncio
import shutil
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from aiohttp import web

from shared.bundle import SUFFIX
from shared.errors import InvalidInput, NotFound
from shared.ids import check_id, is_valid_id
from shared.schema import decode

from .api_ops import _body, actor
from .bundles import BundleRepo
from .context import CTX, ControlContext
from .deploy import DeployRequest, DeployService

MAX_SEED = 2**32 - 1
#: One build at a time, queued here rather than on worker threads (a build is CPU-bound for seconds).
BUILD_LOCK = web.AppKey("model-build-lock", asyncio.Lock)


@dataclass(frozen=True)
class BuildRequest:
    version: str | None = None
    seed: int = 0
    source: Literal["auto", "log", "synthetic"] = "auto"
    pages: int | None = None

    def __post_init__(self) -> None:
        if self.version is not None:
            check_id(self.version, "model version")
        if not 0 <= self.seed <= MAX_SEED:
            raise InvalidInput(f"seed must be in 0..{MAX_SEED}")
        if self.pages is not None and not 50 <= self.pages <= 2000:
            raise InvalidInput("pages must be in 50..2000")


@dataclass(frozen=True)
class RollbackRequest:
    reason: str = ""

    def __post_init__(self) -> None:
        if len(self.reason) > 200:
            raise InvalidInput("reason: at most 200 characters")


async def lifecycle(app: web.Application) -> AsyncIterator[None]:
    """Bundles and the deployment, loaded before MQTT starts so no ack finds them missing."""
    ctx = app[CTX]
    repo = BundleRepo(ctx.config.models_dir, ctx.signer, ctx.api_url + "/v1/bundles")
    await asyncio.to_thread(repo.load)
    service = DeployService(session=ctx.session, fleet=ctx.fleet, registry=ctx.registry, store=ctx.store, repo=repo,
                            state_path=ctx.config.deploy_state_path, tick_s=ctx.config.models.tick_s,
                            metrics=ctx.metrics.registry)
    ctx.bundles, ctx.deploy = repo, service
    await service.start(ctx.tasks)
    yield
    await service.stop()
    ctx.deploy = None


def _repo(ctx: ControlContext) -> BundleRepo:
    if ctx.bundles is None:
        raise web.HTTPServiceUnavailable(text="model store is not running")
    return ctx.bundles


def _service(ctx: ControlContext) -> DeployService:
    if ctx.deploy is None:
        raise web.HTTPServiceUnavailable(text="model deployment is not running")
    return ctx.deploy


async def list_models(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    repo = _repo(ctx)
    return web.json_response({"active": _service(ctx).active, "versions": [i.as_json() for i in repo.versions()]})


async def show_model(request: web.Request) -> web.Response:
    return web.json_response(_repo(request.app[CTX]).get(request.match_info["version"]).as_json())


async def build_model(request: web.Request) -> web.Response:
    """Train and seal a version (a few seconds; one build at a time, others wait)."""
    ctx = request.app[CTX]
    repo = _repo(ctx)
    req = decode(BuildRequest, await _body(request), "body")
    version = req.version or time.strftime("edge-%Y%m%d-%H%M%S", time.gmtime())
    titles = await ctx.store.list_titles()
    pages = req.pages or ctx.config.models.synthetic_pages
    async with request.app[BUILD_LOCK]:
        logs = ctx.config.models_dir / f".artwork-logs-{version}"
        try:
            if ctx.recs is not None:  # the artwork bandit ships fitted on every edge's logged choices
                choices, plays = await ctx.recs.export_choices()
                await asyncio.to_thread(_write_logs, logs, choices, plays)
            info = await asyncio.to_thread(repo.build, version, titles, ctx.config.origin_dir, seed=req.seed,
                                           source=req.source, synthetic_pages=pages,
                                           artwork_logs=logs if ctx.recs is not None else None)
        finally:
            await asyncio.to_thread(shutil.rmtree, logs, True)
    await ctx.store.record_audit(actor(request), "model.build", version, {
        "sha256": info.descriptor.sha256, "size": info.descriptor.size, "seed": req.seed, "source": req.source,
        "notes": str(info.metadata.get("notes", ""))[:300]})
    return web.json_response(info.as_json(), status=201)


def _write_logs(directory: Path, choices: str, plays: str) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "choices.csv").write_text(choices)
    (directory / "plays.csv").write_text(plays)


async def bundle_file(request: web.Request) -> web.StreamResponse:
    """Public: the sealed bundle bytes (Range, If-None-Match and sendfile from FileResponse)."""
    name = request.match_info["name"]
    version = name[: -len(SUFFIX)] if name.endswith(SUFFIX) else ""
    if not is_valid_id(version):
        raise NotFound(f"no bundle {name[:80]!r}")
    path = _repo(request.app[CTX]).path(version)
    return web.FileResponse(path, headers={"Cache-Control": "public, max-age=31536000, immutable",
                                           "Content-Type": "application/octet-stream"})


async def deployment_status(request: web.Request) -> web.Response:
    return web.json_response(_service(request.app[CTX]).status())


async def start_deployment(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    req = decode(DeployRequest, await _body(request), "body")
    check_id(req.version, "model version")
    return web.json_response(await _service(ctx).deploy(req, actor(request)), status=202)


async def rollback_deployment(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    req = decode(RollbackRequest, await _body(request), "body")
    return web.json_response(await _service(ctx).rollback(actor(request), req.reason), status=202)


def add_routes(app: web.Application) -> None:
    app[BUILD_LOCK] = asyncio.Lock()
    r = app.router
    r.add_get("/v1/models", list_models)
    r.add_post("/v1/models", build_model)
    r.add_get("/v1/models/{version}", show_model)
    r.add_get("/v1/bundles/{name}", bundle_file)
    r.add_get("/v1/deployment", deployment_status)
    r.add_post("/v1/deployment", start_deployment)
    r.add_post("/v1/deployment/rollback", rollback_deployment)
