"""aiohttp pieces both daemons use: error translation, /metrics, and the serve loop.

:func:`serve` owns a daemon's life: it starts the app, tells systemd READY only once the socket
accepts, pings the watchdog from the event loop, and on SIGTERM/SIGINT says STOPPING, stops
accepting and lets in-flight requests finish within ``shutdown_timeout``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from .errors import NearcastError
from .systemd import Notifier, Watchdog
from .tasks import TaskGroup

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
SiteFactory = Callable[[web.AppRunner, str, int], web.BaseSite]


def json_error(status: int, message: str, **extra: object) -> web.Response:
    return web.json_response({"error": message, **extra}, status=status)


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Domain errors become JSON bodies with their status; nothing else leaks a traceback."""
    try:
        return await handler(request)
    except NearcastError as exc:
        return json_error(exc.http_status, str(exc))
    except web.HTTPException as exc:
        if exc.status >= 400 and exc.content_type != "application/json" and not exc.text:
            return json_error(exc.status, exc.reason)
        if exc.status >= 400 and exc.content_type != "application/json":
            return json_error(exc.status, exc.text or exc.reason, **({"allow": exc.headers["Allow"]}
                                                                       if "Allow" in exc.headers else {}))
        raise
    except (asyncio.CancelledError, ConnectionResetError):
        raise
    except Exception:
        log.exception("unhandled error on %s %s", request.method, request.path)
        return json_error(500, "internal error")


def metrics_handler(registry: CollectorRegistry) -> Handler:
    async def handle(request: web.Request) -> web.Response:
        body = generate_latest(registry)
        resp = web.Response(body=body)
        resp.content_type = CONTENT_TYPE_LATEST.split(";")[0]
        resp.charset = "utf-8"
        return resp

    return handle


#: Seconds a bounded body (:func:`read_body`, :func:`read_json`) may take to arrive; unset: no deadline.
BODY_TIMEOUT = web.AppKey("body_timeout_s", float)


async def read_body(request: web.Request, max_bytes: int) -> bytes:
    """The whole request body, or 413 once it passes ``max_bytes`` (408 past the app's ``BODY_TIMEOUT``).

    ``StreamReader.read(n)`` returns what has arrived so far, not ``n`` bytes: a body that comes in
    more than one TCP segment must be read until its end.  The deadline is the slow-body twin of the
    head deadline in :mod:`shared.httplimits`: a JSON body trickling in a byte at a time is cut off.
    """
    chunks: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(request.app.get(BODY_TIMEOUT)):
            while True:
                chunk = await request.content.read(max_bytes + 1 - size)
                if not chunk:
                    return b"".join(chunks)
                size += len(chunk)
                if size > max_bytes:
                    raise web.HTTPRequestEntityTooLarge(max_size=max_bytes, actual_size=size)
                chunks.append(chunk)
    except TimeoutError:
        raise web.HTTPRequestTimeout(text="request body not received in time") from None


async def read_json(request: web.Request, max_bytes: int = 1 << 20) -> object:
    """The request body as JSON, bounded, with a clear 4xx for anything else."""
    from .errors import InvalidInput

    if request.content_length is not None and request.content_length > max_bytes:
        raise web.HTTPRequestEntityTooLarge(max_size=max_bytes, actual_size=request.content_length)
    data = await read_body(request, max_bytes)
    try:
        return json.loads(data)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise InvalidInput("request body is not valid JSON") from None


async def serve(app: web.Application, *, host: str, port: int, shutdown_timeout: float = 10.0,
                notifier: Notifier | None = None, on_bound: Callable[[int], None] | None = None,
                healthy: Callable[[], bool] = lambda: True, stop: asyncio.Event | None = None,
                reuse_port: bool = False, site: SiteFactory | None = None,
                handler_options: Mapping[str, Any] | None = None) -> None:
    """Run ``app`` until SIGTERM/SIGINT (or ``stop`` is set).

    ``site`` builds the listening site from the runner (default: a ``TCPSite``; the edge passes its
    fast path); ``handler_options`` go to aiohttp's request handler (timeouts, header limits).
    """
    notifier = notifier or Notifier()
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    runner = web.AppRunner(app, shutdown_timeout=shutdown_timeout, access_log=None, handle_signals=False,
                           **(handler_options or {}))
    tasks = TaskGroup("serve")
    try:
        await runner.setup()
        listener = (site(runner, host, port) if site is not None
                    else web.TCPSite(runner, host, port, reuse_port=reuse_port or None))
        await listener.start()
        bound = int(runner.addresses[0][1]) if runner.addresses else port
        log.info("serving on http://%s:%d", host, bound)
        if on_bound is not None:
            on_bound(bound)
        notifier.ready(f"serving on {host}:{bound}")
        tasks.spawn(Watchdog(notifier, healthy).run(), name="watchdog")
        await stop.wait()
        log.info("stopping: draining in-flight requests (up to %.0fs)", shutdown_timeout)
        notifier.stopping()
    finally:
        # Keep our handlers through the drain: a second SIGTERM must not kill in-flight responses.
        await tasks.aclose()
        await runner.cleanup()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
