"""``GET|HEAD|OPTIONS /v1/content/{token}/{title_id}/{path}``: the segment server.

Order of checks, each before any filesystem access: the raw path is parsed and every segment held to
a safe alphabet (:mod:`edge.paths`), then the token is verified for ``<title_id>/<path>`` and the
client address.  Only then is the served version looked up in the :class:`~edge.catalog.Catalog`
(complete, verified sets only) and the file resolved; its real path must equal the expected path
exactly, so a symlink anywhere below the cache's ``sets/`` directory is refused rather than followed.

Segments go out with ``sendfile`` (:mod:`edge.sendfile`, which says why not ``FileResponse``);
manifests and init segments come from a bounded memory cache answered with the same range and
conditional rules (:mod:`edge.ranges`).  A file this appliance does not hold is redirected (302)
to the token's next fallback; it is never a 5xx.

The decisions live in :meth:`ContentServer.resolve`, which awaits nothing and returns a
:class:`~edge.sendfile.Reply`; two thin shells put it on the wire: :meth:`ContentServer.handle` for
aiohttp, and :mod:`edge.fastpath`, the HTTP/1.1 server that carries content requests by default.
Both call :meth:`~ContentServer.begin` and :meth:`~ContentServer.end` around a request, so every
metric and the demand accounting are the same whichever shell served it, and latency and bytes
include the body.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import stat
import time
import weakref
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

from shared import tokens
from shared.errors import TokenError

from . import ranges
from .beneath import Opener, SymlinkRefused
from .catalog import Catalog
from .memcache import CachedBody, Key, MemoryCache
from .metrics import EdgeMetrics
from .paths import BadPath, ContentRequest, content_type, kind_of, memory_cacheable, parse_content_path
from .sendfile import Reply, fd_reply, send_reply

log = logging.getLogger(__name__)

GRANT_CACHE = 4096
PATH_CACHE = 4096  # parsed raw paths (pure, so safe to remember); bounded like the grant cache
PLAIN_CACHE = 1024  # rendered header lines of memory-cached files
# Request headers that make a memory answer depend on more than the file: such requests take the full rules.
CONDITIONAL_HEADERS = frozenset({"range", "if-range", "if-none-match", "if-modified-since"})
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


_STATUS_TEXT = {code: str(code) for code in (200, 206, 302, 304, 400, 403, 404, 416)}

# Request headers, looked up by lower-case name (aiohttp's CIMultiDict, or the fast path's plain dict).
Headers = Mapping[str, str]


@dataclass(slots=True)
class Exchange:
    """One content request as both shells see it; ``kind`` and ``title`` are filled in once the path parses."""

    method: str
    raw_path: str
    headers: Headers
    client_ip: str
    kind: str = "other"
    title: str = ""
    # Whether any of CONDITIONAL_HEADERS is present, when the shell already knows (the fast path
    # decides it once per distinct request head); None: look it up in ``headers``.
    conditional: bool | None = None

    def is_conditional(self) -> bool:
        if self.conditional is None:
            self.conditional = any(h in self.headers for h in CONDITIONAL_HEADERS)
        return self.conditional


@dataclass(slots=True)
class PendingRead:
    """A manifest or init segment on disk, not yet in memory: read it off the loop, then answer.

    ``fd`` is the descriptor :mod:`edge.beneath` opened (no symlink anywhere below ``sets/``): the
    bytes are read from it, never by path again, so nothing swapped in after the check is read.
    :meth:`ContentServer.read` closes it; :meth:`close` is for a caller that drops the read.
    """

    real: str  # for log lines only
    fd: int
    size: int
    key: Key
    mtime_ns: int
    creq: ContentRequest
    kind: str
    grant: tokens.Grant
    headers: Headers

    def close(self) -> None:
        if self.fd >= 0:
            fd, self.fd = self.fd, -1
            os.close(fd)


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
        self._opener = Opener(self._base)
        self.catalog = catalog
        self.memory = memory
        self.metrics = metrics
        self.options = options
        self.follow_catalog_file = follow_catalog_file
        self.in_flight = 0
        self.use_sendfile = True
        self._stats = metrics.serving
        self._hits = metrics.serving.hits
        self._grants: OrderedDict[tuple[str, str], tokens.Grant] = OrderedDict()
        self._paths: OrderedDict[str, tuple[ContentRequest, str]] = OrderedDict()
        self._plain: OrderedDict[Key, tuple[str, str, dict[str, str], bytes]] = OrderedDict()
        self._plain_files: OrderedDict[Key, tuple[tuple[int, int], dict[str, str], bytes]] = OrderedDict()
        self.on_hit: Callable[[tuple[str, str]], None] | None = None  # popularity for eviction (agent only)
        #: Agent only (it has the index): is this sha256 the manifest's for the file?  False: damaged.
        self.verify_read: Callable[[Key, str], Awaitable[bool]] | None = None
        self._transports: weakref.WeakSet[asyncio.BaseTransport] = weakref.WeakSet()
        metrics.connections.set_function(self._open_connections)
        # Read at scrape time rather than inc/dec'd (two locked updates) on every request.
        metrics.in_flight.set_function(lambda: float(self.in_flight))

    def _open_connections(self) -> float:
        return float(sum(1 for t in self._transports if not t.is_closing()))

    def track(self, transport: asyncio.BaseTransport) -> None:
        """Count this connection in the open-connections gauge (the fast path does it once per connection,
        the aiohttp shell per request: a set, so repeats cost nothing but the call)."""
        self._transports.add(transport)

    def begin(self) -> float:
        """Every shell calls this when a content request starts, and :meth:`end` when it is done."""
        self.in_flight += 1
        return time.perf_counter()

    def end(self, ex: Exchange, reply: Reply | None, started: float, *, aborted: bool = False) -> None:
        """Requests, bytes and latency by status and kind; per-title demand for what was served."""
        self.in_flight -= 1
        elapsed = time.perf_counter() - started
        if aborted or reply is None:
            self._stats.record("499", ex.kind, 0, elapsed)
            return
        code = reply.status
        sent = reply.body_bytes(ex.method)
        self._stats.record(_STATUS_TEXT.get(code) or str(code), ex.kind, sent, elapsed)
        if ex.title and code < 400:
            self.metrics.demand.add(ex.title, sent)

    def resolve(self, ex: Exchange) -> Reply | PendingRead:
        """The answer to a GET or HEAD, decided without awaiting anything (sans-IO, like the rules it calls).

        A file answer holds an open descriptor (``reply.fd``) the caller sends and closes; a small file
        not yet in memory comes back as a :class:`PendingRead` for :meth:`read`.
        """
        raw = ex.raw_path.split("?", 1)[0]
        parsed = self._paths.get(raw)
        if parsed is None:
            try:
                creq = parse_content_path(raw)
            except BadPath as exc:
                self.metrics.refused.labels("path").inc()
                return error_reply(400, str(exc))
            parsed = self._paths[raw] = (creq, kind_of(creq.path))
            if len(self._paths) > PATH_CACHE:
                self._paths.popitem(last=False)
        creq, ex.kind = parsed
        ex.title = creq.title_id
        try:
            grant = self._verify(creq, ex.client_ip)
        except TokenError as exc:
            self.metrics.refused.labels("token").inc()
            return error_reply(403, str(exc))
        return self._serve(ex, creq, grant)

    async def read(self, pending: PendingRead) -> Reply:
        """Read a manifest or init segment off the event loop, keep it in memory, answer from there."""
        verify = self.verify_read
        fd, pending.fd = pending.fd, -1  # the reading thread owns it now, and closes it
        try:
            body, digest = await _read_small(fd, pending.size, digest=verify is not None)
        except OSError as exc:
            log.warning("cannot read %s: %s", pending.real, exc)
            return self._miss(pending.creq, pending.grant, "health")
        if verify is not None and not await verify(pending.key, digest):
            return self._miss(pending.creq, pending.grant, "corrupt")  # never kept, never served
        entry = CachedBody.of(body, pending.mtime_ns)
        self.memory.put(pending.key, entry)
        self.metrics.memory_cache_bytes.set(self.memory.used)
        self._hits["disk"] += 1
        return _from_memory(pending.headers, entry, pending.creq.path, pending.kind)

    def add_routes(self, app: web.Application) -> None:
        app.router.add_get("/v1/content/{rest:.*}", self.handle)  # and HEAD
        app.router.add_route("OPTIONS", "/v1/content/{rest:.*}", self.preflight)

    async def preflight(self, request: web.Request) -> web.Response:
        return web.Response(status=204, headers=PREFLIGHT_HEADERS)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """The aiohttp shell (``http.fast_path = false``, and connections handed over by :mod:`edge.fastpath`)."""
        if request.transport is not None:
            self.track(request.transport)
        started = self.begin()
        ex = Exchange(request.method, request.raw_path, request.headers, request.remote or "")
        reply: Reply | None = None
        aborted = False
        try:
            answer = self.resolve(ex)
            reply = answer if isinstance(answer, Reply) else await self.read(answer)
            try:
                return await _respond(request, reply, use_sendfile=self.use_sendfile)
            except ConnectionError:  # the client went away mid-body: nothing to answer, nothing to log
                aborted = True
                raise
        finally:
            if reply is not None:
                reply.close()
            self.end(ex, reply, started, aborted=aborted)

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

    def _serve(self, ex: Exchange, creq: ContentRequest, grant: tokens.Grant) -> Reply | PendingRead:
        if self.follow_catalog_file:
            self.catalog.refresh()
        version = self.catalog.get(creq.title_id)
        if version is None:
            return self._miss(creq, grant, "content")
        if self.options.max_in_flight and self.in_flight > self.options.max_in_flight:
            return self._miss(creq, grant, "health")
        key = (creq.title_id, version, creq.path)
        if self.on_hit is not None:
            self.on_hit((creq.title_id, version))
        cached = self.memory.get(key)
        if cached is not None:
            self._hits["memory"] += 1
            if ex.is_conditional():
                return _from_memory(ex.headers, cached, creq.path, ex.kind)
            return self._plain_reply(key, cached, creq.path, ex.kind)
        rel = f"{creq.title_id}/{version}/{creq.path}"
        try:
            fd = self._opener.open(rel)
        except SymlinkRefused:
            self.metrics.refused.labels("symlink").inc()
            log.warning("refusing %s: a symlink in its file set", creq.token_path)
            return error_reply(404, "not found")
        except (FileNotFoundError, NotADirectoryError):
            return self._miss(creq, grant, "content")
        except OSError as exc:
            log.warning("cannot open %s/%s: %s", self._base, rel, exc)
            return self._miss(creq, grant, "health")
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                os.close(fd)
                return self._miss(creq, grant, "content")
            if memory_cacheable(creq.path, st.st_size):
                return PendingRead(f"{self._base}/{rel}", fd, st.st_size, key, st.st_mtime_ns, creq, ex.kind, grant,
                                   ex.headers)
        except OSError as exc:
            os.close(fd)
            log.warning("cannot stat %s/%s: %s", self._base, rel, exc)
            return self._miss(creq, grant, "health")
        self._hits["disk"] += 1
        if ex.is_conditional():
            headers = {"Content-Type": content_type(creq.path), "Cache-Control": cache_control(ex.kind),
                       **CORS_HEADERS}
            return fd_reply(fd, st, headers, ex.headers)
        return self._plain_file_reply(key, fd, st, creq.path, ex.kind)

    def _plain_file_reply(self, key: Key, fd: int, st: os.stat_result, path: str, kind: str) -> Reply:
        """A 200 with the whole file for a request with no range or conditional header: its header lines
        depend only on the key and the file's (mtime, size), so they are built and rendered once."""
        validator = (st.st_mtime_ns, st.st_size)
        plain = self._plain_files.get(key)
        if plain is None or plain[0] != validator:
            headers = {"Content-Type": content_type(path), "Cache-Control": cache_control(kind), **CORS_HEADERS}
            reply = fd_reply(fd, st, headers, {})
            rendered = "".join(f"{k}: {v}\r\n" for k, v in reply.headers.items()).encode("latin-1")
            self._plain_files[key] = (validator, reply.headers, rendered)
            if len(self._plain_files) > PLAIN_CACHE:
                self._plain_files.popitem(last=False)
            reply.rendered = rendered
            return reply
        return Reply(200, plain[1], fd=fd, start=0, stop=st.st_size, rendered=plain[2])

    def close(self) -> None:
        self._opener.close()

    def _plain_reply(self, key: Key, entry: CachedBody, path: str, kind: str) -> Reply:
        """A 200 from memory for a request with no range or conditional header.  Its headers depend only
        on the key and the entry's validators, so they are built and rendered once per entry (a new
        version is a new key, a re-read file new validators); no body is kept here, only in memory."""
        plain = self._plain.get(key)
        if plain is None or plain[0] != entry.etag or plain[1] != entry.last_modified_http:
            headers = _from_memory({}, entry, path, kind).headers
            rendered = "".join(f"{k}: {v}\r\n" for k, v in headers.items()).encode("latin-1")
            plain = self._plain[key] = (entry.etag, entry.last_modified_http, headers, rendered)
            if len(self._plain) > PLAIN_CACHE:
                self._plain.popitem(last=False)
        # A fresh Reply each time (callers close theirs); the headers dict is shared and never mutated.
        return Reply(200, plain[2], entry.body, rendered=plain[3])

    def _miss(self, creq: ContentRequest, grant: tokens.Grant, cause: str) -> Reply:
        self.metrics.misses.labels(cause).inc()
        target = next_source(grant.fallbacks, self.options.self_urls)
        if target is None:
            return error_reply(404, "not held on this appliance and no fallback given", cause=cause)
        location = f"{target.rstrip('/')}/{creq.title_id}/{creq.path}"
        return Reply(302, {"Location": location, "Cache-Control": "no-store", **CORS_HEADERS})


