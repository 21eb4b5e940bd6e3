"""Fixtures for the edge tests: a real edge app on a real port, real token and signing keys, and a
helper that puts a complete file set into the store through the store's own API."""

from __future__ import annotations

import asyncio
import hashlib
import json
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from edge.app import CTX, EdgeContext, build_app
from edge.config import EdgeConfig
from edge.manifest import FileEntry
from edge.store import CacheStore
from shared import config as cfg
from shared import tokens
from shared.signing import Signer


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Keys:
    tokens: tokens.TokenKeys
    signer: Signer
    token_file: Path
    control_file: Path


@pytest.fixture
def keys(tmp_path: Path) -> Keys:
    tk = tokens.TokenKeys.generate()
    token_file = tmp_path / "token-keys.json"
    tk.save(token_file)
    signer = Signer.generate()
    control_file = tmp_path / "control-keys.json"
    control_file.write_text(json.dumps({signer.key_id: signer.public_key_b64()}))
    return Keys(tk, signer, token_file, control_file)


def make_config(tmp_path: Path, keys: Keys, **sections: dict[str, Any]) -> EdgeConfig:
    doc: dict[str, Any] = {
        "appliance": {"id": f"edge-t{free_port()}"},
        "http": {"port": free_port()},
        "cache": {"dir": str(tmp_path / "cache"), "capacity_bytes": 64 << 20},
        "security": {"token_keys_file": str(keys.token_file), "control_public_keys_file": str(keys.control_file)},
        "mqtt": {"port": 1883, "keepalive_s": 5},
        "telemetry": {"interval_s": 0.5},
    }
    for name, values in sections.items():
        doc.setdefault(name, {}).update(values)
    return cfg.build(EdgeConfig, doc, source="<test>")


@dataclass
class RunningEdge:
    url: str
    port: int
    ctx: EdgeContext
    keys: Keys

    def token(self, title: str, *, client: str = "127.0.0.0/8", ttl: float = 300,
              fallbacks: tuple[str, ...] = (), prefix: str | None = None) -> str:
        return tokens.sign(self.keys.tokens, path_prefix=prefix or f"{title}/", client_prefix=client, ttl_s=ttl,
                           fallbacks=fallbacks)

    def content_url(self, token: str, title: str, path: str) -> str:
        return f"{self.url}/v1/content/{token}/{title}/{path}"


async def start_edge(config: EdgeConfig, keys: Keys) -> tuple[RunningEdge, web.AppRunner]:
    app = build_app(config, bound_port=config.http.port)
    runner = web.AppRunner(app, shutdown_timeout=2, access_log=None, handle_signals=False)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", config.http.port).start()
    return RunningEdge(f"http://127.0.0.1:{config.http.port}", config.http.port, app[CTX], keys), runner


@pytest.fixture
async def edge(tmp_path: Path, keys: Keys) -> AsyncIterator[RunningEdge]:
    running, runner = await start_edge(make_config(tmp_path, keys), keys)
    yield running
    await runner.cleanup()


async def seed_set(store: CacheStore, title: str, version: str, files: dict[str, bytes]) -> None:
    """A complete set, written the way a fill writes it: fill dir, verified, then renamed under sets/."""
    entries = [FileEntry(p, len(b), hashlib.sha256(b).hexdigest()) for p, b in files.items()]
    await store.begin_fill((title, version), entries)
    base = store.set_dir((title, version), complete=False)
    for path, body in files.items():
        target = base / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(body)
        await store.file_done((title, version), path, len(body))
    await store.complete((title, version))


async def raw_request(port: int, request_line: str, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    """Send exactly these bytes (no client-side URL normalisation); returns (status, whole response)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    head = f"{request_line} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
    head += "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
    writer.write(head.encode("latin-1") + b"\r\n")
    await writer.drain()
    data = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    await writer.wait_closed()
    status = int(data.split(b" ", 2)[1]) if data.startswith(b"HTTP/") else 0
    return status, data


@pytest.fixture
def seed() -> Any:
    """:func:`seed_set` as a fixture (test modules cannot import conftest under importlib mode)."""
    return seed_set


@pytest.fixture
def raw() -> Any:
    return raw_request
