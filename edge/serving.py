"""``GET|HEAD|OPTIONS /v1/content/{token}/{title_id}/{path}``: the segment server.

Order of checks, each before any filesystem access: the raw path is parsed and every segment held to
a safe alphabet (:mod:`edge.paths`), then the token is verified for ``<title_id>/<path>`` and the
client address.  Only then is the served version looked up in the :class:`~edge.catalog.Catalog`
(complete, verified sets only) and the file resolved; its real path must equal the expected path
exactly, so a symlink anywhere below the cache's ``sets/`` directory is refused rather than followed.

Segments go out with ``sendfile`` (:mod:`edge.sendfile`, which says why not ``FileResponse``);
manifests and init segments come from a bounded memory cache answered with the same range and
conditional rules (:mod:`edge.ranges`).  The
handler prepares and finishes the response itself so latency and bytes include the body.  A file
this appliance does not hold is redirected (302) to the token's next fallback; it is never a 5xx.
"""

from __future__ import annotations

import asyncio
import logging
import os
import stat
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web

from shared import tokens
from shared.errors import TokenError
from shared.web import json_error

from . import ranges
from .catalog import Catalog
from .memcache import CachedBody, MemoryCache
from .metrics import EdgeMetrics
from .paths import BadPath, ContentRequest, content_type, kind_of, memory_cacheable, parse_content_path
from .sendfile import send_file

log = logging.getLogger(__name__)

GRANT_CACHE = 4096
CORS_HEADERS = {
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Expose-Headers": "Content-Length, Content-Range, Accept-Ranges, ETag, Last-Modified",
    "Timing-Allow-Origin": "*",
}
PREFLIGHT_HEADERS = {
    **CORS_HEADERS,
    "Access-Control-Allow-Methods": "GET, HEAD, OPTIONS",
    "Access-Control-Allow-Headers": "Range, If-None-Match, If-Modified-Since, If-Range",
    "Access-Control-Max-Age": "86400",
}


def cache_control(kind: str) -> str:
    # VOD manifests can change with a new file-set version, segments never do.
    return "public, max-age=60" if kind == "manifest" else "public, max-age=86400, immutable"


@dataclass
class ServingOptions:
    token_keys: tokens.TokenKeys | None
    leeway_s: float
    self_urls: tuple[str, ...]  # our own public base URL(s): never redirect a miss back to ourselves
    max_in_flight: int = 0  # 0: unlimited


