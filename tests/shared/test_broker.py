"""The embedded amqtt broker carries a real MqttSession: retained birth, commands, clean stop."""

from __future__ import annotations

import asyncio
from typing import Any

from prometheus_client import CollectorRegistry

from shared.broker import EmbeddedBroker
from shared.envelope import Envelope
from shared.messages import REGISTRY, ApplianceStatus, Ping
from shared.mqtt import Announcement, MqttMetrics, MqttSession, MqttSettings


async def test_embedded_broker_round_trip() -> None:
    broker = EmbeddedBroker()
    await broker.start()
    assert broker.host == "127.0.0.1"
    got: list[Envelope[Any]] = []

    async def handler(env: Envelope[Any], topic: str) -> None:
        got.append(env)

    a = MqttSession(MqttSettings(port=broker.port), client_id="a", registry=REGISTRY,
                    metrics=MqttMetrics(CollectorRegistry()),
                    birth=Announcement("s/a", ApplianceStatus("online")),
                    will=Announcement("s/a", ApplianceStatus("offline")))
    b = MqttSession(MqttSettings(port=broker.port), client_id="b", registry=REGISTRY,
                    metrics=MqttMetrics(CollectorRegistry()))
    b.subscribe("s/+", handler)
    b.subscribe("cmd/b", handler)
    try:
        await a.start()
        await asyncio.wait_for(a.connected.wait(), 10)
        await b.start()
        await asyncio.wait_for(b.connected.wait(), 10)
        await a.publish("cmd/b", Ping("hello"))
        for _ in range(200):
            if len(got) >= 2:
                break
            await asyncio.sleep(0.05)
        kinds = {(e.type, e.sender) for e in got}
        assert ("appliance.status", "a") in kinds and ("command.ping", "a") in kinds
    finally:
        await a.stop()
        await b.stop()
        await broker.stop()
