"""The embedded amqtt broker: real MqttSessions, the control plane's passwd/ACL files enforced, reloads.

The authentication and ACL cases are the table Mosquitto runs in ``tests/control/test_mosquitto_acl.py``
(``tests/mqtt_acl_cases.py``); the rest covers what only the embedded broker has to get right itself:
reading changed files, dropping revoked logins, and amqtt's session handling before authentication.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
from prometheus_client import CollectorRegistry

from control import mosquitto
from shared import topics
from shared.broker import EmbeddedBroker
from shared.envelope import Envelope
from shared.messages import REGISTRY, ApplianceStatus, Ping
from shared.mqtt import Announcement, MqttMetrics, MqttSession, MqttSettings
from tests.mqtt_acl_cases import A, B, check_acl, check_logins, expected_acl, expected_logins

CONTROL_PW = "control-password"
PASSWORDS = {A: "password-a", B: "password-b"}


def _write(d: Path, users: dict[str, str]) -> None:
    mosquitto.write_broker_files(d, {u: mosquitto.hash_password(p) for u, p in users.items()}, "control")


@pytest.fixture
async def broker(tmp_path: Path) -> AsyncIterator[EmbeddedBroker]:
    _write(tmp_path, {"control": CONTROL_PW, **PASSWORDS})
    b = EmbeddedBroker(tmp_path / "passwd", tmp_path / "acl", reload_interval_s=3600)  # reloads by hand here
    await b.start()
    yield b
    await b.stop()


def _connect(port: int) -> Any:
    def connect(client_id: str, username: str | None, password: str | None) -> aiomqtt.Client:
        return aiomqtt.Client("127.0.0.1", port, identifier=client_id, username=username, password=password)

    return connect


async def test_logins_and_acl_cases(broker: EmbeddedBroker) -> None:
    connect = _connect(broker.port)
    assert await check_logins(connect, PASSWORDS) == expected_logins()
    assert await check_acl(connect, PASSWORDS, "control", CONTROL_PW) == expected_acl()


async def test_sessions_round_trip_with_their_logins(broker: EmbeddedBroker) -> None:
    assert broker.host == "127.0.0.1"
    got: list[Envelope[Any]] = []

    async def handler(env: Envelope[Any], topic: str) -> None:
        got.append(env)

    a = MqttSession(MqttSettings(port=broker.port, username=A, password=PASSWORDS[A]), client_id=A,
                    registry=REGISTRY, metrics=MqttMetrics(CollectorRegistry()),
                    birth=Announcement(topics.appliance_status(A), ApplianceStatus("online")),
                    will=Announcement(topics.appliance_status(A), ApplianceStatus("offline")))
    control = MqttSession(MqttSettings(port=broker.port, username="control", password=CONTROL_PW),
                          client_id="control", registry=REGISTRY, metrics=MqttMetrics(CollectorRegistry()))
    a.subscribe(topics.appliance_commands(A), handler)
    control.subscribe(topics.ALL_STATUS, handler)
    try:
        await a.start()
        await asyncio.wait_for(a.connected.wait(), 10)
        await control.start()
        await asyncio.wait_for(control.connected.wait(), 10)
        await control.publish(topics.appliance_commands(A), Ping("hello"))
        async with asyncio.timeout(10):
            while len(got) < 2:
                await asyncio.sleep(0.05)
        assert {(e.type, e.sender) for e in got} == {("appliance.status", A), ("command.ping", "control")}
    finally:
        await a.stop()
        await control.stop()


async def _disconnected(client: aiomqtt.Client) -> bool:
    try:
        async with asyncio.timeout(10):
            async for _ in client.messages:
                pass
    except aiomqtt.MqttError:
        return True
    return False


async def test_changed_files_take_effect_and_revoked_logins_are_dropped(broker: EmbeddedBroker,
                                                                        tmp_path: Path) -> None:
    connect = _connect(broker.port)
    # Enrolled a moment ago: the file changed, the very next login sees it (no reload needed first).
    _write(tmp_path, {"control": CONTROL_PW, **PASSWORDS, "edge-c": "password-c"})
    async with connect("edge-c", "edge-c", "password-c"):
        pass
    # Removed: an open connection is dropped at the reload, a new one refused.
    async with connect(B, B, PASSWORDS[B]) as cb:
        _write(tmp_path, {"control": CONTROL_PW, A: PASSWORDS[A]})
        assert await broker.reload()
        assert await _disconnected(cb)
    with pytest.raises(aiomqtt.MqttError):
        async with connect(B, B, PASSWORDS[B]):
            pass
    # Unchanged files are not re-read.
    assert not await broker.reload()


async def test_missing_files_refuse_everyone_until_they_appear(tmp_path: Path) -> None:
    b = EmbeddedBroker(tmp_path / "passwd", tmp_path / "acl", reload_interval_s=0.1)
    await b.start()
    try:
        connect = _connect(b.port)
        with pytest.raises(aiomqtt.MqttError):
            async with connect(A, A, PASSWORDS[A]):
                pass
        _write(tmp_path, {A: PASSWORDS[A]})
        async with connect(A, A, PASSWORDS[A]) as ca:
            await ca.publish(topics.appliance_status(A), b"x", qos=1)
    finally:
        await b.stop()


async def test_nobody_can_take_over_another_identitys_session(broker: EmbeddedBroker) -> None:
    """amqtt looks sessions up by client id before it authenticates: neither a stranger nor another
    appliance may use B's client id to drop or inherit B's session."""
    connect = _connect(broker.port)
    async with connect(B, B, PASSWORDS[B]) as cb, connect("control", "control", CONTROL_PW) as control:
        await cb.subscribe(topics.appliance_commands(B), qos=1)
        for username, password, clean in ((None, None, True), (B, "wrong", True), (B, "wrong", False),
                                          (A, PASSWORDS[A], True), (A, PASSWORDS[A], False)):
            with pytest.raises(aiomqtt.MqttError):
                async with aiomqtt.Client("127.0.0.1", broker.port, identifier=B, username=username,
                                          password=password, clean_session=clean):
                    pass
        # B kept its connection and its subscription.
        await control.publish(topics.appliance_commands(B), b"still yours", qos=1)
        async with asyncio.timeout(10):
            async for message in cb.messages:
                assert message.payload == b"still yours"
                break
    # The same appliance under a rotated user name may take its own client id over.
    _write(broker.files.password_file.parent, {"control": CONTROL_PW, **PASSWORDS, "edge-b@1": "rotated"})
    async with connect(B, B, PASSWORDS[B]), connect(B, "edge-b@1", "rotated") as cb1:
        await cb1.publish(topics.appliance_telemetry(B), b"x", qos=1)
