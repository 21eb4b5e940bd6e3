"""SIGKILL an edge at random moments while it swaps re-ranking models; restart it on the same disk.

Real processes: a private Mosquitto, an HTTP origin serving signed model bundles (paced, so a download
lasts about a second), one ``nearcast edge serve``.  Each trial publishes a new desired model (retained,
as the control plane's deployment does): usually a brand-new version, sometimes a rollback to an
earlier one (whose unpacked directory may or may not still be on disk), then kills the edge at a
uniform moment in the time a swap takes (download, verify, unpack, load, warm up, swap, persist);
one trial in five also kills it again during its start-up, when it reloads the active model.

Checked after every restart, once the edge answers:

* the model in use (``nearcast_edge_model_info``) is a version that was deployed, and ``/v1/home``
  answers with that same version;
* never no model once one has been active;
* its unpacked directory on disk is complete and verified: exactly the bundle's files, each with the
  bundle's bytes (so never a half-written or half-deleted version), and so is the directory of every
  version ``state.json`` names (the active one and the rollback target);
* no genuine bundle is ever refused (a ``failed`` ack).

At the end the edge runs undisturbed until it runs the last desired version.
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import dataclass
from http.client import HTTPException
from pathlib import Path
from typing import Any

import numpy as np

from shared import bundle
from shared.messages import DesiredModel, ModelDescriptor
from tests.faults.harness import (
    Stack,
    Watcher,
    http_json,
    make_keys,
    metrics,
    publish_desired,
    sha256,
    until,
)
from tests.faults.scenario import Scenario, ScenarioResult

NAME = "edge_kill_model"
PAD_BYTES = 1_200_000  # incompressible table: each bundle is ~1.2 MB
ORIGIN_RATE = 1_500_000  # bytes/s: a download lasts about 0.8 s
SWAP_WINDOW_S = 1.6  # kills land uniformly in [0, this] after the desired model is published
ROLLBACK_SHARE = 0.3
STARTUP_KILL_SHARE = 0.2


@dataclass(frozen=True)
class Built:
    version: str
    desc: ModelDescriptor
    files: dict[str, str]  # member name -> sha256 of its bytes


def build_bundle(version: str, src_root: Path, out_dir: Path, keys: Any, base_url: str, rng: random.Random) -> Built:
    """A genuine, signed bundle: a small XGBoost ranker over the edge's features plus a padding table."""
    import xgboost as xgb

    from control.edge_model import FEATURES

    src = src_root / version
    src.mkdir(parents=True)
    nprng = np.random.default_rng(rng.randrange(1 << 30))
    x = nprng.random((300, len(FEATURES)), dtype=np.float32)
    booster = xgb.train({"objective": "reg:squarederror", "max_depth": 3, "nthread": 1},
                        xgb.DMatrix(x, label=x[:, 0] + nprng.random(300, dtype=np.float32)), 8)
    booster.save_model(src / "ranker.json")
    (src / bundle.FEATURE_SPEC_NAME).write_text(json.dumps({"format": 1, "features": list(FEATURES)}))
    np.savez(src / "pad.npz", pad=np.frombuffer(rng.randbytes(PAD_BYTES), dtype=np.uint8))
    meta = bundle.BundleMetadata(format=bundle.FORMAT, version=version, model="ranker.json",
                                 training_window=bundle.TrainingWindow("2026-01-01", "2026-01-02"),
                                 tables=["pad.npz"])
    (src / bundle.METADATA_NAME).write_bytes(meta.to_json())
    desc = bundle.build(src, out_dir, keys.signer, base_url)
    return Built(version, desc, {p.name: sha256(p.read_bytes()) for p in src.iterdir()})


def check_version_dir(models: Path, built: Built) -> str | None:
    """None when ``versions/V`` holds exactly the bundle's files with the bundle's bytes."""
    d = models / "versions" / built.version
    if not d.is_dir():
        return f"versions/{built.version} is missing"
    found = {p.relative_to(d).as_posix() for p in d.rglob("*") if p.is_file()}
    if found != set(built.files):
        return f"versions/{built.version} holds {sorted(found)}, the bundle {sorted(built.files)}"
    for name, digest in built.files.items():
        if sha256((d / name).read_bytes()) != digest:
            return f"versions/{built.version}/{name} differs from the bundle"
    return None


def in_use(url: str) -> list[str]:
    return [k.split('"')[1] for k, v in metrics(url).items() if k.startswith("nearcast_edge_model_info{") and v == 1]


