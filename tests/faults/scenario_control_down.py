"""Stop the control plane at random moments; edges keep serving with their last desired state and model.

Real processes: a private Mosquitto, an HTTP origin (content and a signed model bundle), a control plane
(``nearcast control serve``, automatic fill planning off) and one edge whose re-ranker asks that control
plane for candidate rows.  The edge holds a file set and runs a model from desired state published on
the broker (retained, sender ``control``), as a deployment leaves it.

Each trial: a stretch of normal running (``/v1/home`` answers ``source: control``), then the control
plane is stopped (SIGTERM or SIGKILL at random) for a random outage.  During it:

* every content request is served with the manifest's bytes (the desired fill is unchanged);
* ``/v1/home`` answers 200 with the same model version, ``source`` ``stale`` once its cached rows are
  older than ``rerank.candidates_ttl_s`` (``control`` before that);
* in some trials the edge is also restarted (SIGKILL) mid-outage: it must come back with the file set
  (its cache and the retained desired fill) and the model (its models directory), and serve again;
  with no rows cached ``/v1/home`` falls back to ``trending``.

Then the control plane starts again on the same state directory and everything must resynchronise
within a bound: ``/v1/home`` back to ``source: control``, the edge ``online`` in ``/v1/appliances``
(from its retained status and telemetry), telemetry stored again, the edge still draining or not as the
operator last said (also after a restart), and a drain issued through the API applied by the edge.
"""

from __future__ import annotations

import functools
import random
import sqlite3
import time
from http.client import HTTPException
from pathlib import Path
from typing import Any

from shared.messages import DesiredFill, DesiredModel, FileSetRef, FillSource
from tests.edge.conftest import build_file_set
from tests.faults.harness import (
    Edge,
    Stack,
    Watcher,
    http_get,
    http_json,
    make_keys,
    publish_desired,
    sha256,
    until,
)
from tests.faults.scenario import Scenario, ScenarioResult
from tests.faults.scenario_broker_restart import arrived
from tests.faults.scenario_edge_kill_model import build_bundle, in_use

NAME = "control_down"
UP_S = (0.3, 1.5)
OUTAGE_S = (1.2, 3.0)
EDGE_RESTART_SHARE = 0.3
TTL_S = 0.5
RESYNC_S = 30.0


def telemetry_rows(db: Path, appliance_id: str) -> int:
    if not db.exists():
        return 0
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
    try:
        return int(conn.execute("select count(*) from telemetry_raw where appliance_id = ?",
                                [appliance_id]).fetchone()[0])
    except sqlite3.OperationalError:
        return 0
    finally:
        conn.close()


def home(edge: Edge, profile: str) -> tuple[int, Any]:
    try:
        return http_json("GET", f"{edge.url}/v1/home/{profile}?device=tv&hour=21", timeout=5)
    except (OSError, HTTPException) as exc:
        return -1, str(exc)


def source(edge: Edge) -> str:
    status, doc = home(edge, "p0")
    return str(doc.get("source")) if status == 200 and isinstance(doc, dict) else f"HTTP {status}"


