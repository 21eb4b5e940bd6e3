"""A drained appliance stays drained: across a reconnect (its birth status) and across a restart (on disk).

Before, the birth status every connect publishes was fixed at "online", so a draining appliance
announced itself online after any broker restart, and a restarted one forgot it was drained."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiohttp

from shared.messages import REGISTRY, SetDraining
from tests.edge.conftest import make_config, start_edge


async def _health(url: str) -> Any:
    async with aiohttp.ClientSession() as s, s.get(f"{url}/healthz") as r:
        return await r.json()


async def test_a_drained_appliance_stays_drained_across_reconnects_and_restarts(
        tmp_path: Path, keys: Any, watch: Any) -> None:
    config = make_config(tmp_path, keys)
    aid = config.appliance.id
    edge, runner = await start_edge(config, keys)
    w = watch(aid)
    try:
        await w.wait(edge.ctx.agent.session.connected.is_set)
        w.publish(f"nearcast/v1/appliances/{aid}/commands",
                  REGISTRY.encode(SetDraining(True), sender="control", msg_id=f"drain-{aid}"))
        await w.wait(lambda: [getattr(b, "state", "") for b in w.bodies("/status")][-1:] == ["draining"])
        birth = edge.ctx.agent.session.birth
        assert birth is not None and birth.body.state == "draining"  # what the next reconnect announces
    finally:
        await runner.cleanup()
    seen = len(w.bodies("/status"))
    edge, runner = await start_edge(config, keys)  # the same appliance, restarted
    try:
        assert (await _health(edge.url))["draining"] is True
        await w.wait(lambda: [b.state for b in w.bodies("/status")][-1:] == ["draining"])
        assert "online" not in [b.state for b in w.bodies("/status")[seen:]]  # its birth said draining
        w.publish(f"nearcast/v1/appliances/{aid}/commands",
                  REGISTRY.encode(SetDraining(False), sender="control", msg_id=f"undrain-{aid}"))
        await w.wait(lambda: [getattr(b, "state", "") for b in w.bodies("/status")][-1:] == ["online"])
        assert (await _health(edge.url))["draining"] is False
    finally:
        await runner.cleanup()
    edge, runner = await start_edge(config, keys)
    try:
        assert (await _health(edge.url))["draining"] is False
    finally:
        await runner.cleanup()
