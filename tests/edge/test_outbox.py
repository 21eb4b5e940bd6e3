"""The telemetry outbox: samples wait on disk while the broker is away, within a bounded budget."""

from __future__ import annotations

import asyncio
import json
import socket
from typing import Any

import aiohttp

from edge.outbox import TelemetryOutbox
from shared.messages import REGISTRY


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def _until(check: Any, timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not check():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.05)


async def test_without_a_broker_samples_pile_up_on_disk_bounded_and_the_edge_serves(edge_factory: Any) -> None:
    budget = 16_384
    edge = await edge_factory(mqtt={"port": _closed_port(), "reconnect_min_s": 5.0},
                              telemetry={"interval_s": 0.02, "spool_max_bytes": budget})
    outbox: TelemetryOutbox = edge.ctx.agent.outbox
    registry = edge.ctx.metrics.registry

    def dropped() -> float:
        return registry.get_sample_value("nearcast_edge_telemetry_dropped_total") or 0.0

    await _until(lambda: dropped() > 0)
    async with aiohttp.ClientSession() as http, http.get(f"{edge.url}/healthz") as resp:
        assert resp.status == 200 and (await resp.json())["mqtt"] == "disconnected"
    size = await outbox.spool.size()
    assert 0 < size <= budget + outbox.spool.segment_bytes  # the oldest segment goes once over budget
    assert registry.get_sample_value("nearcast_edge_telemetry_messages_total") == 0
    # What is left is the newest samples, in order, each a whole envelope with its sequence number.
    seqs = [json.loads(r.payload)["body"]["seq"] for r in await outbox.spool.pending(10_000)]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs))) and seqs[0] > 1
    assert REGISTRY.decode((await outbox.spool.pending(1))[0].payload).sender == edge.ctx.config.appliance.id
