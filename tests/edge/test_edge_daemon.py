"""The edge daemon as a real process with the real broker: health, metrics, commands, signals, systemd."""

from __future__ import annotations

import json
import socket
import time
import urllib.request
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho

from shared.messages import REGISTRY, Ping, SetDraining


def _config(tmp_path: Path, port: int, mqtt_port: int, aid: str) -> Path:
    p = tmp_path / f"{aid}.toml"
    p.write_text(f'[appliance]\nid = "{aid}"\nprefixes = ["127.0.1.0/24"]\n[http]\nport = {port}\n'
                 f'[cache]\ndir = "{tmp_path / "cache"}"\n[telemetry]\ninterval_s = 0.5\n'
                 f'[mqtt]\nport = {mqtt_port}\nkeepalive_s = 2\n')
    return p


def _get(url: str) -> tuple[int, bytes, dict[str, str]]:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return resp.status, resp.read(), dict(resp.headers)


class Watcher:
    """A plain paho client recording what the appliance publishes."""

    def __init__(self, port: int, topic_filter: str) -> None:
        self.messages: list[tuple[str, bytes]] = []
        self.client = paho.Client(paho.CallbackAPIVersion.VERSION2)
        self.client.on_message = lambda c, u, m: self.messages.append((m.topic, m.payload))
        self.client.connect("127.0.0.1", port)
        self.client.subscribe(topic_filter, qos=1)
        self.client.loop_start()

    def publish(self, topic: str, payload: bytes) -> None:
        self.client.publish(topic, payload, qos=1).wait_for_publish(5)

    def bodies(self, suffix: str) -> list[Any]:
        return [REGISTRY.decode(p).body for t, p in self.messages if t.endswith(suffix) and p]

    def wait(self, pred: Any, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while not pred():
            assert time.monotonic() < deadline, f"timed out; saw {self.messages[-5:]}"
            time.sleep(0.05)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def test_edge_serves_health_metrics_commands_and_stops_cleanly(
        tmp_path: Path, daemons: Any, port_factory: Any, system_mosquitto_port: int) -> None:
    aid = f"edge-t{port_factory()}"
    port = port_factory()
    watcher = Watcher(system_mosquitto_port, f"nearcast/v1/appliances/{aid}/#")
    try:
        d = daemons(["edge", "serve", "--config", str(_config(tmp_path, port, system_mosquitto_port, aid))], aid)
        d.wait_http(f"http://127.0.0.1:{port}/healthz")
        watcher.wait(lambda: any(getattr(b, "state", "") == "online" for b in watcher.bodies("/status")))
        status, body, _ = _get(f"http://127.0.0.1:{port}/healthz")
        health = json.loads(body)
        assert health["appliance"] == aid and health["mqtt"] == "connected"
        status, body, headers = _get(f"http://127.0.0.1:{port}/metrics")
        assert status == 200 and headers["Content-Type"].startswith("text/plain")
        assert b"nearcast_mqtt_connected 1.0" in body and b"nearcast_edge_up 1.0" in body

        cmd_topic = f"nearcast/v1/appliances/{aid}/commands"
        ping = REGISTRY.encode(Ping("hi"), sender="control", msg_id="cmd-1")
        watcher.publish(cmd_topic, ping)
        watcher.publish(cmd_topic, ping)  # redelivery: acked again, not re-run
        watcher.publish(cmd_topic, REGISTRY.encode(Ping("x"), sender="edge-other", msg_id="cmd-2"))
        watcher.publish(cmd_topic, b"\x00garbage")
        watcher.publish(cmd_topic, REGISTRY.encode(SetDraining(True), sender="control", msg_id="cmd-3"))
        watcher.wait(lambda: len(watcher.bodies("/acks")) >= 5)
        acks = {(a.command_id, a.status) for a in watcher.bodies("/acks")}
        assert ("cmd-1", "done") in acks and ("cmd-2", "rejected") in acks
        assert ("unknown", "rejected") in acks and ("cmd-3", "done") in acks
        watcher.wait(lambda: any(getattr(b, "state", "") == "draining" for b in watcher.bodies("/status")))
        assert json.loads(_get(f"http://127.0.0.1:{port}/healthz")[1])["draining"] is True
        watcher.wait(lambda: len(watcher.bodies("/telemetry")) >= 2)
        seqs = [t.seq for t in watcher.bodies("/telemetry")]
        assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)

        assert d.stop(15) == 0
        watcher.wait(lambda: getattr(watcher.bodies("/status")[-1], "state", "") == "offline")
        with socket.socket() as s:
            assert s.connect_ex(("127.0.0.1", port)) != 0  # nothing left listening
    finally:
        watcher.publish(f"nearcast/v1/appliances/{aid}/status", b"")  # clear the retained status
        watcher.close()


def test_sd_notify_ready_and_stopping(tmp_path: Path, daemons: Any, port_factory: Any,
                                      system_mosquitto_port: int) -> None:
    aid = f"edge-n{port_factory()}"
    port = port_factory()
    sock_path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(sock_path))
    sock.settimeout(20)
    try:
        d = daemons(["edge", "serve", "--config", str(_config(tmp_path, port, system_mosquitto_port, aid))], aid,
                    env={"NOTIFY_SOCKET": str(sock_path), "WATCHDOG_USEC": "400000"})
        got: list[str] = []
        while not any("READY=1" in g for g in got):
            got.append(sock.recv(4096).decode())
        # READY only once the port accepts.
        with socket.create_connection(("127.0.0.1", port), timeout=2):
            pass
        while sum("WATCHDOG=1" in g for g in got) < 2:
            got.append(sock.recv(4096).decode())
        d.proc.send_signal(15)
        while not any("STOPPING=1" in g for g in got):
            got.append(sock.recv(4096).decode())
        # wait for the exit the first SIGTERM causes; a second signal while cleaning up would kill it
        assert d.proc.wait(20) == 0
    finally:
        sock.close()


def test_missing_config_is_one_line_and_nonzero(tmp_path: Path) -> None:
    import subprocess
    import sys

    res = subprocess.run([sys.executable, "-m", "nearcast", "edge", "serve", "--config", "missing.toml"],
                         capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert res.returncode != 0
    assert res.stderr.strip().count("\n") == 0 and "missing.toml: config file not found" in res.stderr
    bad = tmp_path / "bad.toml"
    bad.write_text("[http]\nport = 'eighty'\n")
    res = subprocess.run([sys.executable, "-m", "nearcast", "edge", "serve", "--config", str(bad)],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode != 0 and "bad.toml: http.port: expected an integer" in res.stderr
    assert res.stderr.strip().count("\n") == 0
