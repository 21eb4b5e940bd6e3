"""Telemetry ingest throughput: messages/s through a real Mosquitto into the control plane's SQLite store.

A publisher process plays N appliances sending telemetry at QoS 1 as fast as the broker takes it.
Measured twice in the same run, so the ratio is meaningful on any machine:

* reference: a bare aiomqtt subscriber that only counts messages (the broker + client ceiling);
* control:   the real control plane (decode, validate, liveness, demand, batched writes + rollups),
             timed until every sample is committed to the store.

Usage: .venv/bin/python bench/telemetry.py [--messages 30000] [--appliances 200]
Goal: >= 5000 messages/s into the store on 2 cores.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import aiomqtt
from aiohttp import web

from control.app import CTX, build_app
from control.config import ControlConfig
from shared import config as cfg
from shared import topics
from shared.messages import REGISTRY, Telemetry, TitleDemand


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_mosquitto(workdir: Path) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    conf = workdir / "mosquitto.conf"
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\nmax_queued_messages 1000000\n")
    binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    proc = subprocess.Popen([binary, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc, port
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("mosquitto did not start")


def payloads(appliances: int, messages: int) -> list[tuple[str, bytes]]:
    out = []
    for i in range(messages):
        aid = f"bench-{i % appliances:05d}"
        sample = Telemetry(i // appliances + 1, 10.0, {"bytes_served": 1e6, "requests": 100.0, "miss.not_held": 1.0},
                           {"load": 0.3, "disk_used_bytes": 5e11}, {f"t{i % 50}": TitleDemand(10, 10_000_000)})
        out.append((topics.appliance_telemetry(aid), REGISTRY.encode(sample, sender=aid)))
    return out


def _remaining(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _string(text: str) -> bytes:
    raw = text.encode()
    return len(raw).to_bytes(2, "big") + raw


def publish_packet(topic: str, payload: bytes, packet_id: int) -> bytes:
    body = _string(topic) + packet_id.to_bytes(2, "big") + payload
    return b"\x32" + _remaining(len(body)) + body


def publisher(port: int, appliances: int, messages: int, ready: Any) -> None:
    """A raw-socket MQTT 3.1.1 publisher (QoS 1): pre-encoded packets, so it is never the bottleneck."""
    import threading

    packets = b"".join(publish_packet(t, p, i % 65535 + 1) for i, (t, p) in enumerate(payloads(appliances, messages)))
    sock = socket.create_connection(("127.0.0.1", port))
    connect = b"\x00\x04MQTT\x04\x02\x00\x3c" + _string("bench-publisher")
    sock.sendall(b"\x10" + _remaining(len(connect)) + connect)
    if sock.recv(4)[:1] != b"\x20":
        raise RuntimeError("no CONNACK")
    acked = 0

    def drain() -> None:
        nonlocal acked
        while acked < messages:
            data = sock.recv(1 << 16)
            if not data:
                return
            acked += len(data) // 4  # PUBACK is 4 bytes

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    ready.wait()
    sock.sendall(packets)
    reader.join(120)
    sock.close()


def spawn_publisher(port: int, appliances: int, messages: int) -> tuple[Any, Any]:
    ctx = multiprocessing.get_context("spawn")
    ready = ctx.Event()
    proc = ctx.Process(target=publisher, args=(port, appliances, messages, ready))
    proc.start()
    return proc, ready


async def reference(port: int, appliances: int, messages: int) -> float:
    async with aiomqtt.Client("127.0.0.1", port, identifier="bench-counter", max_queued_incoming_messages=0) as sub:
        await sub.subscribe(topics.ALL_TELEMETRY, qos=1)
        proc, ready = spawn_publisher(port, appliances, messages)
        await asyncio.sleep(1.0)
        start = time.perf_counter()
        ready.set()
        seen = 0
        async for _ in sub.messages:
            seen += 1
            if seen == messages:
                break
        elapsed = time.perf_counter() - start
    proc.join()
    return messages / elapsed


async def control_plane(port: int, state: Path, appliances: int, messages: int) -> tuple[float, int]:
    # The inbound queue holds the whole burst: the figure is sustained processing, not a drop rate.
    config = cfg.build(ControlConfig, {"state": {"dir": str(state)}, "fill": {"interval_s": 0.0},
                                       "mqtt": {"port": port, "inbound_queue": messages + 1}}, source="bench")
    app = build_app(config, api_url="http://127.0.0.1:1")
    runner = web.AppRunner(app)
    await runner.setup()
    ctx = app[CTX]
    try:
        await asyncio.wait_for(ctx.session.connected.wait(), 30)
        proc, ready = spawn_publisher(port, appliances, messages)
        await asyncio.sleep(1.0)
        start = time.perf_counter()
        ready.set()
        deadline = time.monotonic() + 600
        while ctx.ingest.written < messages and time.monotonic() < deadline:  # noqa: ASYNC110 - polling a counter
            await asyncio.sleep(0.01)
        elapsed = time.perf_counter() - start
        proc.join()
        stored = await ctx.store.count_raw()
        rollups = len(await ctx.store.rollups(resolution_s=60, since=0))
        print(f"  stored {stored} raw samples, {rollups} 1-minute rollup rows")
        return messages / elapsed, stored
    finally:
        await runner.cleanup()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    parser.add_argument("--messages", type=int, default=30_000)
    parser.add_argument("--appliances", type=int, default=200)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="nearcast-bench-telemetry-"))
    broker, port = start_mosquitto(work)
    try:
        ref = await reference(port, args.appliances, args.messages)
        print(f"reference (bare subscriber):  {ref:10.0f} msg/s")
        got, stored = await control_plane(port, work / "state", args.appliances, args.messages)
        print(f"control plane into SQLite:    {got:10.0f} msg/s  ({stored} stored)")
        print(f"ratio control/reference:      {got / ref:10.2f}")
        print(f"goal >= 5000 msg/s:           {'met' if got >= 5000 else 'NOT met'}")
    finally:
        broker.terminate()
        broker.wait()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    asyncio.run(main())
