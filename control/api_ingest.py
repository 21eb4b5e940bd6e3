"""Ingest over HTTP: master uploads, ingest jobs, their status and cancellation.

Uploads stream to ``<state>/uploads/`` in bounded chunks written from a thread, so a multi-GB master
neither sits in memory nor stalls the loop; the size cap is checked before and while reading.  A
master may instead be named by server path, but only inside the configured ingest directory: the
API must not become a way to read (encode) arbitrary files the daemon can see.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import IO, Any, cast

from aiohttp import web

from shared.errors import Conflict, Forbidden, InvalidInput, NearcastError, NotFound
from shared.ids import check_id

from . import api_recs, origin
from .api_ops import _body, actor
from .context import CTX, ControlContext
from .encode.errors import BadSpec
from .encode.spec import Codec, Encryption, IngestSpec, LadderMode
from .jobs import IngestJobs, Publish

log = logging.getLogger(__name__)

CHUNK = 1 << 20
SPEC_FIELDS = frozenset({"title_id", "name", "genres", "codecs", "ladder", "segment_seconds", "encrypt",
                         "upload_id", "path"})


class TooLarge(NearcastError):
    http_status = 413


def uploads_dir(ctx: ControlContext) -> Path:
    return ctx.config.state.dir / "uploads"


def _jobs(ctx: ControlContext) -> IngestJobs:
    if ctx.jobs is None:
        raise NearcastError("the ingest queue is not running")
    return ctx.jobs


# -- pure request parsing ----------------------------------------------------------------------------
def _strings(doc: dict[str, Any], key: str, default: list[str]) -> tuple[str, ...]:
    raw = doc.get(key, default)
    if isinstance(raw, str):
        raw = [s.strip() for s in raw.split(",") if s.strip()]
    if not isinstance(raw, list) or len(raw) > 50 or not all(isinstance(s, str) for s in raw):
        raise BadSpec(f"{key} must be a list of strings")
    return tuple(raw)


def spec_from_json(doc: dict[str, Any], workers: int | None) -> IngestSpec:
    """An :class:`IngestSpec` from the request body; every mistake is one :class:`BadSpec` line."""
    unknown = sorted(set(doc) - SPEC_FIELDS)
    if unknown:
        raise BadSpec(f"unknown field(s): {', '.join(k[:40] for k in unknown[:5])}")
    title_id = check_id(doc.get("title_id"), "title id")
    name = doc.get("name", title_id)
    ladder, encrypt = doc.get("ladder", "auto"), doc.get("encrypt", "none")
    seg = doc.get("segment_seconds", 4.0)
    if not isinstance(name, str):
        raise BadSpec("name must be a string")
    if not isinstance(ladder, str) or not isinstance(encrypt, str):
        raise BadSpec("ladder and encrypt must be strings")
    if isinstance(seg, bool) or not isinstance(seg, int | float) or not math.isfinite(seg):
        raise BadSpec("segment_seconds must be a number")
    return IngestSpec(title_id=title_id, name=name, genres=_strings(doc, "genres", []),
                      codecs=cast(tuple[Codec, ...], _strings(doc, "codecs", ["h264"])),
                      ladder=cast(LadderMode, ladder), segment_seconds=float(seg),
                      encrypt=cast(Encryption, encrypt), workers=workers)


def resolve_source(doc: dict[str, Any], uploads: Path, ingest_dir: Path | None) -> tuple[Path, str, bool]:
    """``(master, description, consume)`` for an upload id or a path inside the ingest directory."""
    upload_id, path = doc.get("upload_id"), doc.get("path")
    if (upload_id is None) == (path is None):
        raise InvalidInput("give exactly one of upload_id or path")
    if upload_id is not None:
        uid = check_id(upload_id, "upload id")
        master = uploads / uid
        if not master.is_file():
            raise NotFound(f"no upload {uid!r}")
        return master, f"upload:{uid}", True
    if not isinstance(path, str) or not path or len(path) > 4096 or "\x00" in path:
        raise InvalidInput("path must be a non-empty string")
    if ingest_dir is None:
        raise Forbidden("ingest by server path is disabled (no ingest.dir configured): upload the master")
    root = ingest_dir.resolve()
    candidate = Path(path)
    real = (candidate if candidate.is_absolute() else root / candidate).resolve()
    if not real.is_relative_to(root):
        raise Forbidden(f"{path[:200]} is outside the ingest directory")
    if not real.is_file():
        raise NotFound(f"no file {path[:200]} in the ingest directory")
    return real, f"path:{real}", False


# -- handlers ----------------------------------------------------------------------------------------
def _open_part(part: Path) -> IO[bytes]:
    part.parent.mkdir(parents=True, exist_ok=True)
    return open(part, "xb")


def _write(f: IO[bytes], digest: Any, chunk: bytes) -> None:
    f.write(chunk)
    digest.update(chunk)


def _finish_upload(f: IO[bytes], part: Path, target: Path) -> None:
    f.flush()
    os.fsync(f.fileno())
    f.close()
    if target.exists():
        part.unlink(missing_ok=True)
        raise Conflict(f"upload {target.name!r} already exists")
    os.replace(part, target)


async def put_upload(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    upload_id = check_id(request.match_info["upload_id"], "upload id")
    cap = ctx.config.ingest.max_upload_bytes
    if request.content_length is not None and request.content_length > cap:
        raise TooLarge(f"upload of {request.content_length} bytes is over the {cap}-byte limit")
    target = uploads_dir(ctx) / upload_id
    part = target.with_name(f".{upload_id}.part")  # ids never start with a dot: no clash with an upload
    if target.exists():
        raise Conflict(f"upload {upload_id!r} already exists")
    try:
        f = await asyncio.to_thread(_open_part, part)
    except FileExistsError:
        raise Conflict(f"upload {upload_id!r} is already in progress") from None
    digest = hashlib.sha256()
    size = 0
    try:
        async for chunk in request.content.iter_chunked(CHUNK):
            size += len(chunk)
            if size > cap:
                raise TooLarge(f"upload is over the {cap}-byte limit")
            await asyncio.to_thread(_write, f, digest, chunk)
        await asyncio.to_thread(_finish_upload, f, part, target)
    except BaseException:
        f.close()
        part.unlink(missing_ok=True)
        raise
    return web.json_response({"upload_id": upload_id, "size": size, "sha256": digest.hexdigest()}, status=201)


async def start_ingest(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    doc = await _body(request)
    workers = ctx.config.ingest.workers or None
    spec = spec_from_json(doc, workers)
    master, source, consume = await asyncio.to_thread(resolve_source, doc, uploads_dir(ctx), ctx.config.ingest.dir)
    job = await _jobs(ctx).submit(spec, master, source=source, actor=actor(request), consume=consume)
    return web.json_response(job.to_json(), status=202)


async def list_jobs(request: web.Request) -> web.Response:
    return web.json_response({"jobs": [j.to_json() for j in _jobs(request.app[CTX]).jobs()]})


async def show_job(request: web.Request) -> web.Response:
    job_id = check_id(request.match_info["job_id"], "job id")
    return web.json_response(_jobs(request.app[CTX]).get(job_id).to_json())


async def cancel_job(request: web.Request) -> web.Response:
    job_id = check_id(request.match_info["job_id"], "job id")
    job = await _jobs(request.app[CTX]).cancel(job_id)
    return web.json_response(job.to_json(), status=202)


# -- wiring ------------------------------------------------------------------------------------------
def sweep_partial_uploads(uploads: Path) -> int:
    """Partial files can only be left by a killed daemon: nobody is uploading before start-up."""
    if not uploads.is_dir():
        return 0
    parts = [p for p in uploads.iterdir() if p.name.startswith(".") and p.name.endswith(".part")]
    for p in parts:
        p.unlink(missing_ok=True)
    return len(parts)


def publisher(ctx: ControlContext) -> Publish:
    """What ``POST /v1/titles`` does, for a title a job just published: sign, record, steer."""
    async def publish(title_id: str, who: str) -> str:
        record = await asyncio.to_thread(origin.register, ctx.config.origin_dir, ctx.config.state.dir / "filesets",
                                         ctx.signer, title_id)
        await ctx.store.put_title(record, actor=who)
        ctx.registry.set_title(record.title_id, record.version, record.size)
        await api_recs.on_published(ctx, record)
        return record.version

    return publish


async def lifecycle(app: web.Application) -> AsyncIterator[None]:
    """cleanup_ctx entry: the job queue runs after the store opens and stops before it closes."""
    ctx = app[CTX]
    conf = ctx.config.ingest
    removed = await asyncio.to_thread(sweep_partial_uploads, uploads_dir(ctx))
    if removed:
        log.info("removed %d partial upload(s) a previous run left", removed)
    jobs = IngestJobs(ctx.config.origin_dir, ctx.config.content_keys_dir, ctx.config.state.dir / "ingest-jobs.json",
                      publisher(ctx), queue_max=conf.queue_max, workers=conf.workers or None)
    await jobs.start()
    ctx.jobs = jobs
    yield
    ctx.jobs = None
    await jobs.stop()


def add_routes(app: web.Application) -> None:
    r = app.router
    r.add_put("/v1/uploads/{upload_id}", put_upload)
    r.add_post("/v1/titles/ingest", start_ingest)
    r.add_get("/v1/jobs", list_jobs)
    r.add_get("/v1/jobs/{job_id}", show_job)
    r.add_post("/v1/jobs/{job_id}/cancel", cancel_job)
