"""The ClearKey license endpoint for CENC titles: the play token in the path says who may have the key.

``/v1/play`` hands out ``/v1/license/{token}/{title_id}`` with the same kind of token as the manifest
URLs (this title, this client's network, an expiry); the exchange itself is the encoder's pure
:func:`control.encode.clearkey.license_response`, which refuses any KID outside the title.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from aiohttp import web

from shared import tokens
from shared.errors import NotFound
from shared.ids import check_id
from shared.web import read_body

from .context import CTX
from .encode.clearkey import MAX_REQUEST_BYTES, license_response
from .encode.crypto import TitleKey, key_path, read_key
from .play import client_ip


async def clearkey_license(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    title_id = check_id(request.match_info["title_id"], "title id")
    ip = client_ip(request.remote, request.headers.get("X-Forwarded-For"), ctx.trusted)
    tokens.verify(ctx.keys, request.match_info["token"], path=f"{title_id}/license", client_ip=ip)
    key = await asyncio.to_thread(_title_key, ctx.config.content_keys_dir, title_id)
    body = await read_body(request, MAX_REQUEST_BYTES)  # the whole body (413 beyond), however it arrives
    answer = license_response(body, key)
    return web.json_response(answer, headers={"Cache-Control": "no-store"})


def _title_key(keys_dir: Path, title_id: str) -> TitleKey:
    """The title's key file, read off the event loop."""
    if not key_path(keys_dir, title_id).is_file():
        raise NotFound(f"no content key for {title_id}")
    return read_key(keys_dir, title_id)


def add_routes(app: web.Application) -> None:
    app.router.add_post("/v1/license/{token}/{title_id}", clearkey_license)
