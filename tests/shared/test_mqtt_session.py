"""The MQTT session against real brokers: the machine's Mosquitto and a private one we restart."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
from prometheus_client import CollectorRegistry

from shared import config as cfg
from shared.envelope import Envelope
from shared.errors import InvalidInput
from shared.ids import new_id
from shared.messages import REGISTRY, Ack, ApplianceStatus, Ping
from shared.mqtt import Announcement, MqttMetrics, MqttSession, MqttSettings


def _settings(port: int, **kw: Any) -> MqttSettings:
    doc = {"mqtt": {"host": "127.0.0.1", "port": port, "keepalive_s": 2, "reconnect_min_s": 0.1,
                    "reconnect_max_s": 0.5, **kw}}

    from dataclasses import dataclass

    @dataclass(frozen=True)
    class Wrapper:
        mqtt: MqttSettings = cfg.section(MqttSettings, "x")

    return cfg.build(Wrapper, doc, source="test").mqtt


def _session(port: int, cid: str, *, ack_topic: str | None = None, will: bool = True, **kw: Any) -> MqttSession:
    status = f"test/{cid}/status"
    return MqttSession(
        _settings(port, **kw), client_id=cid, registry=REGISTRY, metrics=MqttMetrics(CollectorRegistry()),
        birth=Announcement(status, ApplianceStatus("online")) if will else None,
        will=Announcement(status, ApplianceStatus("offline")) if will else None,
        ack_topic=ack_topic)


async def _watch(port: int, topic_filter: str, into: list[tuple[str, bytes]], ready: asyncio.Event) -> None:
    async with aiomqtt.Client("127.0.0.1", port, identifier=f"watch-{new_id()}") as client:
        await client.subscribe(topic_filter, qos=1)
        ready.set()
        async for msg in client.messages:
            into.append((msg.topic.value, bytes(msg.payload)))  # type: ignore[arg-type]


async def _until(pred: Any, timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not pred():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.05)


async def test_publish_subscribe_and_bad_messages_on_the_machine_broker(system_mosquitto_port: int) -> None:
    cid = f"t{new_id()}"
    ack_topic = f"test/{cid}/acks"
    session = _session(system_mosquitto_port, cid, ack_topic=ack_topic, max_payload_bytes=2000)
    got: list[Envelope[Any]] = []

    async def handler(env: Envelope[Any], topic: str) -> None:
        if isinstance(env.body, Ping) and env.body.note == "boom":
            raise InvalidInput("boom is not allowed")
        if isinstance(env.body, Ping) and env.body.note == "crash":
            raise RuntimeError("bug")
        got.append(env)

    session.subscribe(f"test/{cid}/in", handler)
    seen: list[tuple[str, bytes]] = []
    ready = asyncio.Event()
    from shared.tasks import TaskGroup

    tg = TaskGroup("watch")
    tg.spawn(_watch(system_mosquitto_port, f"test/{cid}/#", seen, ready), name="watch")
    await ready.wait()
    await session.start()
    await asyncio.wait_for(session.connected.wait(), 10)
    try:
        async with aiomqtt.Client("127.0.0.1", system_mosquitto_port) as raw:
            for payload in (b"garbage", b"{}", b"x" * 5000,
                            REGISTRY.encode(Ping("boom"), sender="control", msg_id="bad-1"),
                            REGISTRY.encode(Ping("crash"), sender="control", msg_id="bad-2"),
                            REGISTRY.encode(Ping("fine"), sender="control", msg_id="good-1")):
                await raw.publish(f"test/{cid}/in", payload, qos=1)
        await _until(lambda: len(got) == 1 and sum(1 for t, _ in seen if t == ack_topic) == 5)
        assert got[0].id == "good-1" and got[0].body == Ping("fine")
        acks = [REGISTRY.decode(p).body for t, p in seen if t == ack_topic]
        assert all(isinstance(a, Ack) for a in acks)
        by_id = {a.command_id: a for a in acks}
        assert by_id["bad-1"].status == "rejected" and "boom" in by_id["bad-1"].reason
        assert by_id["bad-2"].status == "failed"
        assert sum(1 for a in acks if a.command_id == "unknown") == 3  # not even an envelope
        assert any("exceeds the limit" in a.reason for a in acks)
        m = session.metrics.received
        assert m.labels("rejected")._value.get() == 4 and m.labels("failed")._value.get() == 1
        assert m.labels("ok")._value.get() == 1
        # The loop lives on: a later good message is still handled.
        await session.publish(f"test/{cid}/in", Ping("after"))
        await _until(lambda: len(got) == 2)
    finally:
        await session.stop()
        await tg.aclose()
    statuses = [json.loads(p)["body"]["state"] for t, p in seen if t == f"test/{cid}/status" and p]
    assert statuses[0] == "online" and statuses[-1] == "offline"  # birth, then clean-stop announcement


async def test_reconnects_resubscribes_and_will_marks_offline(private_mosquitto: Any) -> None:
    """Stop the broker mid-session and restart it.

    Meanwhile the session's Last Will marks it offline (mosquitto, persisting, publishes the Will of
    the clients it loses on shutdown and keeps it retained); then the session reconnects with backoff,
    publishes its birth again and re-subscribes (a message published after the restart reaches it).
    """
    port = private_mosquitto.port
    cid = f"r{new_id()}"
    session = _session(port, cid, reconnect_min_s=1.5, reconnect_max_s=3.0)
    got: list[str] = []

    async def handler(env: Envelope[Any], topic: str) -> None:
        got.append(env.body.note)

    session.subscribe(f"test/{cid}/in", handler)
    await session.start()
    await asyncio.wait_for(session.connected.wait(), 10)
    await session.publish(f"test/{cid}/in", Ping("one"))
    await _until(lambda: got == ["one"])

    await asyncio.to_thread(private_mosquitto.stop)
    await _until(lambda: not session.connected.is_set())
    with pytest.raises(Exception, match="not connected"):
        await session.publish(f"test/{cid}/in", Ping("lost"), timeout=0.2)
    await asyncio.to_thread(private_mosquitto.start)

    states: list[str] = []
    seen = asyncio.Event()

    async def watch() -> None:
        async with aiomqtt.Client("127.0.0.1", port, identifier=f"w{cid}") as watcher:
            await watcher.subscribe(f"test/{cid}/status", qos=1)
            async for msg in watcher.messages:
                states.append(json.loads(bytes(msg.payload))["body"]["state"])  # type: ignore[arg-type]
                if states[-1] == "online" and "offline" in states:
                    seen.set()

    from shared.tasks import TaskGroup

    tg = TaskGroup("watch")
    tg.spawn(watch(), name="watch")
    try:
        await asyncio.wait_for(session.connected.wait(), 15)
        assert session.connect_count == 2
        try:
            await asyncio.wait_for(seen.wait(), 10)
        except TimeoutError:
            raise AssertionError(f"states seen: {states}; log: {private_mosquitto.log()[-2000:]}") from None
        assert states[0] == "offline"  # the Will, retained while the session was away
        assert states[-1] == "online"  # the birth, published again on reconnect
        await session.publish(f"test/{cid}/in", Ping("two"))  # delivered only if we resubscribed
        await _until(lambda: got == ["one", "two"])
    finally:
        await tg.aclose()
        await session.stop(announce_offline=False)


async def test_last_will_marks_a_vanished_client_offline(private_mosquitto: Any, tmp_path: Path) -> None:
    """A session in a child process is SIGKILLed: the broker publishes its retained Will."""
    import subprocess
    import sys

    port = private_mosquitto.port
    script = tmp_path / "client.py"
    script.write_text(f"""