def _from_memory(req_headers: Headers, entry: CachedBody, path: str, kind: str) -> Reply:
    headers = {"Content-Type": content_type(path), "Cache-Control": cache_control(kind),
               "ETag": f'"{entry.etag}"', "Last-Modified": entry.last_modified_http,
               "Accept-Ranges": "bytes", **CORS_HEADERS}
    if ranges.not_modified(etag=entry.etag, last_modified_s=entry.mtime_s,
                           if_none_match=req_headers.get("if-none-match"),
                           if_modified_since=req_headers.get("if-modified-since")):
        return Reply(304, headers)
    size = len(entry.body)
    rng: ranges.ByteRange | None = None
    if ranges.range_applies(etag=entry.etag, last_modified_http=entry.last_modified_http,
                            if_range=req_headers.get("if-range")):
        try:
            rng = ranges.parse_range(req_headers.get("range"), size)
        except ranges.RangeNotSatisfiable:
            return Reply(416, {**headers, "Content-Range": f"bytes */{size}"})
    if rng is None:
        return Reply(200, headers, entry.body)
    headers["Content-Range"] = rng.content_range(size)
    return Reply(206, headers, entry.body[rng.start:rng.stop])


def error_reply(status: int, message: str, **extra: object) -> Reply:
    """The same JSON error body as :func:`shared.web.json_error`, with CORS so a player can read it."""
    body = json.dumps({"error": message, **extra}).encode()
    return Reply(status, {"Content-Type": "application/json; charset=utf-8", **CORS_HEADERS}, body)


async def _respond(request: web.Request, reply: Reply, *, use_sendfile: bool) -> web.StreamResponse:
    if reply.fd < 0:
        return web.Response(status=reply.status, headers=reply.headers, body=reply.body or None)
    return await send_reply(request, reply, use_sendfile=use_sendfile)


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


async def _read_small(fd: int, size: int, *, digest: bool = False) -> tuple[bytes, str]:
    """The bytes of the open file ``fd`` (``size`` from its fstat; a file that changed size since is an
    error) and, if asked, their sha256, read and hashed on a thread, off the loop; closes ``fd``."""
    def read() -> tuple[bytes, str]:
        with open(fd, "rb") as fh:  # takes ownership: closed on the way out
            body = fh.read(size + 1)  # one byte more tells a grown file from a whole one
        if len(body) != size:
            raise OSError(f"file changed size while being read ({size} bytes expected, {len(body)} read)")
        return body, hashlib.sha256(body).hexdigest() if digest else ""

    return await asyncio.get_running_loop().run_in_executor(None, read)
