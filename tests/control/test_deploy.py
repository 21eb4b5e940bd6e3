"""The deployment shell against a real control plane and a real broker, with appliances played by MQTT clients.

Each simulated appliance does what an edge's model manager does on the wire: reads its retained
``desired/model``, acks ``done`` with the version it runs (or ``failed`` with the version it refused),
and sends telemetry with re-rank counters and ``nearcast_edge_model_info``.  The real edges are in
``test_model_rollout_edges.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
from aiohttp import web

from control.app import build_app
from control.auth import TokenStore
from control.deploy import health_sample
from control.store import TelemetryRow
from shared import topics
from shared.messages import REGISTRY, Ack, DesiredModel, Telemetry
from shared.tasks import TaskGroup

from .conftest import Harness, control_config, eventually

FAST = {"models": {"tick_s": 0.05}}
GATES = {"min_requests": 20, "ack_timeout_s": 10, "p99_slack_ms": 1000}


class SimEdge:
    def __init__(self, h: Harness, aid: str, *, refuse: tuple[str, ...] = (), errors_on: tuple[str, ...] = ()) -> None:
        self.h, self.aid, self.refuse, self.errors_on = h, aid, refuse, errors_on
        self.running: str | None = None
        self.desired: list[tuple[int, str | None, float]] = []
        self.requests = self.errors = self.seq = 0
        self.client = h.mqtt(aid)
        self.tasks = TaskGroup(f"sim-{aid}")

    async def start(self) -> None:
        await self.client.__aenter__()
        await self.client.subscribe(topics.appliance_desired(self.aid, "model"), qos=1)
        await self.h.announce(self.client, self.aid, "http://127.0.0.1:9")
        self.tasks.spawn(self._inbox(), name="inbox")
        self.tasks.spawn(self._telemetry(), name="telemetry")

    async def stop(self) -> None:
        await self.tasks.aclose()
        with contextlib.suppress(aiomqtt.MqttError):
            await self.h.announce(self.client, self.aid, "http://127.0.0.1:9", state="offline")
        await self.client.__aexit__(None, None, None)

    async def _inbox(self) -> None:
        async for msg in self.client.messages:
            if not msg.payload:
                continue
            env = REGISTRY.decode(bytes(msg.payload))  # type: ignore[arg-type]
            body = env.body
            assert isinstance(body, DesiredModel)
            version = body.model.version if body.model else self.running
            self.desired.append((body.generation, version, time.monotonic()))
            if version in self.refuse:
                ack = Ack(env.id, env.type, "failed", f"model {version}: warm-up gave non-finite scores",
                          detail={"model_version": self.running, "refused": version})
            else:
                self.running = version
                ack = Ack(env.id, env.type, "done", detail={"model_version": self.running})
            await self.client.publish(topics.appliance_acks(self.aid), REGISTRY.encode(ack, sender=self.aid), qos=1)

    async def _telemetry(self) -> None:
        while True:
            await asyncio.sleep(0.1)
            self.seq += 1
            self.requests += 25
            if self.running in self.errors_on:
                self.errors += 25
            gauges = {"nearcast_edge_rerank_p99_ms": 3.0}
            if self.running:
                gauges[f"nearcast_edge_model_info{{version={self.running}}}"] = 1.0
            sample = Telemetry(self.seq, 0.1, {"nearcast_edge_rerank_requests_total": self.requests,
                                               "nearcast_edge_rerank_errors_total": self.errors,
                                               "nearcast_edge_rerank_fallbacks_total": 0}, gauges)
            await self.h.telemetry(self.client, self.aid, sample)


@pytest.fixture
async def fleet() -> AsyncIterator[Any]:
    sims: list[SimEdge] = []

    async def make(h: Harness, n: int, **kw: Any) -> list[SimEdge]:
        made = [SimEdge(h, f"sim-{len(sims) + i}", **kw) for i in range(n)]
        for s in made:
            await s.start()
        sims.extend(made)
        return made

    yield make
    for s in sims:
        await s.stop()


async def build(h: Harness, version: str) -> dict[str, Any]:
    status, body = await h.call("POST", "/v1/models", {"version": version, "source": "synthetic", "pages": 100})
    assert status == 201, body
    return dict(body)


async def phase(h: Harness, want: str, timeout: float = 20.0) -> dict[str, Any]:
    async def check() -> Any:
        _, st = await h.call("GET", "/v1/deployment")
        return st if st["deployment"] and st["deployment"]["phase"] == want else None

    return dict(await eventually(check, timeout))


async def deploy(h: Harness, version: str, waves: list[float], bake_s: float = 0.2, **gates: Any) -> dict[str, Any]:
    status, body = await h.call("POST", "/v1/deployment", {"version": version, "waves": waves, "bake_s": bake_s,
                                                           "gates": {**GATES, **gates}})
    assert status == 202, body
    return dict(body)


async def test_waves_publish_retained_desired_state_in_order_and_complete(control_factory: Any, fleet: Any) -> None:
    h = await control_factory(FAST)
    sims = await fleet(h, 4)
    await eventually(lambda: len(h.ctx.fleet.snapshot()) == 4)
    await build(h, "v1")
    await build(h, "v2")
    await deploy(h, "v1", [100])
    await phase(h, "completed")
    assert all(s.running == "v1" for s in sims)
    started = await deploy(h, "v2", [25, 50, 100], bake_s=0.3)
    dep = started["deployment"]
    assert dep["previous"] == "v1" and dep["wave"] == 1 and dep["wave_members"] == 1
    done = await phase(h, "completed")
    kinds = [e["kind"] for e in done["deployment"]["history"]]
    assert kinds == ["started", "baked", "started", "baked", "started", "baked", "completed"]
    assert done["active"] == "v2" and all(s.running == "v2" for s in sims)
    for s in sims:  # one desired message per change, generations rising
        gens = [g for g, _, _ in s.desired]
        assert gens == sorted(gens) and len(set(gens)) == len(gens)
        assert [v for _, v, _ in s.desired] == ["v1", "v2"]
    # waves of 1, 2 and 4 appliances, each started only after the previous one baked (0.3 s)
    when = sorted(t for s in sims for _, v, t in s.desired if v == "v2")
    assert when[1] - when[0] >= 0.3 and when[2] - when[1] >= 0.3 and when[3] - when[2] < 0.3, when
    rows = {a["appliance_id"]: a for a in done["appliances"]}
    assert all(r["desired"] == "v2" and r["active"] == "v2" and r["last_ack"]["status"] == "done"
               for r in rows.values())
    # the desired state is retained: an appliance connecting now reads v2 at once
    async with h.mqtt("late-reader") as c:
        await c.subscribe(topics.appliance_desired("sim-0", "model"), qos=1)
        msg = await asyncio.wait_for(anext(aiter(c.messages)), 5)
        assert REGISTRY.decode(bytes(msg.payload)).body.model.version == "v2"  # type: ignore[arg-type]
    # a read-only operator sees the status, but may not deploy or roll back
    status, _ = await h.call("GET", "/v1/deployment", token=h.reader)
    assert status == 200
    assert (await h.call("POST", "/v1/deployment/rollback", {}, token=h.reader))[0] == 403
    _, audit = await h.call("GET", "/v1/audit")
    actions = [e["action"] for e in audit["entries"]]
    assert actions.count("model.deploy") == 2 and actions.count("model.build") == 2
    # an operator rollback after completion returns everyone to v1 (the previous version)
    status, body = await h.call("POST", "/v1/deployment/rollback", {"reason": "regret"})
    assert status == 202 and body["active"] == "v1"
    await eventually(lambda: all(s.running == "v1" for s in sims))
    assert (await h.call("POST", "/v1/deployment/rollback", {}))[0] == 409


async def test_a_failed_load_rolls_back_automatically_and_is_audited(control_factory: Any, fleet: Any) -> None:
    h = await control_factory(FAST)
    sims = await fleet(h, 3, refuse=("v2",))
    await eventually(lambda: len(h.ctx.fleet.snapshot()) == 3)
    await build(h, "v1")
    await build(h, "v2")
    await deploy(h, "v1", [100])
    await phase(h, "completed")
    await deploy(h, "v2", [34, 100], bake_s=5)
    st = await phase(h, "rolled_back")
    dep = st["deployment"]
    assert "failed to load v2" in dep["reason"] and "non-finite" in dep["reason"]
    assert st["active"] == "v1" and all(s.running == "v1" for s in sims)
    canary = [a for a in st["appliances"] if a["wave"] == 1]
    assert len(canary) == 1 and "non-finite" in canary[0]["failure"]
    _, audit = await h.call("GET", "/v1/audit")
    auto = [e for e in audit["entries"] if e["action"] == "model.rollback.auto"]
    assert auto and auto[0]["actor"] == "rollout" and auto[0]["target"] == "v2"


async def test_a_health_gate_breach_rolls_back(control_factory: Any, fleet: Any) -> None:
    h = await control_factory(FAST)
    sims = await fleet(h, 3, errors_on=("v2",))
    await eventually(lambda: len(h.ctx.fleet.snapshot()) == 3)
    await build(h, "v1")
    await build(h, "v2")
    await deploy(h, "v1", [100])
    await phase(h, "completed")
    await deploy(h, "v2", [34, 100], bake_s=30)
    st = await phase(h, "rolled_back")
    assert "re-rank error rate" in st["deployment"]["reason"]
    assert [e["kind"] for e in st["deployment"]["history"]][-2:] == ["breached", "rolled_back"]
    await eventually(lambda: all(s.running == "v1" for s in sims))
    text = await (await h.http.get(h.url + "/metrics")).text()
    assert 'nearcast_control_model_rollout_events_total{kind="rolled_back"} 1.0' in text


async def _start(state: Path, broker_port: int, port: int, admin: str, reader: str) -> tuple[web.AppRunner, Harness]:
    app = build_app(control_config(state, broker_port, FAST), api_url=f"http://127.0.0.1:{port}")
    runner = web.AppRunner(app, shutdown_timeout=1)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    h = Harness(f"http://127.0.0.1:{port}", app, admin, reader, broker_port, state)
    await eventually(h.ctx.session.connected.is_set)
    return runner, h


async def test_a_restarted_control_plane_resumes_the_deployment(tmp_path: Path, private_mosquitto: Any,
                                                                port_factory: Any, fleet: Any) -> None:
    state = tmp_path / "control"
    tokens = TokenStore([])
    admin, reader = tokens.add("root", "admin"), tokens.add("viewer", "read")
    tokens.save(state / "tokens.json")
    runner, h = await _start(state, private_mosquitto.port, port_factory(), admin, reader)
    try:
        sims = await fleet(h, 2)
        await eventually(lambda: len(h.ctx.fleet.snapshot()) == 2)
        await build(h, "v1")
        await build(h, "v2")
        await deploy(h, "v1", [100])
        await phase(h, "completed")
        first = (await deploy(h, "v2", [50, 100], bake_s=1.5))["deployment"]
        await eventually(lambda: sum(s.running == "v2" for s in sims) == 1)
    finally:
        await h.http.close()
        await runner.cleanup()  # stopped mid-wave
    saved = json.loads((state / "deploy" / "state.json").read_text())
    assert saved["deployment"]["id"] == first["id"] and saved["deployment"]["phase"] == "baking"
    runner, h = await _start(state, private_mosquitto.port, port_factory(), admin, reader)
    try:
        st = await phase(h, "completed")
        assert st["deployment"]["id"] == first["id"] and st["active"] == "v2"
        assert all(s.running == "v2" for s in sims)
        for s in sims:  # nothing republished: one message per version change
            assert [v for _, v, _ in s.desired] == ["v1", "v2"]
    finally:
        await h.http.close()
        await runner.cleanup()
    # a damaged state file is moved aside, never half used
    (state / "deploy" / "state.json").write_text('{"format": 1, "active": 3}')
    runner, h = await _start(state, private_mosquitto.port, port_factory(), admin, reader)
    try:
        _, st = await h.call("GET", "/v1/deployment")
        assert st["deployment"] is None and list((state / "deploy").glob("state.json.damaged-*"))
    finally:
        await h.http.close()
        await runner.cleanup()


def test_health_samples_from_telemetry() -> None:
    row = TelemetryRow("e1", time.time(), 3, 1.0, {"nearcast_edge_rerank_requests_total": 10,
                                                   "nearcast_edge_rerank_errors_total": 12,
                                                   "nearcast_edge_rerank_fallbacks_total": 2},
                       {"nearcast_edge_model_info{version=v2}": 1.0, "nearcast_edge_rerank_p99_ms": float("inf")}, {})
    s = health_sample(row)
    assert s is not None and (s.version, s.requests, s.errors, s.fallbacks, s.p99_ms) == ("v2", 10, 10, 2, 0.0)
    assert health_sample(TelemetryRow("e1", 0.0, 1, 1.0, {}, {}, {})) is None
    two = TelemetryRow("e1", 0.0, 1, 1.0, {"nearcast_edge_rerank_requests_total": 1},
                       {"nearcast_edge_model_info{version=a}": 1.0, "nearcast_edge_model_info{version=b}": 1.0}, {})
    assert health_sample(two).version is None  # type: ignore[union-attr]


@pytest.mark.parametrize("doc", [
    {"version": "../x"}, {"version": ""}, {"version": 5}, {}, {"version": "v1", "waves": [50, 25, 100]},
    {"version": "v1", "waves": [0, 100]}, {"version": "v1", "waves": [50]}, {"version": "v1", "waves": []},
    {"version": "v1", "waves": [*range(1, 22), 100]}, {"version": "v1", "waves": ["5", 100]},
    {"version": "v1", "waves": [5, 1e400]}, {"version": "v1", "bake_s": -1}, {"version": "v1", "bake_s": "60s"},
    {"version": "v1", "bake_s": 10**9}, {"version": "v1", "surprise": True},
    {"version": "v1", "gates": {"min_requests": 0}}, {"version": "v1", "gates": {"max_p99_ratio": 0.5}},
    {"version": "v1", "gates": {"unknown": 1}}, {"version": "v1", "gates": {"min_requests": True}},
])
async def test_hostile_deploy_requests_are_400(control: Harness, doc: dict[str, Any]) -> None:
    status, body = await control.call("POST", "/v1/deployment", doc)
    assert status == 400 and body["error"], (doc, body)


async def test_hostile_model_requests_are_clear_4xx(control: Harness) -> None:
    h = control
    assert (await h.call("POST", "/v1/deployment", {"version": "nope"}))[0] == 404
    assert (await h.call("POST", "/v1/deployment/rollback", {}))[0] == 409
    for doc in ({"version": "a/b"}, {"seed": -1}, {"seed": 2**40}, {"source": "web"}, {"pages": 10},
                {"pages": 10**6}, {"extra": 1}, [], "v1"):
        status, body = await h.call("POST", "/v1/models", doc)
        assert status == 400 and body["error"], doc
    for raw in (b"{not json", b"", b"\xff\xfe"):
        async with h.http.post(h.url + "/v1/deployment", data=raw, headers={
                "Authorization": f"Bearer {h.admin}", "Content-Type": "application/json"}) as resp:
            assert resp.status == 400
    big = json.dumps({"version": "v1", "reason": "x" * (1 << 20)}).encode()  # just over http.max_body_bytes
    for path in ("/v1/deployment", "/v1/models", "/v1/deployment/rollback"):
        auth = {"Authorization": f"Bearer {h.admin}"}
        async with h.http.post(h.url + path, data=io.BytesIO(big), headers=auth) as resp:
            assert resp.status == 413, path
    assert (await h.call("POST", "/v1/deployment/rollback", {"reason": "x" * 201}))[0] == 400
    assert (await h.call("GET", "/v1/models/nope"))[0] == 404
    assert (await h.call("GET", "/v1/models/..%2Fetc"))[0] in (400, 404)
    for path in ("/v1/bundles/nope.ncb", "/v1/bundles/x", "/v1/bundles/..%2Fsigning-key.pem", "/v1/bundles/.ncb"):
        assert (await h.call("GET", path, token=None))[0] == 404, path
    assert (await h.call("POST", "/v1/models", {}, token=None))[0] == 401
    assert (await h.call("POST", "/v1/models", {}, token=h.reader))[0] == 403
    assert (await h.call("GET", "/v1/deployment", token=None))[0] == 401
    # no appliances known yet: nothing to deploy to
    await build(h, "v1")
    status, body = await h.call("POST", "/v1/deployment", {"version": "v1"})
    assert status == 409 and "no appliances" in body["error"]
    status, body = await h.call("POST", "/v1/models", {"version": "v1"})
    assert status == 409 and "immutable" in body["error"]


async def test_bundles_are_public_with_ranges(control: Harness) -> None:
    info = await build(control, "v1")
    blob = (control.state / "edge-models" / "v1.ncb").read_bytes()
    assert info["url"] == f"{control.url}/v1/bundles/v1.ncb" and info["size"] == len(blob)
    async with control.http.get(info["url"]) as resp:  # no operator token: the signature protects it
        assert resp.status == 200 and await resp.read() == blob
        assert "immutable" in resp.headers["Cache-Control"]
    async with control.http.get(info["url"], headers={"Range": "bytes=100-"}) as resp:
        assert resp.status == 206 and await resp.read() == blob[100:]
    status, listing = await control.call("GET", "/v1/models", token=control.reader)
    assert status == 200 and [v["version"] for v in listing["versions"]] == ["v1"] and listing["active"] is None
    status, one = await control.call("GET", "/v1/models/v1", token=control.reader)
    assert status == 200 and one["metadata"]["notes"].startswith("SYNTHETIC") and one["sha256"] == info["sha256"]
