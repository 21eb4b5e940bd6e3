"""Model rollout benchmark: time from ``nearcast model deploy`` to the last wave done, on N appliances.

Starts a private Mosquitto and the real control plane (``nearcast control serve``, another process),
builds three edge bundles through its API, then plays N appliances (default 24) in this process: each
is its own MQTT client with the edge's real :class:`edge.models.ModelManager` (HTTP download from the
control plane, sha256 + Ed25519 verification, unpack, XGBoost load and warm-up, atomic swap, ack) and
sends the edge's real telemetry every 0.5 s with its re-rank counters (traffic is synthetic: no pages
are served, only counted).

Measured in the same run:

* reference: ``--waves 100 --bake 0`` — one fan-out to every appliance and back, the floor of any
  rollout (desired state out, N downloads + loads, N acks in);
* rollout:   ``--waves 5,25,100 --bake 1s`` — the default wave plan with a short bake.

Both are timed from the CLI call to its exit (``deploy --wait``: what an operator waits for) and on
the control plane's own clock (first ``started`` event to ``completed``), with, per wave, when its last
appliance acked.  The floor of the rollout is its bake time plus one fan-out; the ratio to it is
what the waves cost beyond baking.

    .venv/bin/python bench/deploy.py [--appliances 24] [--bake 1] [--tick 1.0]

Goal: rollout / floor <= 1.5.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import aiomqtt

from control.auth import TokenStore
from edge import telemetry as edge_telemetry
from edge.metrics import EdgeMetrics
from edge.models import ModelManager
from shared import topics
from shared.messages import REGISTRY, Ack, ApplianceStatus, DesiredModel
from shared.signing import parse_public_keys
from shared.tasks import TaskGroup

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_mosquitto(workdir: Path) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    conf = workdir / "mosquitto.conf"
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\n")
    binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    proc = subprocess.Popen([binary, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc, port
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("mosquitto did not start")


class Api:
    def __init__(self, url: str, token: str) -> None:
        self.url, self.token = url, token

    def call(self, method: str, path: str, body: Any = None) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.url + path, data=data, method=method, headers={
            "Authorization": f"Bearer {self.token}", "Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=120) as resp:
            return json.loads(resp.read())


class Appliance:
    """One appliance on the wire: status, desired model → the edge's ModelManager → acks, telemetry."""

    def __init__(self, aid: str, port: int, work: Path, keys: dict[str, bytes]) -> None:
        self.aid, self.port = aid, port
        self.metrics = EdgeMetrics()
        self.client = aiomqtt.Client("127.0.0.1", port, identifier=aid)
        self.models = ModelManager(work / aid, keys, self.metrics, self.send_ack, retry_s=1.0)
        self.tasks = TaskGroup(aid)
        self.seq = 0
        self.acked: dict[str, float] = {}  # version -> when this appliance reported it running

    async def send_ack(self, ack: Ack) -> None:
        if ack.status == "done" and ack.detail.get("model_version"):
            self.acked.setdefault(ack.detail["model_version"], time.time())
        await self.client.publish(topics.appliance_acks(self.aid), REGISTRY.encode(ack, sender=self.aid), qos=1)

    async def start(self) -> None:
        await self.client.__aenter__()
        await self.models.start()
        self.tasks.spawn(self.models.run(), name="models")
        await self.client.subscribe(topics.appliance_desired(self.aid, "model"), qos=1)
        await self.client.publish(topics.appliance_status(self.aid), REGISTRY.encode(
            ApplianceStatus("online", "bench", time.time(), "http://127.0.0.1:9"), sender=self.aid), qos=1, retain=True)
        self.tasks.spawn(self.inbox(), name="inbox")
        self.tasks.spawn(self.telemetry(), name="telemetry")

    async def inbox(self) -> None:
        async for msg in self.client.messages:
            if msg.payload:
                env = REGISTRY.decode(bytes(msg.payload))  # type: ignore[arg-type]
                if isinstance(env.body, DesiredModel):
                    await self.models.apply(env)

    async def telemetry(self) -> None:
        while True:
            await asyncio.sleep(0.5)
            for _ in range(60):  # 120 pages/s of synthetic traffic, counted like the home handler does
                self.metrics.rerank_requests.inc()
                self.metrics.rerank_latency.add(0.003)
            if self.models.current is None:
                self.metrics.rerank_fallbacks.inc(60)
            self.seq += 1
            sample = edge_telemetry.sample(self.metrics.registry, self.metrics.demand, seq=self.seq, interval_s=0.5,
                                           extra_gauges={})
            await self.client.publish(topics.appliance_telemetry(self.aid), REGISTRY.encode(sample, sender=self.aid),
                                      qos=1)

    async def stop(self) -> None:
        await self.tasks.aclose()
        await self.models.stop()
        await self.client.__aexit__(None, None, None)


def cli_deploy(env: dict[str, str], version: str, waves: str, bake: str) -> float:
    start = time.perf_counter()
    res = subprocess.run([sys.executable, "-m", "nearcast", "model", "deploy", version, "--waves", waves, "--bake",
                          bake, "--min-requests", "50", "--ack-timeout", "60s", "--max-p99-ratio", "10", "--wait"],
                         env={**os.environ, **env}, capture_output=True, text=True, timeout=600, check=False)
    elapsed = time.perf_counter() - start
    if res.returncode != 0:
        raise RuntimeError(f"deploy {version} failed: {res.stdout}{res.stderr}")
    return elapsed


