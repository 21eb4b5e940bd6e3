"""Telemetry through a real broker into the store: bad messages are rejected and counted, the loop lives."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from control.ingest import misses_by_site, validate
from shared import topics
from shared.errors import InvalidInput
from shared.messages import REGISTRY, Telemetry, TitleDemand
from shared.spool import Spool

from .conftest import Harness, eventually, make_origin_title


def test_validate_refuses_out_of_range_samples() -> None:
    ok = validate("e1", Telemetry(1, 10.0, {"bytes": 5.0}, {"load": 0.5}, {"t1": TitleDemand(1, 10)}), 1.0)
    assert ok.titles == {"t1": (1, 10)}
    bad = [
        Telemetry(-1, 10.0),
        Telemetry(1, 0.0),
        Telemetry(1, float("nan")),
        Telemetry(1, 10.0, {"bytes": -1.0}),
        Telemetry(1, 10.0, {"bytes": float("inf")}),
        Telemetry(1, 10.0, {"Bad Name": 1.0}),
        Telemetry(1, 10.0, {"x{a=\n}": 1.0}),
        Telemetry(1, 10.0, {f"m{i}": 1.0 for i in range(3000)}),
        Telemetry(1, 10.0, gauges={"load": float("nan")}),
        Telemetry(1, 10.0, titles={"t/../x": TitleDemand(1, 1)}),
        Telemetry(1, 10.0, titles={"t1": TitleDemand(-1, 1)}),
    ]
    for sample in bad:
        with pytest.raises(InvalidInput):
            validate("e1", sample, 1.0)


def test_misses_by_site_sums_causes() -> None:
    rows = [("a", "miss.not_held", 3.0), ("b", "nearcast_edge_cache_misses_total{cause=not_held}", 2.0),
            ("b", "miss.filling", 1.0),
            ("a", "bytes", 99.0), ("z", "miss.x", 1.0)]
    assert misses_by_site(rows, {"a": "s1", "b": "s1"}) == {
        "s1": {"not_held": 5.0, "filling": 1.0}, "unknown": {"x": 1.0}}


def _rejected(control: Harness) -> float:
    value = control.ctx.metrics.registry.get_sample_value("nearcast_mqtt_messages_received_total",
                                                          {"result": "rejected"})
    return value or 0.0


async def test_garbage_wrong_version_and_oversized_are_rejected_and_counted(control: Harness) -> None:
    make_origin_title(control.state, "t1")
    assert (await control.call("POST", "/v1/titles", {"title_id": "t1"}))[0] == 201
    await control.enroll("edge-a", site="s1", region="r1")
    topic = topics.appliance_telemetry("edge-a")
    good = json.loads(REGISTRY.encode(Telemetry(1, 10.0), sender="edge-a"))
    wrong_version = dict(good, v=99)
    wrong_type = dict(good, type="command.ping", body={})
    garbage: list[bytes] = [
        b"\x00\xff garbage", b"{}", b"[]", json.dumps(wrong_version).encode(), json.dumps(wrong_type).encode(),
        json.dumps(dict(good, sender="edge-b")).encode(),  # sender is not the topic's appliance
        json.dumps(dict(good, body={"seq": "x", "interval_s": 1})).encode(),
        b'{"type": "appliance.telemetry", "pad": "' + b"x" * 300_000 + b'"}',
        b"[" * 100_000,
    ]
    async with control.mqtt("edge-a") as client:
        await control.announce(client, "edge-a", "http://edge-a:1")
        for payload in garbage:
            await client.publish(topic, payload, qos=1)
        await eventually(lambda: _rejected(control) >= len(garbage))
        # The loop lives: a valid sample after all that is stored and counted in the rollups.
        await client.publish(topic, REGISTRY.encode(Telemetry(
            1, 10.0, {"bytes_served": 1234.0, "miss.not_held": 2.0}, {"load": 0.4},
            {"t1": TitleDemand(3, 20_000)}), sender="edge-a"), qos=1)

        async def stored() -> bool:
            return await control.ctx.store.count_raw() == 1

        await eventually(stored)
    assert _rejected(control) == len(garbage)
    status, body = await control.call("GET", "/v1/telemetry/rollups?resolution=60", token=control.reader)
    assert status == 200 and {r["name"]: r["total"] for r in body["rollups"]}["bytes_served"] == 1234.0
    status, body = await control.call("GET", "/v1/telemetry/misses?hours=1")
    assert body["sites"] == {"s1": {"not_held": 2.0}}
    assert control.ctx.fleet.get("edge-a").load == 0.4  # type: ignore[union-attr]
    # Demand reached the popularity model as views (bytes / title size) in the appliance's region.
    size = (await control.ctx.store.get_title("t1")).size
    assert control.ctx.demand.observed("r1", time.time())["t1"] == pytest.approx(20_000 / size, rel=1e-3)
    metrics = await control.call("GET", "/metrics", token=None)
    assert 'nearcast_control_telemetry_samples_total{result="accepted"} 1.0' in metrics[1]


async def test_cumulative_counters_become_deltas(control: Harness) -> None:
    await control.enroll("edge-a", site="s1")
    name = "nearcast_edge_cache_misses_total{cause=not_held}"
    async with control.mqtt("edge-a") as client:
        await control.announce(client, "edge-a", "http://edge-a:1")
        for seq, value in ((5, 100.0), (6, 130.0), (7, 10.0)):  # a baseline, +30, then a restart (+10)
            await control.telemetry(client, "edge-a", Telemetry(seq, 10.0, {name: value}))

        async def stored() -> bool:
            return await control.ctx.store.count_raw() == 3

        await eventually(stored)
    body = (await control.call("GET", "/v1/telemetry/misses?hours=1"))[1]
    assert body["sites"] == {"s1": {"not_held": 40.0}}


async def test_bad_query_parameters_are_400(control: Harness) -> None:
    for q in ("resolution=5", "hours=abc", "hours=-1", "hours=nan", "appliance=a/b"):
        status, _ = await control.call("GET", f"/v1/telemetry/rollups?{q}")
        assert status == 400, q




async def _stored_seqs(control: Harness, aid: str) -> list[int]:
    rows = await control.ctx.store.db.read(lambda db: db.execute(
        "select seq from telemetry_raw where appliance_id = ? order by seq", [aid]).fetchall())
    return [int(seq) for (seq,) in rows]


async def test_spool_redelivery_after_an_edge_crash_is_stored_once(control: Harness, tmp_path: Path) -> None:
    """The edge crashed after the broker acknowledged samples 1-3 but before its spool cursor moved:
    the re-opened spool sends them again with 4 and 5, and the control plane keeps each sample once."""
    await control.enroll("edge-a", site="s1")
    topic = topics.appliance_telemetry("edge-a")
    spool = Spool(tmp_path / "spool")
    await spool.open()
    await spool.append(*[REGISTRY.encode(Telemetry(seq, 1.0, {"bytes": 10.0 * seq}), sender="edge-a")
                         for seq in range(1, 6)])
    async with control.mqtt("edge-a") as client:
        for record in await spool.pending(3):
            await client.publish(topic, record.payload, qos=1)  # acknowledged by the broker...
        await spool.close()  # ...and the edge dies before ``ack``: nothing was removed

        again = Spool(tmp_path / "spool")
        await again.open()

        async def deliver(payload: bytes) -> None:
            await client.publish(topic, payload, qos=1)

        assert await again.drain(deliver) == 5  # at least once: 1-3 a second time, then 4 and 5
        await again.close()

        async def all_heard() -> bool:
            return control.ctx.ingest.written == 5 and control.ctx.ingest.pending() == 0 and (
                control.ctx.metrics.registry.get_sample_value(
                    "nearcast_control_telemetry_samples_total", {"result": "duplicate"}) == 3)

        await eventually(all_heard)
    assert await _stored_seqs(control, "edge-a") == [1, 2, 3, 4, 5]
    accepted = control.ctx.metrics.registry.get_sample_value("nearcast_control_telemetry_samples_total",
                                                             {"result": "accepted"})
    assert accepted == 5
