"""Stop the broker and start it again, over and over, under a control plane and an edge (real processes).

Each trial: a random stretch of normal running, then the broker stops (SIGTERM: Mosquitto saves its
sessions) for a random outage.  Throughout, the edge must answer ``/healthz`` (it keeps serving) and
keeps sampling telemetry into its on-disk spool.  At a random moment inside the outage the operator
drains or undrains the appliance through the control API, which must answer 202 even though no broker
is there: the command waits in the control plane's on-disk outbox.  After the restart the command must
reach the edge exactly once (its ``done`` counter goes up by one, its state flips) and telemetry drains.

At the end the edge stops (SIGTERM) and every telemetry sample it took is checked by ``seq``: stored by
the control plane exactly once, or still in the edge's spool for its next start (a sample acknowledged
just as the edge stopped may be both; the control plane drops the copy by id).  Figures: samples
taken, lost (a gap), duplicated (two rows for one seq), commands issued and applied, and redeliveries
the edge or the control plane recognised and dropped.
"""

from __future__ import annotations

import asyncio
import functools
import json
import random
import sqlite3
import time
from http.client import HTTPException
from pathlib import Path
from typing import Any

from shared.spool import Spool
from tests.faults.harness import Control, Edge, Stack, http_get, make_keys, metric_sum, metrics, until
from tests.faults.scenario import Scenario, ScenarioResult

NAME = "broker_restart"
TELEMETRY_S = 0.2
UP_S = (0.3, 1.5)
OUTAGE_S = (0.5, 3.0)
SETTLE_S = 30.0


def stored_seqs(db: Path, appliance_id: str) -> list[int]:
    if not db.exists():
        return []
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
    try:
        return [int(s) for (s,) in conn.execute(
            "select seq from telemetry_raw where appliance_id = ? order by seq", [appliance_id])]
    except sqlite3.OperationalError:  # not created yet
        return []
    finally:
        conn.close()


async def _spooled(directory: Path) -> list[int]:
    spool = Spool(directory)
    await spool.open()
    try:
        return [json.loads(r.payload)["body"]["seq"] for r in await spool.pending(100_000)]
    finally:
        await spool.close()


def spooled_seqs(directory: Path) -> list[int]:
    return asyncio.run(_spooled(directory)) if directory.exists() else []


def health(edge: Edge) -> dict[str, Any] | None:
    try:
        resp = http_get(f"{edge.url}/healthz", timeout=2)
    except (OSError, HTTPException):
        return None
    return json.loads(resp.body) if resp.status == 200 else None


def commands_done(edge: Edge) -> tuple[float, float]:
    m = metrics(edge.url)
    return (metric_sum(m, "nearcast_edge_commands_total", type="command.set_draining", result="done"),
            metric_sum(m, "nearcast_edge_commands_total", type="command.set_draining", result="duplicate"))


def arrived(edge: Edge, commands: int, draining: bool) -> bool:
    return commands_done(edge)[0] >= commands and (health(edge) or {}).get("draining") == draining


