"""Telemetry over the real broker carries the /metrics counters and per-title demand; draining keeps serving."""

from __future__ import annotations

from typing import Any

import aiohttp

from shared.messages import REGISTRY, SetDraining


async def test_telemetry_has_counters_and_title_demand_and_draining_keeps_serving(
        edge: Any, seed: Any, watch: Any) -> None:
    body = b"#EXTM3U\n" * 10
    await seed(edge.ctx.store, "t1", "v1", {"hls/master.m3u8": body, "hls/s.m4s": b"s" * 5000})
    aid = edge.ctx.config.appliance.id
    w = watch(aid)
    await w.wait(edge.ctx.agent.session.connected.is_set)
    tok = edge.token("t1")
    async with aiohttp.ClientSession() as s:
        for path in ("hls/master.m3u8", "hls/s.m4s", "hls/s.m4s"):
            async with s.get(edge.content_url(tok, "t1", path)) as r:
                assert r.status == 200

        def demand() -> Any:
            for t in w.bodies("/telemetry"):
                if "t1" in t.titles:
                    return t
            return None

        await edge.ctx.store.flush_hits()  # popularity for eviction reaches the index
        row = await edge.ctx.store.get_set(("t1", "v1"))
        assert row is not None and row.hits == 3
        await w.wait(lambda: demand() is not None)
        t = demand()
        assert t.titles["t1"].requests == 3 and t.titles["t1"].bytes == len(body) + 10_000
        assert t.counters['nearcast_edge_http_requests_total{kind=segment,status=200}'] == 2
        assert t.counters['nearcast_edge_cache_hits_total{where=disk}'] >= 2
        assert t.gauges["nearcast_edge_cache_capacity_bytes"] == 64 << 20
        assert t.gauges["nearcast_edge_cache_used_bytes"] >= 0 and "draining" in t.gauges
        # demand is per interval: the next sample does not count the same requests again
        seq = t.seq
        await w.wait(lambda: any(x.seq > seq for x in w.bodies("/telemetry")))
        later = [x for x in w.bodies("/telemetry") if x.seq > seq]
        assert all("t1" not in x.titles for x in later)

        w.publish(f"nearcast/v1/appliances/{aid}/commands",
                  REGISTRY.encode(SetDraining(True), sender="control", msg_id=f"drain-{aid}"))
        await w.wait(lambda: any(getattr(b, "state", "") == "draining" for b in w.bodies("/status")))
        async with s.get(edge.content_url(tok, "t1", "hls/s.m4s")) as r:
            assert r.status == 200  # existing sessions keep being served
        async with s.get(edge.url + "/healthz") as r:
            assert (await r.json())["draining"] is True
