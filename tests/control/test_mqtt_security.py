"""Production MQTT security end to end: a private Mosquitto run from the generated config with a TLS
listener (throwaway CA), a real edge process enrolled over the API, and a credential rotation while it
serves.

What must hold: the edge connects over TLS with CA verification and its password; a plain-text client
on the TLS port, a client trusting another CA and a wrong password all fail; the operator rotates the
edge's login (CLI -> API, audited) while it runs, its telemetry keeps arriving with no sample lost, and
the old password is refused afterwards.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import stat
import time
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
from click.testing import CliRunner

from control import mosquitto
from nearcast.cli import cli
from shared import topics
from shared.envelope import parse_raw
from shared.files import write_private
from shared.messages import REGISTRY, RotateCredentials
from shared.mqtt import MqttSettings
from shared.tasks import TaskGroup
from tests.conftest import Mosquitto, free_port
from tests.shared.test_mqtt_tls import _fresh, _make_ca

from .conftest import eventually, reloading_mosquitto

AID = "edge-a"


def _edge_config(tmp: Path, bundle: dict[str, Any], port: int, ca: Path | None, http_port: int, api: str) -> Path:
    keys = tmp / "token-keys.json"
    keys.write_text(bundle["token_keys"])
    pub = tmp / "control-keys.json"
    pub.write_text(json.dumps(bundle["signing_keys"]))
    password = tmp / "mqtt-password"
    password.write_text(bundle["mqtt"]["password"])
    password.chmod(0o600)
    cfg = tmp / "edge.toml"
    cfg.write_text(
        f'[appliance]\nid = "{AID}"\nsite = "s1"\nprefixes = ["127.0.1.0/24"]\n'
        f'[http]\nhost = "127.0.0.1"\nport = {http_port}\n'
        f'[cache]\ndir = "{tmp / "cache"}"\ncapacity_bytes = {10**8}\n'
        f'[security]\ntoken_keys_file = "{keys}"\ncontrol_public_keys_file = "{pub}"\n'
        f'[telemetry]\ninterval_s = 0.3\n[control]\napi_url = "{api}"\n'
        f'[mqtt]\nhost = "127.0.0.1"\nport = {port}\n' + (f'tls = true\ntls_ca_file = "{ca}"\n' if ca else "") +
        f'username = "{bundle["mqtt"]["username"]}"\npassword_file = "{password}"\nkeepalive_s = 2\n'
        f"reconnect_min_s = 0.2\nreconnect_max_s = 2.0\n")
    return cfg


async def _refused(settings: MqttSettings) -> bool:
    try:
        async with aiomqtt.Client(settings.host, settings.port, identifier=f"probe-{time.monotonic_ns()}",
                                  username=settings.username or None, password=settings.password or None,
                                  tls_context=settings.tls_context(), timeout=5):
            return False
    except (aiomqtt.MqttError, OSError):
        return True


@pytest.mark.slow
async def test_edge_over_tls_and_credential_rotation_without_downtime(
        tmp_path: Path, control_factory: Any, daemons: Any) -> None:
    broker = Mosquitto(tmp_path)
    files = broker.workdir
    ca, cert, key = _make_ca(files)
    other_ca, _, _ = _make_ca(_fresh(files / "other"))
    tls_port = free_port()
    pid_file = files / "mosquitto.pid"
    control_password = mosquitto.new_password()
    mosquitto.write_broker_files(files, {"control": mosquitto.hash_password(control_password)}, "control")
    # The generated config, TLS only; the fixture adds its own plain listener for the control plane.
    broker.extra_config = mosquitto.mosquitto_conf(passwd=files / "passwd", acl=files / "acl", bind="127.0.0.1",
                                                   tls_port=tls_port, cafile=ca, certfile=cert, keyfile=key,
                                                   tls_only=True, pid_file=pid_file)
    broker.start()
    try:
        await eventually(pid_file.exists)
        h = await control_factory({"mqtt": {"username": "control", "password": control_password},
                                   "broker": {"files_dir": str(files), "reload": f"pid:{pid_file}",
                                              "public_port": tls_port}}, broker_port=broker.port)
        bundle = await h.enroll(AID, site="s1")
        assert bundle["mqtt"]["port"] == tls_port and bundle["mqtt"]["username"] == AID
        old_password = bundle["mqtt"]["password"]

        # Telemetry as the control plane's broker sees it, on the plain listener.
        seqs: list[tuple[float, int]] = []

        async def watch() -> None:
            async with aiomqtt.Client("127.0.0.1", broker.port, identifier="watcher", username="control",
                                      password=control_password) as c:
                await c.subscribe(topics.appliance_telemetry(AID), qos=1)
                async for message in c.messages:
                    raw = parse_raw(message.payload if isinstance(message.payload, bytes) else b"")
                    seqs.append((time.monotonic(), int(raw["body"]["seq"])))

        watchers = TaskGroup("test-watch")
        watchers.spawn(watch(), name="telemetry watcher")
        http_port = free_port()
        edge_dir = _fresh(tmp_path / "edge")
        edge = daemons(["edge", "serve", "--config", str(_edge_config(edge_dir, bundle, tls_port, ca, http_port,
                                                                       h.url))], AID)
        await asyncio.to_thread(edge.wait_http, f"http://127.0.0.1:{http_port}/healthz")
        await eventually(lambda: len(seqs) >= 3, timeout=30)

        # Over TLS: a right login with the CA connects; plain text, another CA, a wrong password do not.
        good = MqttSettings(port=tls_port, tls=True, tls_ca_file=ca, username=AID, password=old_password)
        assert not await _refused(good)
        assert await _refused(MqttSettings(port=tls_port, username=AID, password=old_password))
        assert await _refused(MqttSettings(port=tls_port, tls=True, tls_ca_file=other_ca, username=AID,
                                           password=old_password))
        assert await _refused(MqttSettings(port=tls_port, tls=True, tls_ca_file=ca, username=AID,
                                           password="wrong"))

        # Rotate while it serves: operator CLI -> API; the edge reconnects with its new login.
        env = {"NEARCAST_API": h.url, "NEARCAST_TOKEN": h.admin}
        before = len(seqs)
        res = await asyncio.to_thread(CliRunner().invoke, cli, ["appliance", "rotate-credentials", AID], env=env)
        assert res.exit_code == 0, res.output
        assert f"{AID}@1" in res.output

        async def rotated(generation: int = 1) -> bool:
            status, body = await h.call("GET", f"/v1/appliances/{AID}")
            return bool(status == 200 and body["mqtt"] == {"user": f"{AID}@{generation}", "rotating_to": None})

        await eventually(rotated, timeout=30)
        await eventually(lambda: len(seqs) >= before + 5, timeout=30)  # still reporting, under the new login
        await eventually(lambda: _refused(good))  # the old password is revoked (once the broker re-read its files)
        creds_file = edge_dir / "cache" / "mqtt-credentials.json"
        creds = json.loads(creds_file.read_text())
        assert creds["username"] == f"{AID}@1" and creds["password"] != old_password
        assert stat.S_IMODE(os.stat(creds_file).st_mode) == 0o600
        assert not await _refused(MqttSettings(port=tls_port, tls=True, tls_ca_file=ca, **creds))
        # No sample lost across the reconnect (the spool held them), and the edge stayed up throughout.
        got = sorted({s for _, s in seqs})
        assert got == list(range(got[0], got[-1] + 1)), f"missing telemetry samples: {got}"
        gaps = [b[0] - a[0] for a, b in itertools.pairwise(seqs)]
        assert max(gaps) < 10, f"telemetry stalled for {max(gaps):.1f}s"
        assert edge.proc.poll() is None
        # A second rotation right after works the same way (generation 2).
        status, body = await h.call("POST", f"/v1/appliances/{AID}/rotate-credentials")
        assert status == 202 and body["mqtt"]["rotating_to"] == f"{AID}@2"
        await eventually(lambda: rotated(2), timeout=30)
        status, audit = await h.call("GET", "/v1/audit?limit=100")
        actions = [e["action"] for e in audit["entries"] if e["target"] == AID]
        assert {"appliance.mqtt_rotate", "appliance.mqtt_rotate_sent", "appliance.mqtt_rotated"} <= set(actions)

        # Rotated while the edge is down: the broker keeps the command in the edge's session; the edge
        # comes back with its stored login (@2), gets the command and moves to @3.
        assert edge.stop() == 0
        status, body = await h.call("POST", f"/v1/appliances/{AID}/rotate-credentials")
        assert status == 202 and body["mqtt"] == {"user": f"{AID}@2", "rotating_to": f"{AID}@3"}
        edge = daemons(["edge", "serve", "--config", str(edge_dir / "edge.toml")], f"{AID}-again")
        await asyncio.to_thread(edge.wait_http, f"http://127.0.0.1:{http_port}/healthz")
        await eventually(lambda: rotated(3), timeout=30)
        assert json.loads(creds_file.read_text())["username"] == f"{AID}@3"
        await watchers.aclose()
        edge.stop()
    finally:
        broker.cleanup()


@pytest.mark.slow
async def test_a_login_stored_but_not_acked_before_a_stop_is_acked_after_the_restart(
        tmp_path: Path, control_factory: Any, daemons: Any) -> None:
    """The edge stores a rotated login, then stops before its ack went out: the ack is owed in the
    credentials file, and the restarted edge sends it, so the rotation still completes."""
    broker, h, _ = await reloading_mosquitto(tmp_path, control_factory)
    try:
        bundle = await h.enroll(AID, site="s1")
        old_password = bundle["mqtt"]["password"]
        http_port = free_port()
        edge_dir = _fresh(tmp_path / "edge")
        config = _edge_config(edge_dir, bundle, broker.port, None, http_port, h.url)
        edge = daemons(["edge", "serve", "--config", str(config)], AID)
        await asyncio.to_thread(edge.wait_http, f"http://127.0.0.1:{http_port}/healthz")
        await eventually(lambda: h.ctx.fleet.get(AID) is not None, timeout=20)
        assert edge.stop() == 0

        # The rotation command waits in the stopped edge's session: take it from there, as the edge (the
        # old login is still valid while the rotation is pending).
        status, body = await h.call("POST", f"/v1/appliances/{AID}/rotate-credentials")
        assert status == 202
        async with aiomqtt.Client("127.0.0.1", broker.port, identifier=AID, username=AID, password=old_password,
                                  clean_session=False) as as_edge:
            await as_edge.subscribe(topics.appliance_commands(AID), qos=1)
            async with asyncio.timeout(10):
                async for message in as_edge.messages:
                    env = REGISTRY.decode(message.payload if isinstance(message.payload, bytes) else b"")
                    break
        assert isinstance(env.body, RotateCredentials) and env.body.username == f"{AID}@1"
        # Wipe that session so nothing is redelivered, and leave the edge's state as a stop right after
        # storing the login would have: the new login on disk, its ack still owed.
        async with aiomqtt.Client("127.0.0.1", broker.port, identifier=AID, username=AID, password=old_password,
                                  clean_session=True):
            pass
        creds_file = edge_dir / "cache" / "mqtt-credentials.json"
        write_private(creds_file, json.dumps({"username": env.body.username, "password": env.body.password,
                                              "unacked": {"command_id": env.id, "command_type": env.type}}))

        edge = daemons(["edge", "serve", "--config", str(config)], f"{AID}-restarted")
        await asyncio.to_thread(edge.wait_http, f"http://127.0.0.1:{http_port}/healthz")

        async def rotated() -> bool:
            status, body = await h.call("GET", f"/v1/appliances/{AID}")
            return bool(status == 200 and body["mqtt"] == {"user": f"{AID}@1", "rotating_to": None})

        await eventually(rotated, timeout=30)
        await eventually(lambda: "unacked" not in json.loads(creds_file.read_text()), timeout=10)
        # The API reports the rotation complete once it is recorded; the broker drops the old login when it
        # has re-read its files (a SIGHUP, which mosquitto handles in its own time).
        await eventually(lambda: _refused(MqttSettings(port=broker.port, username=AID, password=old_password)))
        assert edge.stop() == 0
    finally:
        broker.cleanup()


async def test_rotation_api_checks_its_input_and_refuses_a_second_rotation(control_factory: Any,
                                                                          private_mosquitto: Any) -> None:
    h = await control_factory({"mqtt": {"publish_timeout_s": 0.5}})
    await h.enroll(AID, site="s1")
    passwd = h.state / "mosquitto" / "passwd"
    assert (await h.call("POST", "/v1/appliances/edge-zz/rotate-credentials"))[0] == 404
    assert (await h.call("POST", f"/v1/appliances/{AID}/rotate-credentials", {"force": "yes"}))[0] == 400
    assert (await h.call("POST", f"/v1/appliances/{AID}/rotate-credentials", {"other": 1}))[0] == 400
    assert (await h.call("POST", f"/v1/appliances/{AID}/rotate-credentials", token=h.reader))[0] == 403
    status, body = await h.call("POST", f"/v1/appliances/{AID}/rotate-credentials")
    assert status == 202 and body["mqtt"] == {"user": AID, "rotating_to": f"{AID}@1"}
    users = {line.split(":", 1)[0] for line in passwd.read_text().splitlines()}
    assert {AID, f"{AID}@1"} <= users  # both logins valid while the appliance moves
    assert "user edge-a@1" in (h.state / "mosquitto" / "acl").read_text()
    status, body = await h.call("POST", f"/v1/appliances/{AID}/rotate-credentials")
    assert status == 409 and "under way" in body["error"]
    # With the broker gone the command cannot be sent: a clear 503, and force starts over afterwards.
    private_mosquitto.stop()
    await eventually(lambda: not h.ctx.session.connected.is_set())
    status, body = await h.call("POST", f"/v1/appliances/{AID}/rotate-credentials", {"force": True})
    assert status == 503 and "run it again with force" in body["error"]
    users = {line.split(":", 1)[0] for line in passwd.read_text().splitlines()}
    assert {AID, f"{AID}@2"} <= users and f"{AID}@1" not in users
