"""Overload becomes a health miss (302), and SIGTERM lets an in-flight segment finish."""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
import socket
from pathlib import Path
from typing import Any

import aiohttp

BIG = os.urandom(12 * 1024 * 1024)


async def _stalled_download(port: int, path: str) -> tuple[socket.socket, asyncio.StreamReader, Any]:
    """A client that asks for a big file and reads nothing yet: the server is left mid-response."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    sock.setblocking(False)
    reader, writer = await asyncio.open_connection(sock=sock)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
    await writer.drain()
    return sock, reader, writer


async def test_overload_is_a_health_miss_redirected(edge_factory: Any, seed: Any) -> None:
    edge = await edge_factory(http={"max_in_flight": 1})
    await seed(edge.ctx.store, "t1", "v1", {"big.m4s": BIG, "small.m4s": b"x" * 100})
    tok = edge.token("t1", fallbacks=("http://127.0.0.9:1/v1/content/B",))
    _, reader, writer = await _stalled_download(edge.port, f"/v1/content/{tok}/t1/big.m4s")
    try:
        for _ in range(100):
            if edge.ctx.server.in_flight >= 1:
                break
            await asyncio.sleep(0.02)
        assert edge.ctx.server.in_flight == 1
        async with aiohttp.ClientSession() as s, s.get(edge.content_url(tok, "t1", "small.m4s"),
                                                       allow_redirects=False) as r:
            assert r.status == 302 and r.headers["Location"] == "http://127.0.0.9:1/v1/content/B/t1/small.m4s"
        assert edge.ctx.metrics.misses.labels("health")._value.get() == 1
    finally:
        writer.close()


async def test_sigterm_finishes_in_flight_responses(tmp_path: Path, keys: Any, daemons: Any, port_factory: Any,
                                                    seed: Any) -> None:
    from edge.catalog import Catalog
    from edge.store import CacheStore
    from shared import tokens

    cache = tmp_path / "cache"
    store = CacheStore(cache, 1 << 30, Catalog(cache))
    await store.open()
    await seed(store, "t1", "v1", {"big.m4s": BIG})
    await store.close()
    port = port_factory()
    conf = tmp_path / "edge.toml"
    conf.write_text(f'[appliance]\nid = "edge-s{port}"\n[http]\nport = {port}\nshutdown_timeout_s = 20\n'
                    f'[cache]\ndir = "{cache}"\n[security]\ntoken_keys_file = "{keys.token_file}"\n'
                    f'[mqtt]\nport = 1883\n')
    d = daemons(["edge", "serve", "--config", str(conf)], "edge-term")
    await asyncio.get_running_loop().run_in_executor(None, d.wait_http, f"http://127.0.0.1:{port}/healthz")
    tok = tokens.sign(keys.tokens, path_prefix="t1/", client_prefix="127.0.0.1/32", ttl_s=60)
    _, reader, writer = await _stalled_download(port, f"/v1/content/{tok}/t1/big.m4s")
    await asyncio.sleep(0.5)
    d.proc.send_signal(signal.SIGTERM)
    await asyncio.sleep(0.5)
    with socket.socket() as probe:  # no longer accepting new connections
        assert probe.connect_ex(("127.0.0.1", port)) != 0
    data = await asyncio.wait_for(reader.read(), 30)  # ...but the one in flight completes
    writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    assert hashlib.sha256(body).digest() == hashlib.sha256(BIG).digest()
    assert await asyncio.get_running_loop().run_in_executor(None, d.proc.wait, 30) == 0
