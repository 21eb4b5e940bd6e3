"""Broker stopped and restarted under real processes (Mosquitto, the control plane, an edge appliance).

While the broker is down the edge keeps serving HTTP and spools its telemetry on disk; after the
restart the spool drains and the control plane ends with every sample exactly once (by ``seq``: no
gap, no duplicate).
"""

from __future__ import annotations

import asyncio
import json
import signal
import sqlite3
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from shared.spool import Spool
from tests.conftest import Mosquitto

INTERVAL_S = 0.2
OUTAGE_S = 3.0  # fifteen telemetry intervals


def _until(check: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def _get(url: str) -> tuple[int, bytes]:
    with urllib.request.urlopen(url, timeout=2) as resp:
        return resp.status, resp.read()


def _metric(url: str, name: str) -> float:
    for line in _get(f"{url}/metrics")[1].decode().splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not exported")


def _seqs(db: Path, aid: str) -> list[int]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
    try:
        return [int(s) for (s,) in conn.execute(
            "select seq from telemetry_raw where appliance_id = ? order by seq", [aid])]
    finally:
        conn.close()


async def _spooled_seqs(directory: Path) -> list[int]:
    spool = Spool(directory)
    await spool.open()
    try:
        return [json.loads(r.payload)["body"]["seq"] for r in await spool.pending(10_000)]
    finally:
        await spool.close()


def test_broker_restart_loses_and_duplicates_no_telemetry(tmp_path: Path, private_mosquitto: Mosquitto,
                                                          daemons: Any, port_factory: Any) -> None:
    broker = private_mosquitto
    mqtt = (f"[mqtt]\nport = {broker.port}\nkeepalive_s = 2\nreconnect_min_s = 0.2\nreconnect_max_s = 1.0\n"
            "publish_timeout_s = 1.0\n")
    state = tmp_path / "control"
    cport, eport, aid = port_factory(), port_factory(), "edge-r"
    (tmp_path / "control.toml").write_text(f'[http]\nport = {cport}\n[state]\ndir = "{state}"\n'
                                           f"[telemetry]\nflush_interval_s = 0.05\n{mqtt}")
    control = daemons(["control", "serve", "--config", str(tmp_path / "control.toml")], "control")
    control.wait_http(f"http://127.0.0.1:{cport}/healthz")
    (tmp_path / "edge.toml").write_text(
        f'[appliance]\nid = "{aid}"\nprefixes = ["127.0.1.0/24"]\n[http]\nport = {eport}\n'
        f'[cache]\ndir = "{tmp_path / "cache"}"\n[telemetry]\ninterval_s = {INTERVAL_S}\n{mqtt}')
    edge = daemons(["edge", "serve", "--config", str(tmp_path / "edge.toml")], aid)
    url = f"http://127.0.0.1:{eport}"
    edge.wait_http(f"{url}/healthz")
    db = state / "control.db"
    _until(lambda: db.exists() and len(_seqs(db, aid)) >= 3, 15, f"first samples; control log:\n{control.log()}")

    broker.stop()
    outage_ends = time.monotonic() + OUTAGE_S
    served = 0
    acked_early: float | None = None
    while time.monotonic() < outage_ends:  # the edge keeps serving all along
        status, body = _get(f"{url}/healthz")
        assert status == 200 and json.loads(body)["status"] == "ok"
        served += 1
        if acked_early is None and time.monotonic() > outage_ends - OUTAGE_S / 2:
            acked_early = _metric(url, "nearcast_edge_telemetry_messages_total")
        time.sleep(0.1)
    assert served > 10 and json.loads(_get(f"{url}/healthz")[1])["mqtt"] == "disconnected"
    assert _metric(url, "nearcast_edge_telemetry_spool_bytes") > 0  # samples wait on disk
    assert _metric(url, "nearcast_edge_telemetry_messages_total") == acked_early  # none acknowledged meanwhile
    stored_before = len(_seqs(db, aid))
    spooled = OUTAGE_S / INTERVAL_S * 0.8

    broker.start()  # same port, same persistence directory
    _until(lambda: len(_seqs(db, aid)) >= stored_before + spooled, 15,
           f"the spool to drain; edge log:\n{edge.log()[-3000:]}\ncontrol log:\n{control.log()[-3000:]}")
    assert edge.stop(signal.SIGTERM) == 0
    time.sleep(0.5)  # the control plane's last batch reaches the store

    # Every sample the edge took is stored exactly once, or still on its disk for the next start
    # (a sample acknowledged just as the edge stopped may be both: the control plane drops the copy).
    stored = _seqs(db, aid)
    assert stored == list(range(1, len(stored) + 1)), f"gaps or duplicates: {stored}"
    assert len(stored) >= stored_before + spooled
    left = asyncio.run(_spooled_seqs(tmp_path / "cache" / "spool" / "telemetry"))
    if left:
        assert left == list(range(left[0], left[-1] + 1)) and left[0] <= len(stored) + 1 and len(left) <= 3, left
    assert control.stop(signal.SIGTERM) == 0
