"""The control plane as a real process: auth on /v1, health and metrics open, one-line CLI errors."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from control.auth import TokenStore


def _request(url: str, token: str | None = None, method: str = "GET") -> tuple[int, Any]:
    req = urllib.request.Request(url, method=method, data=b"{}" if method == "POST" else None)
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


@pytest.fixture
def control(tmp_path: Path, daemons: Any, port_factory: Any, system_mosquitto_port: int) -> Any:
    store = TokenStore([])
    admin = store.add("admin", "admin")
    reader = store.add("viewer", "read")
    store.save(tmp_path / "tokens.json")
    port = port_factory()
    cfg = tmp_path / "control.toml"
    cfg.write_text(f'[http]\nport = {port}\n[state]\ndir = "{tmp_path / "state"}"\n'
                   f'[auth]\ntokens_file = "{tmp_path / "tokens.json"}"\n[mqtt]\nport = {system_mosquitto_port}\n')
    d = daemons(["control", "serve", "--config", str(cfg)], "control")
    d.wait_http(f"http://127.0.0.1:{port}/healthz")
    return f"http://127.0.0.1:{port}", admin, reader, d


def test_operator_api_requires_a_token_with_the_right_role(control: Any) -> None:
    url, admin, reader, d = control
    assert _request(f"{url}/healthz")[0] == 200
    assert _request(f"{url}/v1/appliances")[0] == 401
    assert _request(f"{url}/v1/appliances", "nct_wrong")[0] == 401
    status, body = _request(f"{url}/v1/appliances", reader)
    assert (status == 200 and body == {"appliances": []}) or "appliances" in body
    assert _request(f"{url}/v1/appliances/x/drain", reader, "POST")[0] == 403
    status, body = _request(f"{url}/v1/appliances/nope/drain", admin, "POST")
    assert status == 404 and "nope" in body["error"]
    assert _request(f"{url}/v1/does-not-exist", admin)[0] == 404
    assert d.stop(15) == 0


def test_operator_cli_errors_are_one_line(control: Any) -> None:
    url, admin, reader, d = control
    env = {"NEARCAST_API": url, "NEARCAST_TOKEN": "nct_wrong", "PATH": "/usr/bin:/bin"}
    res = subprocess.run([sys.executable, "-m", "nearcast", "appliance", "ls"], env=env, capture_output=True,
                         text=True, timeout=60)
    assert res.returncode == 1 and res.stderr.count("\n") == 1 and "401 invalid operator token" in res.stderr
    env["NEARCAST_TOKEN"] = reader
    res = subprocess.run([sys.executable, "-m", "nearcast", "appliance", "drain", "edge-x"], env=env,
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 1 and "read-only" in res.stderr
    res = subprocess.run([sys.executable, "-m", "nearcast", "appliance", "ls", "--api", "ftp://x"], env=env,
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 1 and "must be an http(s) URL" in res.stderr
