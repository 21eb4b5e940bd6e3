"""Run the edge daemon: build the app from its config and serve until told to stop."""

from __future__ import annotations

import asyncio
import logging

from shared.web import serve

from .app import CTX, build_app, handler_options, make_site
from .config import EdgeConfig

log = logging.getLogger(__name__)


async def run(config: EdgeConfig, *, stop: asyncio.Event | None = None) -> None:
    port = config.http.port
    if port == 0:
        from shared.broker import free_port

        port = free_port(config.http.host)
    app = build_app(config, bound_port=port)
    ctx = app[CTX]
    await serve(app, host=config.http.host, port=port, shutdown_timeout=config.http.shutdown_timeout_s,
                stop=stop, healthy=lambda: ctx.tasks.crashes == 0,
                site=lambda runner, host, p: make_site(config, app, runner, host, p),
                handler_options=handler_options(config))