def run(trials: int, seed: int, workdir: Path) -> ScenarioResult:
    started = time.monotonic()
    rng = random.Random(seed)
    result = ScenarioResult(NAME, trials)
    fail = result.failures
    detail: dict[str, Any] = {"outages": 0, "kills": 0, "edge_restarts": 0, "content_serves": 0, "home_pages": 0,
                              "home_stale": 0, "home_trending": 0, "resync_s_max": 0.0, "drains_applied": 0}
    with Stack(workdir) as stack:
        broker = stack.broker()
        keys = make_keys(workdir / "keys")
        root = workdir / "origin"
        origin = stack.origin(root)
        control = stack.control("control", broker.port, {"fill": {"interval_s": 0}})
        edge = stack.edge("edge-cd", broker.port, keys, {
            "control": {"api_url": control.url},
            "rerank": {"candidates_ttl_s": TTL_S, "control_backoff_s": 0.5, "control_timeout_s": 0.5,
                       "model_retry_s": 0.5},
            "telemetry": {"interval_s": 0.5}})
        watcher: Watcher = stack.watcher(broker.port, f"nearcast/v1/appliances/{edge.name}/acks")
        files = {"hls/master.m3u8": b"#EXTM3U\n#" + rng.randbytes(100).hex().encode() + b"\n",
                 "hls/init.mp4": rng.randbytes(1500),
                 **{f"hls/seg_{i}.m4s": rng.randbytes(rng.randrange(50_000, 150_000)) for i in range(3)}}
        build_file_set(root, keys.signer, "tc", "v1", files)
        token = edge.token("tc/")
        db = control.state_dir / "control.db"
        aid = edge.name

        def serve_all(where: str) -> None:
            for path, body in files.items():
                try:
                    resp = http_get(edge.content_url(token, "tc", path), timeout=5)
                except (OSError, HTTPException) as exc:
                    fail.append(f"{where}: tc/{path}: {exc}")
                    continue
                detail["content_serves"] += 1
                if resp.status != 200 or sha256(resp.body) != sha256(body):
                    fail.append(f"{where}: tc/{path} answered {resp.status} with {len(resp.body)} bytes")

        def page(where: str, profile: str, allowed: tuple[str, ...]) -> str:
            status, doc = home(edge, profile)
            detail["home_pages"] += 1
            if status != 200 or not isinstance(doc, dict):
                fail.append(f"{where}: /v1/home answered {status}: {str(doc)[:200]}")
                return ""
            source = str(doc.get("source"))
            if source not in allowed:
                fail.append(f"{where}: /v1/home source {source!r}, expected one of {allowed}")
            if doc.get("model_version") != model.version:
                fail.append(f"{where}: /v1/home ranked with {doc.get('model_version')!r}, not {model.version}")
            return source

        def model_kept(where: str) -> None:
            versions = in_use(edge.url)
            if versions != [model.version]:
                fail.append(f"{where}: model in use {versions}, expected [{model.version!r}]")

        try:
            control.spawn()
            edge.spawn()
            model = build_bundle("m0001", workdir / "src", root / "models", keys, f"{origin.url}/models", rng)
            ref = FileSetRef("tc", "v1", f"{origin.url}/manifests/tc/v1.json", sum(len(b) for b in files.values()),
                             [FillSource(f"{origin.url}/good/tc/v1", "origin")])
            control.wait_healthy()
            edge.wait_healthy()
            publish_desired(watcher, aid, "fill", DesiredFill(1, [ref]), "cd-fill-1")
            publish_desired(watcher, aid, "model", DesiredModel(1, model.desc, "faults"), "cd-model-1")
            until(lambda: any(a.command_id == "cd-fill-1" and a.status == "done" for a in watcher.bodies("/acks"))
                  and in_use(edge.url) == [model.version], 60, f"the fill and the model; edge log:\n{edge.log()}")
            until(lambda: source(edge) == "control", RESYNC_S, "rows from the control plane")
            draining = False
            this_run = {"drains": 0}  # drains the running edge process has applied
            for trial in range(trials):
                where = f"trial {trial}"
                time.sleep(rng.uniform(*UP_S))
                page(where, "p0", ("control",))
                rows_before = telemetry_rows(db, aid)
                if rng.random() < 0.5:
                    control.kill()
                    detail["kills"] += 1
                else:
                    control.stop()
                detail["outages"] += 1
                down_at = time.monotonic()
                outage = rng.uniform(*OUTAGE_S)
                restart_edge_at = rng.uniform(0.2, outage - 1.0) if rng.random() < EDGE_RESTART_SHARE else None
                restarted = False
                sources: set[str] = set()
                while time.monotonic() - down_at < outage:
                    if restart_edge_at is not None and not restarted and time.monotonic() - down_at >= restart_edge_at:
                        edge.kill()
                        edge.start()
                        restarted = True
                        this_run["drains"] = 0
                        detail["edge_restarts"] += 1
                        model_kept(f"{where}, edge restarted with the control plane down")
                    allowed = ("control", "stale", "trending") if restarted else ("control", "stale")
                    sources.add(page(where, "p0", allowed))
                    serve_all(f"{where}, control plane down")
                    time.sleep(0.1)
                model_kept(f"{where}, control plane down")
                if not restarted and "stale" not in sources:
                    fail.append(f"{where}: no stale rows in a {outage:.1f} s outage (sources {sources})")
                detail["home_stale"] += "stale" in sources
                detail["home_trending"] += "trending" in sources
                control.start()
                back = time.monotonic()
                until(lambda: source(edge) == "control", RESYNC_S, f"{where}: rows from the control plane again")
                until(lambda: control.appliance_state(aid) == ("draining" if draining else "online"),  # noqa: B023
                      RESYNC_S, f"{where}: the edge {'draining' if draining else 'online'} in /v1/appliances")
                until(lambda: telemetry_rows(db, aid) > rows_before, RESYNC_S,  # noqa: B023
                      f"{where}: telemetry stored again")
                detail["resync_s_max"] = round(max(detail["resync_s_max"], time.monotonic() - back), 2)
                if not arrived(edge, this_run["drains"], draining):  # the operator's drain outlives restarts
                    fail.append(f"{where}: the edge's draining is not {draining} after the outage")
                verb = "undrain" if draining else "drain"
                status, body = control.call("POST", f"/v1/appliances/{aid}/{verb}")
                if status != 202:
                    fail.append(f"{where}: {verb} after the return answered {status}: {body}")
                draining = not draining
                this_run["drains"] += 1
                until(functools.partial(arrived, edge, this_run["drains"], draining), RESYNC_S,
                      f"{where}: the {verb} to reach the edge")
                detail["drains_applied"] += 1
                serve_all(f"{where}, control plane back")
            if edge.stop() != 0:
                fail.append("the edge did not exit cleanly on SIGTERM")
            if control.stop() != 0:
                fail.append("the control plane did not exit cleanly on SIGTERM")
        except AssertionError as exc:
            fail.append(f"{str(exc)[:3000]}\nedge log:\n{edge.log(2000)}\ncontrol log:\n{control.log(2000)}")
    result.detail = detail
    result.seconds = time.monotonic() - started
    return result


SCENARIO = Scenario(
    name=NAME,
    description="stop the control plane (SIGTERM or SIGKILL); the edge serves its last desired state and "
                "model, /v1/home goes stale; on return rows, fleet, telemetry and commands resynchronise",
    run=run,
    fast_trials=1,
    full_trials=12,
)
