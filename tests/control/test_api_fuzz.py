"""Schemathesis against /v1/openapi.json of a real control plane process: no request may cause a 5xx."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from control.auth import TokenStore

from .conftest import make_origin_title


@pytest.mark.slow
def test_schemathesis_finds_no_server_errors(tmp_path: Path, daemons: Any, port_factory: Any,
                                             private_mosquitto: Any) -> None:
    st = shutil.which("st", path=str(Path(sys.executable).parent))
    if st is None:
        pytest.skip("schemathesis is not installed (it is in the dev extra)")
    state = tmp_path / "state"
    tokens = TokenStore([])
    admin = tokens.add("root", "admin")
    tokens.save(state / "operator-tokens.json")
    make_origin_title(state, "t1")  # something real for the title routes to find
    port = port_factory()
    cfg = tmp_path / "control.toml"
    cfg.write_text(f'[http]\nport = {port}\n[state]\ndir = "{state}"\n[mqtt]\nport = {private_mosquitto.port}\n'
                   "[fill]\ninterval_s = 0.0\n")
    d = daemons(["control", "serve", "--config", str(cfg)], "control")
    url = f"http://127.0.0.1:{port}"
    d.wait_http(f"{url}/healthz")
    res = subprocess.run([st, "run", f"{url}/v1/openapi.json", "--checks", "not_a_server_error",
                          "--max-examples", "25", "--seed", "7", "--no-color",
                          "-H", f"Authorization: Bearer {admin}"],
                         capture_output=True, text=True, timeout=240)
    assert res.returncode == 0, res.stdout[-4000:]
    assert "generated" in res.stdout and "passed" in res.stdout
    assert "unhandled error" not in d.log()
    assert d.stop(15) == 0
