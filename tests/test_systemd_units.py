"""The shipped systemd units: hardened, notify-typed, and accepted by systemd-analyze."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

UNITS = sorted((Path(__file__).resolve().parents[1] / "systemd").glob("*.service"))


def _settings(unit: Path) -> dict[str, str]:
    out = {}
    for line in unit.read_text().splitlines():
        if "=" in line and not line.startswith("#"):
            k, _, v = line.partition("=")
            out[k.strip()] = v.strip()
    return out


@pytest.mark.parametrize("unit", UNITS, ids=lambda p: p.name)
def test_unit_hardening(unit: Path) -> None:
    s = _settings(unit)
    assert s["Type"] == "notify" and s["WatchdogSec"]
    assert s["DynamicUser"] == "yes" and s["ProtectSystem"] == "strict" and s["NoNewPrivileges"] == "yes"
    assert s["StateDirectory"]
    assert s["CapabilityBoundingSet"] == ""  # no capability unless an operator opts in for ports < 1024
    assert "serve --config" in s["ExecStart"]


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
@pytest.mark.parametrize("unit", UNITS, ids=lambda p: p.name)
def test_systemd_analyze_verify(unit: Path, tmp_path: Path) -> None:
    # verify checks that ExecStart exists: point it at this venv's console script.
    exe = Path(sys.executable).with_name("nearcast")
    text = unit.read_text().replace("/opt/nearcast/bin/nearcast", str(exe))
    copy = tmp_path / unit.name
    copy.write_text(text)
    res = subprocess.run(["systemd-analyze", "verify", str(copy)], capture_output=True, text=True, timeout=60)
    problems = [line for line in (res.stdout + res.stderr).splitlines()
                if unit.name in line or "Unknown" in line or "Failed" in line]
    # systemd-analyze also complains about unrelated host units; only ours count.
    problems = [p for p in problems if "mosquitto.service" not in p and "network-online" not in p]
    assert res.returncode == 0 or not problems, "\n".join(problems) or res.stderr
    assert not problems, "\n".join(problems)