class ContentServer:
    """The serving shell around the pure path and range rules; one per process."""

    def __init__(self, cache_dir: Path, catalog: Catalog, memory: MemoryCache, metrics: EdgeMetrics,
                 options: ServingOptions, *, follow_catalog_file: bool = False) -> None:
        self.sets_dir = cache_dir / "sets"
        self.sets_dir.mkdir(parents=True, exist_ok=True)
        self._base = os.path.realpath(self.sets_dir)
        self.catalog = catalog
        self.memory = memory
        self.metrics = metrics
        self.options = options
        self.follow_catalog_file = follow_catalog_file
        self.in_flight = 0
        self.use_sendfile = True
        self._hit_memory = metrics.hits.labels("memory")
        self._hit_disk = metrics.hits.labels("disk")
        self._children: dict[tuple[str, str], tuple[Any, Any, Any]] = {}
        self._grants: OrderedDict[tuple[str, str], tokens.Grant] = OrderedDict()
        self.on_hit: Callable[[tuple[str, str]], None] | None = None  # popularity for eviction (agent only)
        self._transports: weakref.WeakSet[asyncio.BaseTransport] = weakref.WeakSet()
        metrics.connections.set_function(self._open_connections)

    def _open_connections(self) -> float:
        return float(sum(1 for t in self._transports if not t.is_closing()))

    def add_routes(self, app: web.Application) -> None:
        app.router.add_get("/v1/content/{rest:.*}", self.handle)  # and HEAD
        app.router.add_route("OPTIONS", "/v1/content/{rest:.*}", self.preflight)

    async def preflight(self, request: web.Request) -> web.Response:
        return web.Response(status=204, headers=PREFLIGHT_HEADERS)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        started = time.perf_counter()
        if request.transport is not None:
            self._transports.add(request.transport)
        self.in_flight += 1
        self.metrics.in_flight.inc()
        kind = "other"
        title = ""
        resp: web.StreamResponse | None = None
        aborted = False
        try:
            try:
                creq = parse_content_path(request.raw_path.split("?", 1)[0])
            except BadPath as exc:
                self.metrics.refused.labels("path").inc()
                resp = _with_cors(json_error(400, str(exc)))
                return resp
            kind = kind_of(creq.path)
            title = creq.title_id
            try:
                grant = self._verify(creq, request.remote or "")
            except TokenError as exc:
                self.metrics.refused.labels("token").inc()
                resp = _with_cors(json_error(403, str(exc)))
                return resp
            try:
                resp = await self._serve(request, creq, kind, grant)
            except ConnectionError:  # the client went away mid-body: nothing to answer, nothing to log
                aborted = True
                raise
            return resp
        finally:
            self.in_flight -= 1
            self.metrics.in_flight.dec()
            status = "499" if aborted or resp is None else str(resp.status)
            sent = 0 if aborted else _body_bytes(request, resp)
            self._count(status, kind, sent, time.perf_counter() - started)
            if title and not aborted and resp is not None and resp.status < 400:
                self.metrics.demand.add(title, sent)

    def _count(self, status: str, kind: str, sent: int, elapsed: float) -> None:
        # Resolving label children costs more than the increments; keep them per (status, kind).
        children = self._children.get((status, kind))
        if children is None:
            children = (self.metrics.requests.labels(status, kind), self.metrics.bytes_sent.labels(status, kind),
                        self.metrics.latency.labels(kind))
            self._children[(status, kind)] = children
        children[0].inc()
        if sent:
            children[1].inc(sent)
        children[2].observe(elapsed)

    def _verify(self, creq: ContentRequest, client_ip: str) -> tokens.Grant:
        keys = self.options.token_keys
        if keys is None:
            raise TokenError("this appliance has no token keys configured")
        # A token's MAC is checked once per (token, client); its expiry and path scope on every request.
        key = (creq.token, client_ip)
        grant = self._grants.get(key)
        if grant is None:
            grant = tokens.verify(keys, creq.token, path=creq.token_path, client_ip=client_ip,
                                  leeway_s=self.options.leeway_s)
            self._grants[key] = grant
            if len(self._grants) > GRANT_CACHE:
                self._grants.popitem(last=False)
            return grant
        if time.time() > grant.expires + self.options.leeway_s:
            del self._grants[key]
            raise TokenError("token expired")
        if not path_within(creq.token_path, grant.path_prefix):
            raise TokenError("token does not cover this path")
        return grant

    async def _serve(self, request: web.Request, creq: ContentRequest, kind: str,
                     grant: tokens.Grant) -> web.StreamResponse:
        if self.follow_catalog_file:
            self.catalog.refresh()
        version = self.catalog.get(creq.title_id)
        if version is None:
            return await self._miss(request, creq, grant, "content")
        if self.options.max_in_flight and self.in_flight > self.options.max_in_flight:
            return await self._miss(request, creq, grant, "health")
        key = (creq.title_id, version, creq.path)
        if self.on_hit is not None:
            self.on_hit((creq.title_id, version))
        cached = self.memory.get(key)
        if cached is not None:
            self._hit_memory.inc()
            return await self._from_memory(request, cached, creq.path, kind)
        real = os.path.join(self._base, creq.title_id, version, *creq.path.split("/"))
        try:
            st = lstat_no_symlinks(self._base, [creq.title_id, version, *creq.path.split("/")])
        except SymlinkRefused:
            self.metrics.refused.labels("symlink").inc()
            log.warning("refusing %s: a symlink in its file set", creq.token_path)
            return _with_cors(json_error(404, "not found"))
        except (FileNotFoundError, NotADirectoryError):
            return await self._miss(request, creq, grant, "content")
        except OSError as exc:
            log.warning("cannot stat %s: %s", real, exc)
            return await self._miss(request, creq, grant, "health")
        if not stat.S_ISREG(st.st_mode):
            return await self._miss(request, creq, grant, "content")
        if memory_cacheable(creq.path, st.st_size):
            try:
                body = await _read_small(real)
            except OSError as exc:
                log.warning("cannot read %s: %s", real, exc)
                return await self._miss(request, creq, grant, "health")
            entry = CachedBody.of(body, st.st_mtime_ns)
            self.memory.put(key, entry)
            self.metrics.memory_cache_bytes.set(self.memory.used)
            self._hit_disk.inc()
            return await self._from_memory(request, entry, creq.path, kind)
        self._hit_disk.inc()
        headers = {"Content-Type": content_type(creq.path), "Cache-Control": cache_control(kind), **CORS_HEADERS}
        try:
            return await send_file(request, real, headers, use_sendfile=self.use_sendfile)
        except (FileNotFoundError, NotADirectoryError):  # evicted between the check and the open
            return await self._miss(request, creq, grant, "content")
        except ConnectionError:
            raise
        except OSError as exc:  # O_NOFOLLOW refused a symlink, or the disk failed
            log.warning("cannot send %s: %s", real, exc)
            return await self._miss(request, creq, grant, "health")

    async def _from_memory(self, request: web.Request, entry: CachedBody, path: str,
                           kind: str) -> web.StreamResponse:
        headers = {"Content-Type": content_type(path), "Cache-Control": cache_control(kind),
                   "ETag": f'"{entry.etag}"', "Last-Modified": entry.last_modified_http,
                   "Accept-Ranges": "bytes", **CORS_HEADERS}
        if ranges.not_modified(etag=entry.etag, last_modified_s=entry.mtime_s,
                               if_none_match=request.headers.get("If-None-Match"),
                               if_modified_since=request.headers.get("If-Modified-Since")):
            return web.Response(status=304, headers=headers)
        size = len(entry.body)
        rng: ranges.ByteRange | None = None
        if ranges.range_applies(etag=entry.etag, last_modified_http=entry.last_modified_http,
                                if_range=request.headers.get("If-Range")):
            try:
                rng = ranges.parse_range(request.headers.get("Range"), size)
            except ranges.RangeNotSatisfiable:
                return web.Response(status=416, headers={**headers, "Content-Range": f"bytes */{size}"})
        if rng is None:
            return web.Response(body=entry.body, headers=headers)
        headers["Content-Range"] = rng.content_range(size)
        return web.Response(status=206, body=entry.body[rng.start:rng.stop], headers=headers)

    async def _miss(self, request: web.Request, creq: ContentRequest, grant: tokens.Grant,
                    cause: str) -> web.StreamResponse:
        self.metrics.misses.labels(cause).inc()
        target = next_source(grant.fallbacks, self.options.self_urls)
        if target is None:
            return _with_cors(json_error(404, "not held on this appliance and no fallback given", cause=cause))
        location = f"{target.rstrip('/')}/{creq.title_id}/{creq.path}"
        return web.Response(status=302, headers={"Location": location, "Cache-Control": "no-store",
                                                 **CORS_HEADERS})


