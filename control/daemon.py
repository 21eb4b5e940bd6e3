"""Run the control plane: build the app from its config and serve until told to stop."""

from __future__ import annotations

import asyncio

from shared.web import serve

from .app import build_app, connection_limits, make_site
from .config import ControlConfig


async def run(config: ControlConfig, *, stop: asyncio.Event | None = None) -> None:
    port = config.http.port
    if port == 0:
        from shared.broker import free_port

        port = free_port(config.http.host)
    url = config.http.public_url or f"http://{config.http.host}:{port}"
    app = build_app(config, api_url=url)
    await serve(app, host=config.http.host, port=port, shutdown_timeout=config.http.shutdown_timeout_s,
                stop=stop, site=lambda runner, host, p: make_site(config, app, runner, host, p),
                handler_options=connection_limits(config).handler_options())
