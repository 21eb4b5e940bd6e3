"""The whole loop with real processes: Mosquitto (passwords + ACL), the control plane, two edge appliances.

Enroll → online → plan → fill from the origin → steerable → play from the right ISP's appliance →
drain ranks it out → a killed appliance drops out of steering within the heartbeat TTL.
"""

from __future__ import annotations

import json
import signal
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from control import mosquitto
from nearcast.cli import cli
from tests.conftest import Mosquitto

from .conftest import make_origin_title

TTL_S = 4.0


def _until(check: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


class Operator:
    def __init__(self, api: str, token: str) -> None:
        self.env = {"NEARCAST_API": api, "NEARCAST_TOKEN": token}

    def __call__(self, *args: str) -> str:
        res = CliRunner().invoke(cli, list(args), env=self.env)
        assert res.exit_code == 0, f"nearcast {' '.join(args)}: {res.output}"
        return res.output

    def json(self, *args: str) -> Any:
        return json.loads(self(*args, "--json"))


def _edge_config(tmp: Path, name: str, bundle: dict[str, Any], port: int, api: str, n: int) -> Path:
    keys = tmp / f"{name}-token-keys.json"
    keys.write_text(bundle["token_keys"])
    pub = tmp / f"{name}-control-keys.json"
    pub.write_text(json.dumps(bundle["signing_keys"]))
    m = bundle["mqtt"]
    cfg = tmp / f"{name}.toml"
    cfg.write_text(
        f'[appliance]\nid = "{name}"\nsite = "site-{n}"\nasn = {64500 + n}\nprefixes = ["127.0.{n}.0/24"]\n'
        f'[http]\nhost = "127.0.0.1"\nport = {port}\n'
        f'[cache]\ndir = "{tmp / name / "cache"}"\ncapacity_bytes = {10**8}\n'
        f'[security]\ntoken_keys_file = "{keys}"\ncontrol_public_keys_file = "{pub}"\n'
        f'[telemetry]\ninterval_s = 1.0\n[control]\napi_url = "{api}"\n'
        f'[mqtt]\nport = {m["port"]}\nusername = "{m["username"]}"\npassword = "{m["password"]}"\nkeepalive_s = 2\n')
    return cfg


@pytest.mark.slow
def test_enroll_fill_steer_drain_and_lose_an_edge(tmp_path: Path, daemons: Any, port_factory: Any) -> None:
    broker = Mosquitto(tmp_path)
    files = broker.workdir
    control_pw = mosquitto.new_password()
    mosquitto.write_broker_files(files, {"control": mosquitto.hash_password(control_pw)}, "control")
    broker.extra_config = f"allow_anonymous false\npassword_file {files / 'passwd'}\nacl_file {files / 'acl'}\n"
    broker.start()
    try:
        _run(tmp_path, daemons, port_factory, broker, control_pw)
    finally:
        broker.cleanup()


def _run(tmp: Path, daemons: Any, port_factory: Any, broker: Mosquitto, control_pw: str) -> None:
    from control.auth import TokenStore

    state = tmp / "control"
    tokens = TokenStore([])
    admin = tokens.add("root", "admin")
    tokens.save(state / "operator-tokens.json")
    make_origin_title(state, "t1", segments=4, segment_bytes=100_000)
    port = port_factory()
    api = f"http://127.0.0.1:{port}"
    (tmp / "control.toml").write_text(
        f'[http]\nport = {port}\n[state]\ndir = "{state}"\n'
        f'[mqtt]\nport = {broker.port}\nusername = "control"\npassword = "{control_pw}"\nkeepalive_s = 2\n'
        f'[broker]\nfiles_dir = "{broker.workdir}"\n[fleet]\nheartbeat_ttl_s = {TTL_S}\n'
        f"[steering]\nrefresh_s = 0.5\n[fill]\ninterval_s = 0.0\nmin_copies = 1\n")
    control = daemons(["control", "serve", "--config", str(tmp / "control.toml")], "control")
    control.wait_http(f"{api}/healthz")
    op = Operator(api, admin)
    op("title", "register", "t1")

    # Enroll two appliances, each in its own ISP; they redeem their one-time tokens for credentials.
    edges = {}
    for n, name in ((1, "edge-a"), (2, "edge-b")):
        token = op("appliance", "enroll", name, "--site", f"site-{n}", "--region", f"isp-{n}", "--asn",
                   str(64500 + n), "--prefix", f"127.0.{n}.0/24", "--disk-bytes", str(10**8)).strip()
        req = urllib.request.Request(f"{api}/v1/enroll", data=json.dumps({"token": token}).encode(),
                                     headers={"Content-Type": "application/json"}, method="POST")
        with urllib.request.urlopen(req, timeout=10) as resp:
            bundle = json.loads(resp.read())
        edges[name] = (bundle, port_factory(), n)
    assert broker.proc is not None
    broker.proc.send_signal(signal.SIGHUP)  # mosquitto picks up the new logins
    time.sleep(0.5)
    procs = {}
    for name, (bundle, eport, n) in edges.items():
        cfg = _edge_config(tmp, name, bundle, eport, api, n)
        procs[name] = daemons(["edge", "serve", "--config", str(cfg)], name)
        procs[name].wait_http(f"http://127.0.0.1:{eport}/healthz")

    def states() -> dict[str, str]:
        return {a["id"]: a["state"] for a in op.json("appliance", "ls")["appliances"]}

    _until(lambda: states() == {"edge-a": "online", "edge-b": "online"}, 20, "both edges online")

    # Plan and publish; each edge fills t1 from the origin and reports it complete.
    plan = op.json("fill", "plan", "--publish")
    assert sorted(plan["published"]) == ["edge-a", "edge-b"]

    def filled() -> bool:
        rows = op.json("fill", "status")["appliances"]
        return len(rows) == 2 and all(r["ack"] == "done" and r["titles_complete"] == 1 for r in rows)

    _until(filled, 60, f"fills to complete; control log:\n{control.log()[-3000:]}")

    # Steerable: a client inside ISP A gets edge-a first, and the signed URL plays from it.
    steer = op.json("steer", "--client-ip", "127.0.1.9", "--title", "t1")
    assert [v["appliance_id"] for v in steer["ranked"]] == ["edge-a", "edge-b"]
    assert steer["ranked"][0]["reason"] == "embedded_prefix"
    text = op("steer", "--client-ip", "127.0.2.9", "--title", "t1")
    assert "#1 edge-b: embedded_prefix" in text
    play = _play_from(api, "127.0.1.9")
    assert play["sources"][0]["appliance_id"] == "edge-a"
    status, body = _get(play["sources"][0]["hls"], "127.0.1.9")
    assert status == 200 and body == (state / "origin" / "t1" / "master.m3u8").read_bytes()
    assert _get(play["sources"][0]["hls"], "127.0.3.9")[0] == 403  # the URL is bound to the client's /24

    # Drain ranks edge-a out of the answer for its own ISP's clients.
    op("appliance", "drain", "edge-a")
    steer = op.json("steer", "--client-ip", "127.0.1.9", "--title", "t1")
    assert [v["appliance_id"] for v in steer["ranked"]] == ["edge-b"]
    assert {v["appliance_id"]: v["reason"] for v in steer["dropped"]}["edge-a"] == "draining"
    op("appliance", "undrain", "edge-a")

    # Kill edge-b outright: steering drops it within the heartbeat TTL (Will or silence, whichever first).
    procs["edge-b"].stop(signal.SIGKILL)

    def gone() -> bool:
        s = op.json("steer", "--client-ip", "127.0.2.9", "--title", "t1")
        return "edge-b" not in [v["appliance_id"] for v in s["ranked"]]

    _until(gone, TTL_S + 3, "edge-b to leave steering")
    assert procs["edge-a"].stop(signal.SIGTERM) == 0
    assert control.stop(signal.SIGTERM) == 0


def _get(url: str, source_ip: str) -> tuple[int, bytes]:
    """GET from a given loopback address, so the server sees that client IP."""
    import http.client
    import urllib.parse

    u = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(u.hostname or "", u.port, timeout=10, source_address=(source_ip, 0))
    conn.request("GET", u.path)
    resp = conn.getresponse()
    body = resp.read()
    conn.close()
    return resp.status, body


def _play_from(api: str, source_ip: str) -> Any:
    status, body = _get(f"{api}/v1/play/t1", source_ip)
    assert status == 200, body
    return json.loads(body)
