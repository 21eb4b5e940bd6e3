"""The MQTT authentication and ACL cases, run against Mosquitto and against the embedded broker.

One table, two brokers: ``tests/control/test_mosquitto_acl.py`` runs it on a private Mosquitto fed the
files the control plane generated, ``tests/shared/test_broker.py`` on the embedded amqtt broker fed the
same files.  No sleeps decide an outcome: every negative check is followed on the same connection by a
sentinel the observer must see, and MQTT keeps one connection's messages in order, so a forbidden
message that got through would have arrived before its sentinel.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import aiomqtt

from shared import topics

A, B = "edge-a", "edge-b"
ROOT = topics.ROOT
SENTINEL_S = 10.0  # generous: how long a sentinel may take on a loaded machine, not a measured figure

Connect = Callable[[str, str | None, str | None], aiomqtt.Client]


@dataclass(frozen=True)
class LoginCase:
    what: str
    username: str | None
    password: str | None  # "" stands for "the right password of username"


@dataclass(frozen=True)
class AclCase:
    what: str
    kind: Literal["publish", "subscribe"]
    topic: str  # where the message goes (publish: A publishes there; subscribe: the control plane does)
    topic_filter: str = ""  # subscribe: what A subscribes to
    allowed: bool = False


LOGIN_CASES = [
    LoginCase("anonymous client", None, None),
    LoginCase("wrong password", A, "not-the-password"),
    LoginCase("unknown user", "edge-z", "whatever"),
    LoginCase("user name without a password", A, None),
    LoginCase("A's password for B's user", B, "password-of-a"),
]

ACL_CASES = [
    # A publishes as B (and as the control plane): none of it may reach the control plane.
    AclCase("A publishes B's status", "publish", topics.appliance_status(B)),
    AclCase("A publishes B's telemetry", "publish", topics.appliance_telemetry(B)),
    AclCase("A publishes B's acks", "publish", topics.appliance_acks(B)),
    AclCase("A injects a command for B", "publish", topics.appliance_commands(B)),
    AclCase("A sets B's desired state", "publish", topics.appliance_desired(B, "fill")),
    AclCase("A publishes the control plane's status", "publish", topics.control_status()),
    AclCase("A publishes its own status", "publish", topics.appliance_status(A), allowed=True),
    AclCase("A publishes its own telemetry", "publish", topics.appliance_telemetry(A), allowed=True),
    # A reads B's commands and desired state (retained ones included): nothing may arrive.
    AclCase("A reads B's commands", "subscribe", topics.appliance_commands(B), topics.appliance_commands(B)),
    AclCase("A reads B's desired state", "subscribe", topics.appliance_desired(B, "fill"),
            f"{ROOT}/appliances/{B}/desired/+"),
    AclCase("A reads every appliance's commands", "subscribe", topics.appliance_commands(B),
            f"{ROOT}/appliances/+/commands"),
    AclCase("A reads every desired state", "subscribe", topics.appliance_desired(B, "model"),
            f"{ROOT}/appliances/+/desired/#"),
    AclCase("A reads everything under nearcast", "subscribe", topics.appliance_desired(B, "config"),
            f"{ROOT}/#"),
    AclCase("A reads everything", "subscribe", topics.appliance_commands(B), "#"),
    AclCase("A reads B's telemetry", "subscribe", topics.appliance_telemetry(B), topics.appliance_telemetry(B)),
    AclCase("A reads its own commands", "subscribe", topics.appliance_commands(A), topics.appliance_commands(A),
            allowed=True),
    AclCase("A reads its own desired state", "subscribe", topics.appliance_desired(A, "fill"),
            f"{ROOT}/appliances/{A}/desired/+", allowed=True),
    AclCase("A reads the control plane's status", "subscribe", topics.control_status(), topics.control_status(),
            allowed=True),
]


async def _refused(connect: Connect, client_id: str, username: str | None, password: str | None) -> bool:
    try:
        async with connect(client_id, username, password):
            return False
    except aiomqtt.MqttError:
        return True


async def check_logins(connect: Connect, passwords: dict[str, str]) -> dict[str, bool]:
    """``case -> refused`` for every login case, plus the right logins (which must not be refused)."""
    out = {}
    for i, case in enumerate(LOGIN_CASES):
        password = case.password
        if password == "password-of-a":
            password = passwords[A]
        out[case.what] = await _refused(connect, f"login-{i}", case.username, password)
    for user in (A, B):
        out[f"{user} with its own password"] = await _refused(connect, f"login-{user}", user, passwords[user])
    return out


class _Inbox:
    """Collects payloads from one client until a given one arrives."""

    def __init__(self, client: aiomqtt.Client) -> None:
        self.client = client
        self.seen: list[tuple[str, bytes]] = []

    async def until(self, payload: bytes) -> list[tuple[str, bytes]]:
        async with asyncio.timeout(SENTINEL_S):
            async for message in self.client.messages:
                body = message.payload if isinstance(message.payload, bytes) else b""
                self.seen.append((message.topic.value, body))
                if body == payload:
                    return self.seen
        raise AssertionError("message iteration ended")


async def check_acl(connect: Connect, passwords: dict[str, str], control_user: str,
                    control_password: str) -> dict[str, bool]:
    """``case -> delivered`` for every ACL case: did A's message get through, or B's reach A?"""
    out: dict[str, bool] = {}
    async with connect("acl-control", control_user, control_password) as control:
        watch = _Inbox(control)
        for case in ACL_CASES:
            if case.kind == "publish":
                await control.subscribe(case.topic, qos=1)
        await control.subscribe(topics.appliance_status(A), qos=1)
        # Publishing: each of A's attempts, then A's own status as the sentinel on the same connection.
        async with connect(A, A, passwords[A]) as a:
            for case in ACL_CASES:
                if case.kind == "publish":
                    payload = f"{case.what}:{secrets.token_hex(4)}".encode()
                    await a.publish(case.topic, payload, qos=1)
                    sentinel = f"sentinel:{secrets.token_hex(4)}".encode()
                    await a.publish(topics.appliance_status(A), sentinel, qos=1)
                    seen = await watch.until(sentinel)
                    out[case.what] = any(body == payload for _, body in seen)
        # Reading: the control plane publishes (retained, before A subscribes, and again after), then a
        # sentinel on A's own commands; A has a fresh connection per case so no earlier grant helps it.
        for case in ACL_CASES:
            if case.kind != "subscribe":
                continue
            early = f"{case.what}:retained:{secrets.token_hex(4)}".encode()
            await control.publish(case.topic, early, qos=1, retain=True)
            async with connect(A, A, passwords[A]) as a:
                inbox = _Inbox(a)
                await a.subscribe(case.topic_filter, qos=1)
                await a.subscribe(topics.appliance_commands(A), qos=1)
                late = f"{case.what}:live:{secrets.token_hex(4)}".encode()
                await control.publish(case.topic, late, qos=1)
                sentinel = f"sentinel:{secrets.token_hex(4)}".encode()
                await control.publish(topics.appliance_commands(A), sentinel, qos=1)
                seen = await inbox.until(sentinel)
                got = {body for _, body in seen}
                out[case.what] = early in got or late in got
                if case.allowed:  # both, or the rule is only half right
                    out[case.what] = early in got and late in got
            await control.publish(case.topic, b"", qos=1, retain=True)  # clear the retained message
    return out


def expected_logins() -> dict[str, bool]:
    return {**{c.what: True for c in LOGIN_CASES}, f"{A} with its own password": False,
            f"{B} with its own password": False}


def expected_acl() -> dict[str, bool]:
    return {c.what: c.allowed for c in ACL_CASES}
