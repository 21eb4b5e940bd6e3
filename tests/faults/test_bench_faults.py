"""``bench/faults.py`` finds every scenario module and each one loads (what the long run relies on)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_every_scenario_module_is_discovered_and_loads() -> None:
    out = subprocess.run([sys.executable, str(ROOT / "bench" / "faults.py"), "--list"], capture_output=True,
                         text=True, timeout=120, check=True).stdout
    names = {p.stem.removeprefix("scenario_") for p in (ROOT / "tests" / "faults").glob("scenario_*.py")}
    assert {"edge_kill_fill", "edge_kill_model"} <= names
    listed = {line.split()[0] for line in out.splitlines() if line.strip()}
    assert listed == names, out
    assert "does not load" not in out, out


def test_an_unknown_scenario_is_refused() -> None:
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "faults.py"), "--only", "no_such"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "unknown scenario" in proc.stderr
