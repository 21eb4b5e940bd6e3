"""Generated passwd/ACL files on a private Mosquitto: each appliance is confined to its own topics.

The control plane reloads Mosquitto itself (``broker.reload = "pid:..."``): an appliance enrolled over
the API logs in with no manual step, and a removed one is cut off.  The cases are the shared table in
``tests/mqtt_acl_cases.py`` (the embedded broker runs the same table in ``tests/shared/test_broker.py``).
"""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from control import mosquitto
from shared import topics
from shared.mqtt_auth import Acl
from tests.mqtt_acl_cases import A, B, check_acl, check_logins, expected_acl, expected_logins

from .conftest import eventually, reloading_mosquitto


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
    for bad in ("a:b", "a b", "x@", "x@0", "x@01", "@1", "a/b", "a#"):
        with pytest.raises(Exception, match="user name"):
            mosquitto.password_file({bad: mosquitto.hash_password("x")})
    with pytest.raises(Exception, match="form"):
        mosquitto.password_file({"a": "plain"})
    assert mosquitto.password_file({"edge-a@2": "$7$1$AA$AA"}) == "edge-a@2:$7$1$AA$AA\n"


def test_a_rotated_user_gets_exactly_its_appliances_topics() -> None:
    acl = Acl.parse(mosquitto.acl_file("control", ["edge-a", "edge-a@2", "control"]))
    assert set(acl.users) == {"control", "edge-a@2"}  # generation 0 needs no section: the %u patterns cover it
    for user in ("edge-a", "edge-a@2"):
        assert acl.allows(user, "edge-a", topics.appliance_telemetry("edge-a"), "write")
        assert acl.allows(user, "edge-a", topics.appliance_commands("edge-a"), "read")
        assert not acl.allows(user, "edge-a", topics.appliance_commands("edge-a"), "write")
        assert not acl.allows(user, "edge-a", topics.appliance_telemetry("edge-b"), "write")
        assert not acl.allows(user, "edge-a", topics.appliance_commands("edge-b"), "read")
    # The pattern, applied to the rotated name itself, names topics no appliance can have.
    assert not acl.allows("edge-a@2", "x", f"{topics.ROOT}/appliances/edge-a/x", "write")


def test_reload_setting_is_checked() -> None:
    assert mosquitto.check_reload("") is None
    assert mosquitto.check_reload("pid:/run/mosquitto/mosquitto.pid") is None
    assert mosquitto.check_reload("command:systemctl reload mosquitto") is None
    for bad in ("sighup", "pid:", "command:  ", "command:'unterminated", "exec:x"):
        assert mosquitto.check_reload(bad) is not None


async def test_enrolled_appliances_are_confined_and_reload_needs_no_manual_step(
        tmp_path: Path, control_factory: Any) -> None:
    broker, h, control_password = await reloading_mosquitto(tmp_path, control_factory)
    try:
        passwords = {A: (await h.enroll(A, site="s1"))["mqtt"]["password"],
                     B: (await h.enroll(B, site="s1"))["mqtt"]["password"]}

        def connect(client_id: str, username: str | None, password: str | None) -> aiomqtt.Client:
            return aiomqtt.Client("127.0.0.1", broker.port, identifier=client_id, username=username,
                                  password=password)

        async def b_gets_in() -> bool:  # Mosquitto handles the SIGHUP in its next loop turn
            try:
                async with connect("probe", B, passwords[B]):
                    return True
            except aiomqtt.MqttError:
                return False

        await eventually(b_gets_in)
        assert await check_logins(connect, passwords) == expected_logins()
        assert await check_acl(connect, passwords, "control", control_password) == expected_acl()
        assert h.ctx.fleet.get(B) is None  # A's forged status for B never reached the control plane

        # Removing an appliance revokes its login: the control plane reloads Mosquitto, which drops B's
        # open connection and refuses it from then on.
        async with connect(B, B, passwords[B]) as cb:
            assert (await h.call("DELETE", f"/v1/appliances/{B}"))[0] == 200
            with pytest.raises(aiomqtt.MqttError):
                async with asyncio.timeout(10):
                    async for _ in cb.messages:
                        pass
        with pytest.raises(aiomqtt.MqttError):
            async with connect("b-again", B, passwords[B]):
                pass
    finally:
        broker.cleanup()