def run(trials: int, seed: int, workdir: Path) -> ScenarioResult:
    started = time.monotonic()
    rng = random.Random(seed)
    result = ScenarioResult(NAME, trials)
    detail: dict[str, Any] = {"kills": 0, "kills_in_startup": 0, "new_versions": 0, "rollbacks": 0,
                              "restarts_on_new_version": 0, "restarts_on_old_version": 0, "restarts_no_model": 0,
                              "swaps_completed": 0}
    built: dict[str, Built] = {}
    fail = result.failures
    with Stack(workdir) as stack:
        broker = stack.broker()
        keys = make_keys(workdir / "keys")
        origin = stack.origin(workdir / "origin", rate_bytes_s=ORIGIN_RATE)
        bundles = workdir / "origin" / "models"
        edge = stack.edge("edge-km", broker.port, keys, {"rerank": {"model_retry_s": 0.5, "control_backoff_s": 60.0},
                                                         "control": {"api_url": origin.url}})
        models_dir = edge.cache_dir / "models"
        watcher: Watcher = stack.watcher(broker.port, f"nearcast/v1/appliances/{edge.name}/acks")
        gen = 0
        history: list[str] = []  # versions in the order they were first deployed
        desired: str | None = None
        ever_active = False

        def publish(version: str) -> None:
            nonlocal gen, desired
            gen += 1
            desired = version
            publish_desired(watcher, edge.name, "model", DesiredModel(gen, built[version].desc, "faults"),
                            f"model-gen-{gen}")

        def check_running(trial: int) -> None:
            nonlocal ever_active
            versions = in_use(edge.url)
            if len(versions) > 1:
                fail.append(f"trial {trial}: several models reported in use: {versions}")
                return
            if not versions:
                detail["restarts_no_model"] += 1
                if ever_active:
                    fail.append(f"trial {trial}: no model in use after a restart, though one was active before")
                return
            version = versions[0]
            ever_active = True
            if version not in built:
                fail.append(f"trial {trial}: model {version!r} in use was never deployed")
                return
            detail["restarts_on_new_version" if version == desired else "restarts_on_old_version"] += 1
            problem = check_version_dir(models_dir, built[version])
            if problem:
                fail.append(f"trial {trial}: the model in use is not the bundle: {problem}")
            status, page = http_json("GET", f"{edge.url}/v1/home/p{trial}?device=tv&hour=21")
            if status != 200 or not isinstance(page, dict) or page.get("model_version") not in (version, desired):
                fail.append(f"trial {trial}: /v1/home answered {status} with model {page!r:.200} "
                            f"while {version} is in use")

        def check_disk(trial: int) -> None:
            try:
                state = json.loads((models_dir / "state.json").read_text())
            except FileNotFoundError:
                return
            for key in ("active", "previous"):
                version = state.get(key)
                if version is None:
                    continue
                if version not in built:
                    fail.append(f"trial {trial}: state.json names unknown {key} {version!r}")
                    continue
                problem = check_version_dir(models_dir, built[version])
                if problem:
                    fail.append(f"trial {trial}: state.json's {key} version is not its bundle: {problem}")

        def refused() -> list[str]:
            return [f"{a.detail.get('refused')}: {a.reason}" for a in watcher.bodies("/acks")
                    if getattr(a, "command_type", "") == "desired.model" and a.status == "failed"]

        try:
            edge.start()
            for trial in range(trials):
                if not history or len(history) < 2 or rng.random() >= ROLLBACK_SHARE:
                    version = f"m{len(history) + 1:04d}"
                    built[version] = build_bundle(version, workdir / "src", bundles, keys, f"{origin.url}/models",
                                                  rng)
                    history.append(version)
                    detail["new_versions"] += 1
                else:
                    version = rng.choice([v for v in history[-4:] if v != desired] or history)
                    detail["rollbacks"] += 1
                publish(version)
                time.sleep(rng.uniform(0, SWAP_WINDOW_S))
                code = edge.kill()
                detail["kills"] += 1
                if code != -9:
                    fail.append(f"trial {trial}: the edge had exited with {code} before the kill:\n{edge.log()}")
                    break
                check_disk(trial)
                if rng.random() < STARTUP_KILL_SHARE:
                    edge.spawn()
                    time.sleep(rng.uniform(0.1, 1.5))
                    if edge.kill() == -9:
                        detail["kills"] += 1
                        detail["kills_in_startup"] += 1
                    check_disk(trial)
                edge.start()
                check_running(trial)
            until(lambda: in_use(edge.url) == [desired] or refused(), 60,
                  f"the edge to run the last desired model {desired}; edge log:\n{edge.log()}")
            check_running(trials)
            detail["swaps_completed"] = sum(1 for a in watcher.bodies("/acks")
                                            if getattr(a, "command_type", "") == "desired.model"
                                            and a.status == "done")
            code = edge.stop()
            if code != 0:
                fail.append(f"the edge exited with {code} on SIGTERM")
        except (AssertionError, OSError, HTTPException) as exc:
            fail.append(f"{type(exc).__name__}: {str(exc)[:4000]}")
        fail.extend(f"a genuine bundle was refused: {r}" for r in refused())
    detail["final_version_reached"] = not fail or "last desired" not in " ".join(fail)
    result.detail = detail
    result.seconds = time.monotonic() - started
    return result


SCENARIO = Scenario(
    name=NAME,
    description="SIGKILL an edge at random moments of model swaps and rollbacks (download, verify, unpack, "
                "load, swap, persist) and of its start-up; the model in use is always a whole, verified bundle",
    run=run,
    fast_trials=4,
    full_trials=60,
)
