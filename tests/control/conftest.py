"""A control plane in this process on a real port, talking to a private Mosquitto; appliances over real MQTT."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import aiomqtt
import pytest
from aiohttp import web

from control import mosquitto
from control.app import CTX, build_app
from control.auth import TokenStore
from control.config import ControlConfig
from control.context import ControlContext
from shared import config as cfg
from shared import topics
from shared.messages import REGISTRY, Ack, ApplianceStatus, Telemetry
from tests.conftest import Mosquitto

ADMIN = "admin"


class Harness:
    def __init__(self, url: str, app: web.Application, admin: str, reader: str, broker_port: int,
                 state: Path) -> None:
        self.url = url
        self.app = app
        self.admin = admin
        self.reader = reader
        self.broker_port = broker_port
        self.state = state
        self.http = aiohttp.ClientSession()

    @property
    def ctx(self) -> ControlContext:
        return self.app[CTX]

    async def call(self, method: str, path: str, body: Any = None, token: str | None = ADMIN,
                   headers: dict[str, str] | None = None) -> tuple[int, Any]:
        hdrs = dict(headers or {})
        if token is not None:
            hdrs["Authorization"] = f"Bearer {self.admin if token == ADMIN else token}"
        async with self.http.request(method, self.url + path, json=body, headers=hdrs) as resp:
            text = await resp.text()
            try:
                return resp.status, json.loads(text)
            except ValueError:
                return resp.status, text

    async def enroll(self, appliance_id: str, **meta: Any) -> dict[str, Any]:
        status, body = await self.call("POST", "/v1/enrollments", {"appliance_id": appliance_id, **meta})
        assert status == 201, body
        status, bundle = await self.call("POST", "/v1/enroll", {"token": body["token"]}, token=None)
        assert status == 201, bundle
        return dict(bundle)

    def mqtt(self, client_id: str, username: str | None = None, password: str | None = None) -> aiomqtt.Client:
        return aiomqtt.Client("127.0.0.1", self.broker_port, identifier=client_id, username=username,
                              password=password)

    async def announce(self, client: aiomqtt.Client, aid: str, http_url: str, state: str = "online") -> None:
        await client.publish(topics.appliance_status(aid), REGISTRY.encode(
            ApplianceStatus(state, "test", time.time(), http_url), sender=aid), qos=1, retain=True)  # type: ignore[arg-type]

    async def report_held(self, client: aiomqtt.Client, aid: str, held: list[tuple[str, str, bool]],
                          generation: int = 0) -> None:
        detail = {"generation": generation, "held": [{"title_id": t, "version": v, "complete": c, "bytes": 1}
                                                     for t, v, c in held]}
        await client.publish(topics.appliance_acks(aid), REGISTRY.encode(
            Ack("x1", "desired.fill", "done", detail=detail), sender=aid), qos=1)

    async def telemetry(self, client: aiomqtt.Client, aid: str, sample: Telemetry) -> None:
        await client.publish(topics.appliance_telemetry(aid), REGISTRY.encode(sample, sender=aid), qos=1)


async def eventually(check: Callable[[], Any], timeout: float = 10.0) -> Any:
    """Poll ``check`` (sync or async) until it returns something truthy."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.05)



async def reloading_mosquitto(tmp_path: Path, control_factory: Any) -> tuple[Mosquitto, Harness, str]:
    """A private Mosquitto enforcing the control plane's generated passwd and ACL (anonymous refused),
    and a control plane that reloads it through its pid file after every change; with the control
    plane's own broker password.  The caller owns the broker (``broker.cleanup()``)."""
    broker = Mosquitto(tmp_path)
    files = broker.workdir
    pid_file = files / "mosquitto.pid"
    control_password = mosquitto.new_password()
    mosquitto.write_broker_files(files, {"control": mosquitto.hash_password(control_password)}, "control")
    broker.extra_config = (f"allow_anonymous false\npassword_file {files / 'passwd'}\n"
                           f"acl_file {files / 'acl'}\npid_file {pid_file}\n")
    broker.start()
    try:
        await eventually(pid_file.exists)
        h = await control_factory({"mqtt": {"username": "control", "password": control_password},
                                   "broker": {"files_dir": str(files), "reload": f"pid:{pid_file}"}},
                                  broker_port=broker.port)
    except BaseException:
        broker.cleanup()
        raise
    return broker, h, control_password

def control_config(state: Path, broker_port: int, extra: dict[str, dict[str, Any]] | None = None) -> ControlConfig:
    doc: dict[str, dict[str, Any]] = {
        "state": {"dir": str(state)},
        "mqtt": {"port": broker_port, "keepalive_s": 5},
        "auth": {"tokens_file": str(state / "tokens.json")},
        "fleet": {"heartbeat_ttl_s": 3.0},
        "fill": {"interval_s": 0.0, "floor_views": 0.0},
        "steering": {"refresh_s": 0.2},
        "telemetry": {"flush_interval_s": 0.05},
    }
    for section, values in (extra or {}).items():
        doc.setdefault(section, {}).update(values)
    return cfg.build(ControlConfig, doc, source="test")


@pytest.fixture
async def control_factory(tmp_path: Path, private_mosquitto: Any, port_factory: Any) -> AsyncIterator[Any]:
    started: list[tuple[web.AppRunner, Harness]] = []

    async def start(extra: dict[str, dict[str, Any]] | None = None, broker_port: int | None = None) -> Harness:
        state = tmp_path / f"control-{len(started)}"
        state.mkdir()
        tokens = TokenStore([])
        admin, reader = tokens.add("root", "admin"), tokens.add("viewer", "read")
        tokens.save(state / "tokens.json")
        port = port_factory()
        url = f"http://127.0.0.1:{port}"
        bport = broker_port or private_mosquitto.port
        app = build_app(control_config(state, bport, extra), api_url=url)
        runner = web.AppRunner(app, shutdown_timeout=1)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        h = Harness(url, app, admin, reader, bport, state)
        started.append((runner, h))
        await eventually(app[CTX].session.connected.is_set)
        return h

    yield start
    for runner, h in started:
        await h.http.close()
        await runner.cleanup()


@pytest.fixture
async def control(control_factory: Any) -> Harness:
    return await control_factory()  # type: ignore[no-any-return]


def make_origin_title(state: Path, title_id: str, *, segments: int = 3, segment_bytes: int = 4096,
                      version: int = 1, encryption: dict[str, str] | None = None,
                      genres: tuple[str, ...] = ("drama",)) -> int:
    """A small published title on the origin (what the encoder leaves): files plus ``fileset.json``."""
    import hashlib
    import os

    root = state / "origin" / title_id
    (root / "v").mkdir(parents=True, exist_ok=True)
    files = {"master.m3u8": b"#EXTM3U\n#EXT-X-STREAM-INF:BANDWIDTH=1000\nv/index.m3u8\n",
             "manifest.mpd": b"<MPD/>\n", "v/index.m3u8": b"#EXTM3U\n"}
    for i in range(segments):
        files[f"v/seg{i}.m4s"] = os.urandom(segment_bytes)
    entries = []
    for rel, data in files.items():
        (root / rel).write_bytes(data)
        entries.append({"path": rel, "size": len(data), "sha256": hashlib.sha256(data).hexdigest(),
                        "rendition": None, "kind": "segment"})
    (root / "fileset.json").write_text(json.dumps({
        "schema": "nearcast.fileset/1", "title_id": title_id, "name": title_id.title(), "version": version,
        "genres": list(genres), "hls": "master.m3u8", "dash": "manifest.mpd", "encryption": encryption,
        "files": entries}))
    return sum(len(d) for d in files.values())
