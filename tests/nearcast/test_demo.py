"""`nearcast demo` end to end as a user runs it: URLs within 60 s, healthy daemons, clean Ctrl-C."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any


def _read_until(proc: subprocess.Popen[str], needle: str, timeout: float) -> list[str]:
    lines: list[str] = []
    deadline = time.monotonic() + timeout
    assert proc.stdout is not None
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            raise AssertionError(f"demo exited early ({proc.poll()}):\n{''.join(lines)}")
        lines.append(line)
        if needle in line:
            return lines
    raise AssertionError(f"no {needle!r} within {timeout}s:\n{''.join(lines)}")


def _children_of(pid: int) -> list[int]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True)
    return [int(p) for p in out.stdout.split()]


def _get_json(url: str, token: str | None = None) -> Any:
    req = urllib.request.Request(url)
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(req, timeout=5) as resp:
        return json.loads(resp.read())


def _anonymous_refused(port: int) -> bool:
    import asyncio

    import aiomqtt

    async def attempt() -> bool:
        try:
            async with aiomqtt.Client("127.0.0.1", port, identifier="anonymous-probe"):
                return False
        except aiomqtt.MqttError:
            return True

    return asyncio.run(attempt())


def test_demo_prints_urls_serves_and_stops_cleanly(tmp_path: Path, port_factory: Any) -> None:
    port = port_factory()
    state = tmp_path / "state"
    started = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "nearcast", "demo", "--port", str(port), "--state-dir", str(state)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        lines = _read_until(proc, "Press Ctrl-C", 60)
        assert time.monotonic() - started < 60
        text = "".join(lines)
        api = re.search(r"export NEARCAST_API=(\S+)", text).group(1)  # type: ignore[union-attr]
        token = re.search(r"export NEARCAST_TOKEN=(\S+)", text).group(1)  # type: ignore[union-attr]
        edge_urls = re.findall(r"^edge-\w\s+(http://\S+)", text, re.M)
        assert len(edge_urls) == 2
        for url in [api, *edge_urls]:
            assert _get_json(f"{url}/healthz")["status"] == "ok"
        # The operator token works against the API, and the control plane sees both edges.
        deadline = time.monotonic() + 15
        while True:
            apps = _get_json(f"{api}/v1/appliances", token)["appliances"]
            if sorted(a["state"] for a in apps) == ["online", "online"] or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert sorted(a["id"] for a in apps) == ["edge-a", "edge-b"]
        assert all(a["state"] == "online" for a in apps)
        # The edges got in with their enrolled logins; an anonymous client does not.
        broker_port = int(re.search(r"MQTT broker \(embedded\) on mqtt://127\.0\.0\.1:(\d+)", text).group(1))  # type: ignore[union-attr]
        assert _anonymous_refused(broker_port)
        # The operator CLI works with the printed export lines.
        env = {**os.environ, "NEARCAST_API": api, "NEARCAST_TOKEN": token}
        res = subprocess.run([sys.executable, "-m", "nearcast", "appliance", "ls", "--json"], env=env,
                             capture_output=True, text=True, timeout=60)
        assert res.returncode == 0, res.stderr
        assert {a["id"] for a in json.loads(res.stdout)["appliances"]} == {"edge-a", "edge-b"}
        children = _children_of(proc.pid)
        assert len(children) >= 3  # control, two edges (+ encoder workers while sample titles encode)
        proc.send_signal(signal.SIGINT)  # Ctrl-C, while the sample titles are still being encoded
        assert proc.wait(60) == 0
        time.sleep(0.5)
        for pid in children:
            assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split()[2], \
                f"child {pid} left behind"
        left = subprocess.run(["ps", "-o", "pid=,stat=", "-g", str(proc.pid)], capture_output=True, text=True)
        alive = [line for line in left.stdout.splitlines() if "Z" not in line.split()[1]]
        assert not alive, f"processes left in the demo's group: {alive}"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        if proc.stdout:
            proc.stdout.close()

    # A second run reuses the state directory: same operator token, same enrolled appliances.
    proc = subprocess.Popen([sys.executable, "-m", "nearcast", "demo", "--port", str(port), "--state-dir", str(state),
                             "--exit-after", "0.5", "--no-titles"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    out, _ = proc.communicate(timeout=90)
    assert proc.returncode == 0, out
    assert f"export NEARCAST_TOKEN={token}" in out


def test_an_older_state_dir_keeps_its_admin_token_and_gains_a_read_token(tmp_path: Path) -> None:
    """A state directory from before the operator view has no read token: adding one must not replace
    the admin token the control plane's store already knows."""
    from control.auth import TokenStore, token_hash
    from nearcast.demo import Demo

    first = Demo(port=1, state_dir=tmp_path, edges=2)
    admin = first._prepare_state(1883)
    (tmp_path / "demo-read-token").unlink()
    second = Demo(port=1, state_dir=tmp_path, edges=2)
    assert second._prepare_state(1883) == admin
    reader = (tmp_path / "demo-read-token").read_text().strip()
    assert reader == second.reader and reader != first.reader
    entries = {e.sha256: e for e in TokenStore.load(tmp_path / "control" / "operator-tokens.json").entries()}
    assert entries[token_hash(admin)].role == "admin" and entries[token_hash(reader)].role == "read"


def test_the_demo_generates_the_control_planes_broker_login_into_its_state_dir(tmp_path: Path) -> None:
    """No broker secret in the repository: the control plane's password is made per state dir, 0600,
    and the control plane's config names the file, never the password."""
    import stat

    from nearcast.demo import Demo

    demo = Demo(port=1, state_dir=tmp_path, edges=2)
    demo._prepare_state(1883)
    pw_file = tmp_path / "control-mqtt-password"
    password = pw_file.read_text().strip()
    assert len(password) >= 32 and stat.S_IMODE(pw_file.stat().st_mode) == 0o600
    conf = (tmp_path / "control.toml").read_text()
    assert 'username = "control"' in conf and str(pw_file) in conf and password not in conf
    Demo(port=1, state_dir=tmp_path, edges=2)._prepare_state(1883)  # a second run keeps the login
    assert pw_file.read_text().strip() == password
    assert demo.broker_files == (tmp_path / "control" / "mosquitto" / "passwd",
                                 tmp_path / "control" / "mosquitto" / "acl")