class SymlinkRefused(Exception):
    """A component below the cache's sets/ directory is a symlink: never followed."""


def lstat_no_symlinks(base: str, parts: list[str]) -> os.stat_result:
    """lstat each component under ``base``; a symlink anywhere is refused, so nothing outside is read.

    Cheaper than ``realpath`` (no readlink, no string building) and exact: the file served is the
    one at this path with no indirection at all.
    """
    path = base
    st: os.stat_result | None = None
    for part in parts:
        path = f"{path}/{part}"
        st = os.lstat(path)
        if stat.S_ISLNK(st.st_mode):
            raise SymlinkRefused(path)
    assert st is not None
    return st


def path_within(path: str, prefix: str) -> bool:
    """Scope check for a canonical path (edge.paths already refused dot segments and separators)."""
    if prefix.endswith("/"):
        return path.startswith(prefix)
    return path == prefix or path.startswith(prefix + "/")


def next_source(fallbacks: tuple[str, ...], self_urls: tuple[str, ...]) -> str | None:
    """The first fallback base URL that is HTTP(S) and not this appliance (a redirect loop helps nobody)."""
    for url in fallbacks:
        if not url.startswith(("http://", "https://")) or any(c in url for c in "\r\n\x00 "):
            continue
        if any(url.startswith(own.rstrip("/") + "/") or url == own for own in self_urls if own):
            continue
        return url
    return None


def _with_cors(resp: web.Response) -> web.Response:
    resp.headers.update(CORS_HEADERS)
    return resp


def _body_bytes(request: web.Request, resp: web.StreamResponse | None) -> int:
    if resp is None or request.method == "HEAD" or resp.status in (204, 304):
        return 0
    return int(resp.content_length or 0)


async def _read_small(path: str) -> bytes:
    def read() -> bytes:
        with open(path, "rb") as fh:
            return fh.read()

    return await asyncio.get_running_loop().run_in_executor(None, read)
