"""Generated passwd/ACL files on a private Mosquitto: each appliance is confined to its own topics."""

from __future__ import annotations

import asyncio
import signal
import subprocess
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from control import mosquitto
from shared import topics
from shared.messages import REGISTRY, ApplianceStatus, Ping, Telemetry
from shared.tasks import TaskGroup
from tests.conftest import Mosquitto

from .conftest import eventually


def test_hash_matches_mosquitto_passwd(tmp_path: Path) -> None:
    path = tmp_path / "pw"
    subprocess.run(["mosquitto_passwd", "-b", "-c", str(path), "alice", "s3cret"], check=True,
                   capture_output=True)
    theirs = path.read_text().strip().split(":", 1)[1]
    assert mosquitto.verify_password("s3cret", theirs)
    assert not mosquitto.verify_password("wrong", theirs)
    ours = mosquitto.hash_password("s3cret")
    assert ours.startswith("$7$101$") and mosquitto.verify_password("s3cret", ours)
    for junk in ("", "$6$x$y", "$7$abc$x$y", "$7$101$!!$!!", "$7$999999999$AA$AA"):
        assert not mosquitto.verify_password("s3cret", junk)


def test_password_file_refuses_format_breaking_names() -> None:
    with pytest.raises(Exception, match="user name"):
        mosquitto.password_file({"a:b": mosquitto.hash_password("x")})
    with pytest.raises(Exception, match="form"):
        mosquitto.password_file({"a": "plain"})


async def _collect(client: aiomqtt.Client, into: list[str]) -> None:
    async for message in client.messages:
        into.append(message.topic.value)


async def test_appliance_cannot_touch_another_appliances_topics(tmp_path: Path, control_factory: Any) -> None:
    broker = Mosquitto(tmp_path)
    files = broker.workdir
    control_password = mosquitto.new_password()
    mosquitto.write_broker_files(files, {"control": mosquitto.hash_password(control_password)}, "control")
    broker.extra_config = (f"allow_anonymous false\npassword_file {files / 'passwd'}\n"
                           f"acl_file {files / 'acl'}\n")
    broker.start()
    try:
        h = await control_factory({"mqtt": {"username": "control", "password": control_password},
                                   "broker": {"files_dir": str(files)}}, broker_port=broker.port)
        a = await h.enroll("edge-a", site="s1")
        b = await h.enroll("edge-b", site="s1")
        assert broker.proc is not None
        broker.proc.send_signal(signal.SIGHUP)  # mosquitto re-reads passwd and acl
        await asyncio.sleep(0.5)

        with pytest.raises(aiomqtt.MqttError):
            async with h.mqtt("intruder", "edge-a", "wrong"):
                pass

        seen_a: list[str] = []
        seen_b: list[str] = []
        async with h.mqtt("edge-a", "edge-a", a["mqtt"]["password"]) as ca, \
                h.mqtt("edge-b", "edge-b", b["mqtt"]["password"]) as cb:
            # A tries to read B's commands and desired state; B reads its own.
            await ca.subscribe(f"{topics.ROOT}/appliances/edge-b/commands", qos=1)
            await ca.subscribe(f"{topics.ROOT}/appliances/edge-b/desired/+", qos=1)
            await ca.subscribe(f"{topics.ROOT}/appliances/edge-a/commands", qos=1)
            await cb.subscribe(f"{topics.ROOT}/appliances/edge-b/commands", qos=1)
            readers = TaskGroup("acl-test")
            for c, s in ((ca, seen_a), (cb, seen_b)):
                readers.spawn(_collect(c, s), name="collect")
            # A pretends to be B: status and telemetry on B's topics.
            await ca.publish(topics.appliance_status("edge-b"), REGISTRY.encode(
                ApplianceStatus("online", "x", 0, "http://evil"), sender="edge-b"), qos=1, retain=True)
            await ca.publish(topics.appliance_telemetry("edge-b"), REGISTRY.encode(
                Telemetry(1, 10.0), sender="edge-b"), qos=1)
            # A's own status goes through: the positive control for the negative checks.
            await h.announce(ca, "edge-a", "http://127.0.0.1:1")
            await eventually(lambda: h.ctx.fleet.get("edge-a") is not None)
            await h.ctx.session.publish(topics.appliance_commands("edge-b"), Ping("for b"))
            await h.ctx.session.publish(topics.appliance_commands("edge-a"), Ping("for a"))
            await eventually(lambda: seen_b and f"{topics.ROOT}/appliances/edge-a/commands" in seen_a)
            await asyncio.sleep(0.3)
            await readers.aclose()
        assert seen_a == [f"{topics.ROOT}/appliances/edge-a/commands"]
        assert seen_b == [f"{topics.ROOT}/appliances/edge-b/commands"]
        assert h.ctx.fleet.get("edge-b") is None
        # Removing an appliance revokes its broker login at the next reload.
        assert (await h.call("DELETE", "/v1/appliances/edge-b"))[0] == 200
        broker.proc.send_signal(signal.SIGHUP)
        await asyncio.sleep(0.5)
        with pytest.raises(aiomqtt.MqttError):
            async with h.mqtt("edge-b2", "edge-b", b["mqtt"]["password"]):
                pass
    finally:
        broker.cleanup()
