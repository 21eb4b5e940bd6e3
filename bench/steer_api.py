"""GET /v1/play latency at a fixed request rate, with a fleet of 5k appliances announcing 100k prefixes.

The control plane runs in its own process with its registry filled in memory (what enrollment and
MQTT status would have built), so the figure is the full HTTP path: client-IP resolution, steering
over the real index, a title read from SQLite, URL signing, JSON.  The load generator is open-loop
(requests leave on schedule whether or not earlier ones returned), so queueing shows up in the tail.
Reference in the same run: ``GET /healthz`` on the same server at the same rate; the ratio of p99s
is the cost of a play decision over an empty request.

Usage: .venv/bin/python bench/steer_api.py [--rate 200] [--seconds 10]
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import multiprocessing
import random
import socket
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

APPLIANCES = 5_000
PREFIXES = 100_000
TITLES = 200


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def fleet(seed: int = 1) -> tuple[list[Any], list[str]]:
    """Appliance records with 20 prefixes each (/25s out of 10.0.0.0/8, shuffled)."""
    from control.store import ApplianceMeta, ApplianceRecord

    rng = random.Random(seed)
    nets = list(ipaddress.IPv4Network("10.0.0.0/8").subnets(new_prefix=25))
    rng.shuffle(nets)
    per = PREFIXES // APPLIANCES
    records, clients = [], []
    for i in range(APPLIANCES):
        mine = nets[i * per:(i + 1) * per]
        meta = ApplianceMeta(site=f"site-{i // 4}", region=f"r{i // 200}", asn=64512 + i // 10,
                             prefixes=tuple(str(n) for n in mine), lat=rng.uniform(-60, 60),
                             lon=rng.uniform(-180, 180), disk_bytes=10**13)
        records.append(ApplianceRecord(f"edge-{i:05d}", meta, "$7$x", 0.0))
        clients.append(str(mine[0].network_address + 7))
    return records, clients


def serve(port: int, state: str, ready: Any) -> None:
    from aiohttp import web

    from control.app import CTX, build_app
    from control.config import ControlConfig
    from control.store import Holding, TitleRecord
    from shared import config as cfg
    from shared.messages import ApplianceStatus

    config = cfg.build(ControlConfig, {"state": {"dir": state}, "fill": {"interval_s": 0.0},
                                       "http": {"trusted_proxies": ["127.0.0.1/32"]},
                                       "mqtt": {"port": free_port(), "reconnect_min_s": 30.0},
                                       "steering": {"refresh_s": 3600.0}}, source="bench")

    async def main() -> None:
        app = build_app(config, api_url=f"http://127.0.0.1:{port}")
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        ctx = app[CTX]
        records, _ = fleet()
        rng = random.Random(2)
        now = time.time()
        for t in range(TITLES):
            title = TitleRecord(f"t{t}", f"T{t}", (), "v1", 10**9, "/x", now, True, now)
            await ctx.store.put_title(title, actor="bench")
            ctx.registry.set_title(title.title_id, "v1", title.size)
        for rec in records:
            ctx.registry.put(rec)
            ctx.fleet.on_status(rec.appliance_id, ApplianceStatus("online", "b", now, f"http://{rec.appliance_id}:80"),
                                now)
            held = rng.sample(range(TITLES), 40)
            ctx.registry.set_holdings(rec.appliance_id, [Holding(rec.appliance_id, f"t{t}", "v1", True) for t in held])
        ctx.fleet.ttl_s = 1e9
        start = time.perf_counter()
        ctx.registry.index()
        print(f"server: steering index over {len(ctx.registry.index().prefixes)} prefixes built in "
              f"{time.perf_counter() - start:.2f} s", flush=True)
        first = records[0]
        ctx.registry.put(first)  # a registry change: the next decision rebuilds, reusing the prefix table
        start = time.perf_counter()
        ctx.registry.index()
        print(f"server: rebuild after a change (prefix table reused) {time.perf_counter() - start:.3f} s",
              flush=True)
        await web.TCPSite(runner, "127.0.0.1", port).start()
        ready.set()
        await asyncio.Event().wait()

    asyncio.run(main())


async def load(url_of: Any, rate: float, seconds: float, session: aiohttp.ClientSession) -> list[float]:
    """Open loop: request i leaves at start + i / rate; returns latencies in ms (failures raise)."""
    latencies: list[float] = []
    n = int(rate * seconds)
    loop = asyncio.get_running_loop()
    start = loop.time() + 0.1

    async def one(i: int) -> None:
        await asyncio.sleep(max(0.0, start + i / rate - loop.time()))
        url, headers = url_of(i)
        t0 = time.perf_counter()
        async with session.get(url, headers=headers) as resp:
            await resp.read()
            if resp.status != 200:
                raise RuntimeError(f"{url}: HTTP {resp.status}")
        latencies.append((time.perf_counter() - t0) * 1000)

    await asyncio.gather(*(one(i) for i in range(n)))
    return latencies


def p99(values: list[float]) -> float:
    return statistics.quantiles(values, n=100)[98]


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rate", type=float, default=200.0, help="requests per second")
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()
    port = free_port()
    mp = multiprocessing.get_context("spawn")
    ready = mp.Event()
    with tempfile.TemporaryDirectory(prefix="nearcast-bench-steer-") as state:
        proc = mp.Process(target=serve, args=(port, str(Path(state)), ready), daemon=True)
        proc.start()
        try:
            while not ready.is_set():
                if not proc.is_alive():
                    raise RuntimeError("server process died")
                await asyncio.sleep(0.2)
            _, clients = fleet()
            base = f"http://127.0.0.1:{port}"
            # The load generator poses as a trusted proxy, so every request is a different client inside
            # some appliance's announced prefixes and the longest-prefix match does real work.
            async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=256)) as session:
                await load(lambda i: (f"{base}/healthz", {}), 50, 1, session)  # warm-up
                ref = await load(lambda i: (f"{base}/healthz", {}), args.rate, args.seconds, session)
                play = await load(lambda i: (f"{base}/v1/play/t{i % TITLES}",
                                             {"X-Forwarded-For": clients[(i * 7919) % len(clients)]}),
                                  args.rate, args.seconds, session)
            print(f"fleet: {APPLIANCES} appliances, {PREFIXES} prefixes, {TITLES} titles; "
                  f"{args.rate:.0f} req/s for {args.seconds:.0f} s ({len(clients)} distinct client networks)")
            print(f"reference GET /healthz     p50 {statistics.median(ref):6.2f} ms  p99 {p99(ref):6.2f} ms")
            print(f"GET /v1/play/{{title}}       p50 {statistics.median(play):6.2f} ms  p99 {p99(play):6.2f} ms")
            print(f"ratio p99 play/healthz     {p99(play) / p99(ref):6.2f}")
        finally:
            proc.terminate()
            proc.join()


if __name__ == "__main__":
    asyncio.run(main())