def control_times(api: Api, fleet: list[Appliance]) -> tuple[float, list[tuple[int, float, float, float]]]:
    """Deployment time on the control plane's clock, and per wave: size, start, all acked, baked (s from start)."""
    dep = api.call("GET", "/v1/deployment")["deployment"]
    history = dep["history"]
    t0 = history[0]["at"]
    done = next(e["at"] for e in history if e["kind"] == "completed")
    by_id = {a.aid: a for a in fleet}
    waves = []
    for w in range(len(dep["waves"])):
        started = next(e for e in history if e["kind"] == "started" and e["wave"] == w)
        baked = next(e["at"] for e in history if e["kind"] == "baked" and e["wave"] == w)
        acked = max(by_id[a].acked[dep["version"]] for a in started["appliances"])
        waves.append((len(started["appliances"]), started["at"] - t0, acked - t0, baked - t0))
    return done - t0, waves


def start_control(work: Path, mport: int, tick: float) -> tuple[subprocess.Popen[bytes], Api, Any]:
    state = work / "state"
    tokens = TokenStore([])
    admin = tokens.add("bench", "admin")
    tokens.save(state / "operator-tokens.json")
    port = free_port()
    cfg = work / "control.toml"
    cfg.write_text(f'[http]\nport = {port}\n[state]\ndir = "{state}"\n[mqtt]\nport = {mport}\n'
                   f"[fill]\ninterval_s = 0.0\n[fleet]\nheartbeat_ttl_s = 5.0\n[models]\ntick_s = {tick}\n")
    log = open(work / "control.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen([sys.executable, "-m", "nearcast", "control", "serve", "--config", str(cfg)],
                            stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
    api = Api(f"http://127.0.0.1:{port}", admin)
    for _ in range(300):
        try:
            urllib.request.urlopen(api.url + "/healthz", timeout=0.5).close()
            break
        except OSError:
            time.sleep(0.1)
    for v in ("v1", "v2", "v3"):
        api.call("POST", "/v1/models", {"version": v, "seed": 1})
    return proc, api, log


async def run(api: Api, mport: int, work: Path, appliances: int, bake: float, tick: float) -> None:
    key_id = (await asyncio.to_thread(api.call, "GET", "/v1/models/v1"))["key_id"]
    keys = parse_public_keys({key_id: _public_key(work / "state")})  # what enrollment hands an appliance
    fleet = [Appliance(f"bench-{i:03d}", mport, work / "edges", keys) for i in range(appliances)]
    try:
        for a in fleet:
            await a.start()
        await asyncio.sleep(1.5)
        env = {"NEARCAST_API": api.url, "NEARCAST_TOKEN": api.token}
        await asyncio.to_thread(cli_deploy, env, "v1", "100", "0")  # a first version everywhere: the baseline
        ref_wall = await asyncio.to_thread(cli_deploy, env, "v2", "100", "0")
        ref_control, ref_waves = await asyncio.to_thread(control_times, api, fleet)
        wall = await asyncio.to_thread(cli_deploy, env, "v3", "5,25,100", f"{bake}s")
        took, waves = await asyncio.to_thread(control_times, api, fleet)
        running = {a.models.version for a in fleet}
        assert running == {"v3"}, running
    finally:
        for a in fleet:
            await a.stop()
    bakes = len(waves) * bake
    print(f"appliances: {appliances} (a real ModelManager each: download, verify, unpack, load, warm up), "
          f"models.tick_s {tick:g}")
    print(f"reference, waves 100, bake 0:       CLI {ref_wall:6.2f} s   control plane {ref_control:6.2f} s   "
          f"(all {appliances} acked at {ref_waves[0][2]:.2f} s; the rest is waiting for health evidence)")
    print(f"rollout, waves 5,25,100, bake {bake:g}s:  CLI {wall:6.2f} s   control plane {took:6.2f} s")
    for i, (n, started, acked, baked) in enumerate(waves):
        print(f"  wave {i + 1}: +{n:3d} appliances, started at {started:5.2f} s, all acked at {acked:5.2f} s, "
              f"baked at {baked:5.2f} s")
    floor = bakes + ref_waves[0][2]
    print(f"floor (its {bakes:g} s of bake + one fan-out to every appliance): {floor:.2f} s; "
          f"rollout/floor {took / floor:.2f} (goal <= 1.5)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    parser.add_argument("--appliances", type=int, default=24)
    parser.add_argument("--bake", type=float, default=1.0, help="bake seconds per wave of the measured rollout")
    parser.add_argument("--tick", type=float, default=1.0, help="models.tick_s of the control plane")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="nearcast-bench-deploy-"))
    broker, mport = start_mosquitto(work)
    control, log = None, None
    try:
        control, api, log = start_control(work, mport, args.tick)
        asyncio.run(run(api, mport, work, args.appliances, args.bake, args.tick))
    finally:
        if control is not None:
            control.terminate()
            control.wait(20)
        if log is not None:
            log.close()
        broker.terminate()
        broker.wait()
        shutil.rmtree(work, ignore_errors=True)


def _public_key(state: Path) -> str:
    from shared.signing import Signer

    return Signer.load_or_create(state / "signing-key.pem").public_key_b64()


if __name__ == "__main__":
    main()
