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
import uvloop
from aiohttp import web

from edge.app import CTX, EdgeContext, build_app, handler_options, make_site
from edge.config import EdgeConfig
from edge.manifest import FileEntry
from edge.store import CacheStore
from shared import config as cfg
from shared import tokens
from shared.messages import REGISTRY, DesiredFill, FileSetRef, FillSource
from shared.signing import Signer

# The wire tests of the fast path run on both event loops the daemon supports (``http.event_loop``):
# uvloop is the default and has no loop.sendfile, so the fast path's own sendfile loop is exercised on it.
BOTH_LOOPS = ("test_fastpath.py", "test_lifecycle.py")


def pytest_asyncio_loop_factories(config: pytest.Config, item: pytest.Item) -> dict[str, Any]:
    if item.path.name in BOTH_LOOPS:
        return {"asyncio": asyncio.new_event_loop, "uvloop": uvloop.new_event_loop}
    return {"asyncio": asyncio.new_event_loop}


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


def make_keys(directory: Path) -> Keys:
    """URL-token keys and a control signing key, written where an edge config points at them."""
    directory.mkdir(parents=True, exist_ok=True)
    tk = tokens.TokenKeys.generate()
    token_file = directory / "token-keys.json"
    tk.save(token_file)
    signer = Signer.generate()
    control_file = directory / "control-keys.json"
    control_file.write_text(json.dumps({signer.key_id: signer.public_key_b64()}))
    return Keys(tk, signer, token_file, control_file)


@pytest.fixture
def keys(tmp_path: Path) -> Keys:
    return make_keys(tmp_path)


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
    runner = web.AppRunner(app, shutdown_timeout=2, access_log=None, handle_signals=False,
                           **handler_options(config))
    await runner.setup()
    await make_site(config, app, runner, "127.0.0.1", config.http.port).start()
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


class Watcher:
    """A plain paho client recording what an appliance publishes; async waits so in-test servers keep running."""

    def __init__(self, port: int, topic_filter: str) -> None:
        import paho.mqtt.client as paho

        self.messages: list[tuple[str, bytes]] = []
        self.client = paho.Client(paho.CallbackAPIVersion.VERSION2)
        self.client.on_message = lambda c, u, m: self.messages.append((m.topic, m.payload))
        self.client.connect("127.0.0.1", port)
        self.client.subscribe(topic_filter, qos=1)
        self.client.loop_start()

    def publish(self, topic: str, payload: bytes, retain: bool = False) -> None:
        self.client.publish(topic, payload, qos=1, retain=retain).wait_for_publish(5)

    def bodies(self, suffix: str) -> list[Any]:
        from shared.messages import REGISTRY

        return [REGISTRY.decode(p).body for t, p in list(self.messages) if t.endswith(suffix) and p]

    async def wait(self, pred: Any, timeout: float = 20.0) -> None:
        deadline = asyncio.get_running_loop().time() + timeout
        while not pred():
            assert asyncio.get_running_loop().time() < deadline, f"timed out; saw {self.messages[-3:]}"
            await asyncio.sleep(0.05)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


@pytest.fixture
def watch() -> Any:
    made: list[Watcher] = []

    def make(appliance_id: str) -> Watcher:
        w = Watcher(1883, f"nearcast/v1/appliances/{appliance_id}/#")
        made.append(w)
        return w

    yield make
    for w in made:
        for topic in {t for t, _ in w.messages if t.endswith(("/status", "/desired/fill"))}:
            w.publish(topic, b"", retain=True)  # leave no retained state behind
        w.close()


@dataclass
class Origin:
    """A real HTTP origin: good copies, corrupt copies, a flaky copy that drops mid-body once per file,
    and signed file-set manifests.  Records every request (path, Range header)."""

    url: str
    root: Path
    requests: list[tuple[str, str]]
    bytes_sent: list[tuple[float, int]]

    def source(self, kind: str) -> str:
        return f"{self.url}/{kind}"