def run(trials: int, seed: int, workdir: Path) -> ScenarioResult:
    started = time.monotonic()
    rng = random.Random(seed)
    result = ScenarioResult(NAME, trials)
    detail: dict[str, Any] = {"outages": 0, "outage_s": 0.0, "health_checks": 0, "health_failures": 0,
                              "commands_issued": 0, "commands_applied": 0, "command_redeliveries": 0,
                              "samples": 0, "lost_samples": 0, "duplicate_samples": 0,
                              "left_in_spool": 0, "redeliveries_dropped": 0, "spool_dropped": 0}
    with Stack(workdir) as stack:
        broker = stack.broker()
        control: Control = stack.control("control", broker.port)
        keys = make_keys(workdir / "keys")
        edge = stack.edge("edge-br", broker.port, keys, {"telemetry": {"interval_s": TELEMETRY_S}})
        db = control.state_dir / "control.db"
        aid = edge.name
        try:
            control.start()  # first: the broker keeps telemetry only for a session the control plane opened
            edge.start()
            until(lambda: len(stored_seqs(db, aid)) >= 3, SETTLE_S, f"first telemetry; control log:\n{control.log()}")
            draining = False
            for trial in range(trials):
                time.sleep(rng.uniform(*UP_S))
                broker.stop()
                outage = rng.uniform(*OUTAGE_S)
                command_at = rng.uniform(0.1, max(0.2, outage - 0.1))
                down_at = time.monotonic()
                issued = False
                while time.monotonic() - down_at < outage:
                    detail["health_checks"] += 1
                    if health(edge) is None:
                        detail["health_failures"] += 1
                        result.failures.append(f"trial {trial}: the edge did not answer /healthz with the broker down")
                    if not issued and time.monotonic() - down_at >= command_at:
                        issued = True
                        verb = "undrain" if draining else "drain"
                        status, body = control.call("POST", f"/v1/appliances/{aid}/{verb}")
                        if status != 202:
                            result.failures.append(f"trial {trial}: {verb} with the broker down answered {status}: "
                                                   f"{body}")
                        else:
                            draining = not draining
                            detail["commands_issued"] += 1
                    time.sleep(0.05)
                detail["outages"] += 1
                detail["outage_s"] += time.monotonic() - down_at
                if metric_sum(metrics(edge.url), "nearcast_edge_telemetry_spool_bytes") <= 0:
                    result.failures.append(f"trial {trial}: no telemetry waiting on disk after a {outage:.1f} s outage")
                broker.start()  # same port, same persistence directory
                want = detail["commands_issued"]
                try:
                    until(functools.partial(arrived, edge, want, draining), SETTLE_S,
                          f"trial {trial}: command {want} to reach the edge")
                except AssertionError as exc:
                    result.failures.append(f"{exc}; edge log:\n{edge.log(2000)}\ncontrol log:\n{control.log(2000)}")
                    break
            # Settle: the spool drains, then the edge stops and what it took is accounted for.
            until(lambda: metric_sum(metrics(edge.url), "nearcast_edge_telemetry_spool_bytes") == 0, SETTLE_S,
                  "the edge's telemetry spool to drain")
            done, dup = commands_done(edge)
            detail["commands_applied"] = int(done)
            detail["command_redeliveries"] = int(dup)
            if done != detail["commands_issued"]:
                result.failures.append(f"{detail['commands_issued']} commands issued, {int(done)} applied")
            detail["spool_dropped"] = int(metric_sum(metrics(edge.url), "nearcast_edge_telemetry_dropped_total"))
            cm = metrics(control.url)
            detail["redeliveries_dropped"] = int(metric_sum(cm, "nearcast_control_telemetry_samples_total",
                                                            result="duplicate"))
            if edge.stop() != 0:
                result.failures.append("the edge did not exit cleanly on SIGTERM")
            time.sleep(0.5)  # the control plane's last batch reaches the store
            stored = stored_seqs(db, aid)
            left = spooled_seqs(edge.cache_dir / "spool" / "telemetry")
            taken = sorted(set(stored) | set(left))
            detail["samples"] = len(taken)
            detail["left_in_spool"] = len(left)
            detail["duplicate_samples"] = len(stored) - len(set(stored))
            detail["lost_samples"] = (taken[-1] - len(taken)) if taken else 0
            if detail["lost_samples"] or detail["duplicate_samples"] or detail["spool_dropped"]:
                gaps = sorted(set(range(1, (taken[-1] if taken else 0) + 1)) - set(taken))
                result.failures.append(f"telemetry: {detail['lost_samples']} lost (first gaps {gaps[:10]}), "
                                       f"{detail['duplicate_samples']} duplicated, "
                                       f"{detail['spool_dropped']} dropped by a full spool")
            if taken and taken[0] != 1:
                result.failures.append(f"telemetry starts at seq {taken[0]}, not 1")
            if control.stop() != 0:
                result.failures.append("the control plane did not exit cleanly on SIGTERM")
        except AssertionError as exc:
            result.failures.append(str(exc)[:4000])
    detail["outage_s"] = round(detail["outage_s"], 1)
    result.detail = detail
    result.seconds = time.monotonic() - started
    return result


SCENARIO = Scenario(
    name=NAME,
    description="stop and restart the broker at random moments; the edge keeps serving, every telemetry sample "
                "arrives once, a drain issued during the outage reaches the edge once",
    run=run,
    fast_trials=2,
    full_trials=20,
)