import asyncio, sys
sys.path.insert(0, {str(Path(__file__).resolve().parents[2])!r})
from prometheus_client import CollectorRegistry
from shared.messages import REGISTRY, ApplianceStatus
from shared.mqtt import Announcement, MqttMetrics, MqttSession, MqttSettings
async def main():
    s = MqttSession(MqttSettings(port={port}, keepalive_s=1), client_id="victim", registry=REGISTRY,
                    metrics=MqttMetrics(CollectorRegistry()),
                    birth=Announcement("test/victim/status", ApplianceStatus("online")),
                    will=Announcement("test/victim/status", ApplianceStatus("offline", reason="lost")))
    await s.start(); await s.connected.wait(); print("up", flush=True); await asyncio.sleep(60)
asyncio.run(main())
""")
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        assert (await asyncio.to_thread(proc.stdout.readline)).strip() == b"up"
        states: list[str] = []

        async def watch() -> None:
            async with aiomqtt.Client("127.0.0.1", port) as watcher:
                await watcher.subscribe("test/victim/status", qos=1)
                async for msg in watcher.messages:
                    states.append(json.loads(bytes(msg.payload))["body"]["state"])  # type: ignore[arg-type]
                    if states[-1] == "offline":
                        return

        from shared.tasks import TaskGroup

        tg = TaskGroup("w")
        t = tg.spawn(watch(), name="watch")
        await _until(lambda: states == ["online"])
        proc.kill()
        await asyncio.wait_for(t, 15)
        assert states == ["online", "offline"]
    finally:
        proc.kill()
        proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


async def test_inbound_overflow_is_counted(system_mosquitto_port: int) -> None:
    cid = f"o{new_id()}"
    session = _session(system_mosquitto_port, cid, will=False, inbound_queue=2)
    release = asyncio.Event()
    handled: list[str] = []

    async def slow(env: Envelope[Any], topic: str) -> None:
        await release.wait()
        handled.append(env.id)

    session.subscribe(f"test/{cid}/in", slow)
    await session.start()
    await asyncio.wait_for(session.connected.wait(), 10)
    async with aiomqtt.Client("127.0.0.1", system_mosquitto_port) as raw:
        for i in range(20):
            await raw.publish(f"test/{cid}/in", REGISTRY.encode(Ping(str(i)), sender="x"), qos=1)
    await _until(lambda: session.metrics.dropped._value.get() > 0)
    release.set()
    await _until(lambda: len(handled) + session.metrics.dropped._value.get() == 20)
    await session.stop()