def fill_ref(origin: Any, title: str, files: dict[str, bytes], version: str = "v1",
             kinds: tuple[str, ...] | list[str] = ("good",)) -> FileSetRef:
    """A plan entry for a set built with :func:`build_file_set`, filled from the origin's ``kinds`` sources."""
    return FileSetRef(title, version, f"{origin.url}/manifests/{title}/{version}.json",
                      sum(len(b) for b in files.values()),
                      [FillSource(f"{origin.source(k)}/{title}/{version}", "origin") for k in kinds])


def publish_fill(w: Any, aid: str, gen: int, refs: list[FileSetRef], *, rate_bps: int = 0, window: str = "") -> str:
    """Publish a retained fill desired state as the control plane would; returns its envelope id."""
    env_id = f"fill-{aid}-{gen}"
    w.publish(f"nearcast/v1/appliances/{aid}/desired/fill",
              REGISTRY.encode(DesiredFill(gen, refs, fill_window=window, rate_limit_bps=rate_bps),
                              sender="control", msg_id=env_id), retain=True)
    return env_id

def build_file_set(root: Path, signer: Signer, title: str, version: str, files: dict[str, bytes],
                   *, extra: dict[str, Any] | None = None) -> None:
    from shared.signing import sign_document

    for path, body in files.items():
        for kind, data in (("good", body), ("corrupt", body[:-1] + bytes([body[-1] ^ 1]))):
            target = root / kind / title / version / path
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
    doc = {"title_id": title, "version": version, "ladder": [{"height": 720}], **(extra or {}),
           "files": [{"path": p, "size": len(b), "sha256": hashlib.sha256(b).hexdigest(), "codec": "h264"}
                     for p, b in files.items()]}
    target = root / "manifests" / title / f"{version}.json"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(sign_document(signer, doc)))


@pytest.fixture
async def origin(tmp_path: Path) -> AsyncIterator[Origin]:
    root = tmp_path / "origin"
    root.mkdir()
    requests: list[tuple[str, str]] = []
    sent: list[tuple[float, int]] = []
    dropped: set[str] = set()

    async def serve(request: web.Request) -> web.StreamResponse:
        kind, rest = request.match_info["kind"], request.match_info["rest"]
        requests.append((request.path, request.headers.get("Range", "")))
        source_kind = "good" if kind == "flaky" else kind
        path = root / source_kind / rest
        if ".." in rest or not path.is_file():
            raise web.HTTPNotFound()
        data = path.read_bytes()
        start = 0
        rng = request.headers.get("Range", "")
        if rng.startswith("bytes=") and rng.endswith("-"):
            start = int(rng[6:-1])
        resp = web.StreamResponse(status=206 if start else 200)
        resp.content_length = len(data) - start
        if start:
            resp.headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
        await resp.prepare(request)
        body = data[start:]
        if kind == "flaky" and rest not in dropped and len(body) > 2:
            dropped.add(rest)  # first time: half the body, then the connection dies
            await resp.write(body[: len(body) // 2])
            await asyncio.sleep(0.3)  # let the half arrive: a reader drops what is buffered when the error lands
            assert request.transport is not None
            request.transport.close()
            return resp
        for i in range(0, len(body), 65536):
            await resp.write(body[i:i + 65536])
            sent.append((asyncio.get_running_loop().time(), len(body[i:i + 65536])))
        await resp.write_eof()
        return resp

    app = web.Application()
    app.router.add_get("/{kind:good|corrupt|flaky|manifests}/{rest:.*}", serve)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    yield Origin(f"http://127.0.0.1:{port}", root, requests, sent)
    await runner.cleanup()


@pytest.fixture
def file_set() -> Any:
    return build_file_set


@pytest.fixture
async def edge_factory(tmp_path: Path, keys: Keys) -> AsyncIterator[Any]:
    """Start edges with extra settings, e.g. ``await edge_factory(cache={"capacity_bytes": 1000})``."""
    runners: list[web.AppRunner] = []

    async def make(**sections: dict[str, Any]) -> RunningEdge:
        running, runner = await start_edge(make_config(tmp_path, keys, **sections), keys)
        runners.append(runner)
        return running

    yield make
    for runner in runners:
        await runner.cleanup()
