"""Model rollout end to end: the control plane builds and deploys bundles to three real edge daemons.

Real broker (a private Mosquitto), the real control app, three real edge apps (download, verify,
load, warm up, swap, ack, telemetry) serving ``/v1/home`` under steady traffic.  Candidate rows come
from a small stand-in for the candidate service, so every page is re-ranked by the model.

v1 everywhere → a tampered v2 is refused and v1 keeps serving → the genuine v2 in three waves →
v3, which passes its warm-up but scores NaN on real pages, breaches its health gate and is rolled
back → v4 while one edge is down: it converges when it comes back.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest
import xgboost as xgb
from aiohttp import web
from click.testing import CliRunner

from control.edge_model import FEATURES
from nearcast.cli import cli
from shared import bundle, tokens
from shared.signing import Signer
from tests.edge.conftest import Keys, RunningEdge, free_port, make_config, start_edge

from .conftest import Harness, eventually

GATES = {"min_requests": 30, "ack_timeout_s": 20, "p99_slack_ms": 1000, "max_p99_ratio": 100}


def candidates(pid: str) -> dict[str, Any]:
    return {"profile_id": pid, "rows": [{"id": f"r{r}", "title": f"Row {r}", "items": [
        {"title_id": f"t{r}-{i}", "score": 1 - i / 20} for i in range(20)]} for r in range(3)]}


@pytest.fixture
async def rows_service() -> AsyncIterator[str]:
    async def home(request: web.Request) -> web.Response:
        return web.json_response(candidates(request.match_info["pid"]))

    app = web.Application()
    app.router.add_get("/v1/profiles/{pid}/home", home)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    yield f"http://127.0.0.1:{port}"
    await runner.cleanup()


def nan_beyond_rank_four(out: Path, version: str) -> Path:
    """A bundle whose ranker is finite on the warm-up page (features in [0, 1)) but NaN for any item
    ranked 4th or lower (cp_log_rank >= log 5): it loads, then fails on real pages."""
    rank = FEATURES.index("cp_log_rank")
    rng = np.random.default_rng(0)
    x = rng.random((500, len(FEATURES)), dtype=np.float32)
    x[:, rank] *= 4
    booster = xgb.train({"objective": "reg:squarederror", "max_depth": 1, "eta": 1.0, "nthread": 1},
                        xgb.DMatrix(x, label=(x[:, rank] > 1.5).astype(np.float32)), 1)
    doc = json.loads(bytes(booster.save_raw("json")))
    tree = doc["learner"]["gradient_booster"]["model"]["trees"][0]
    assert tree["split_indices"][0] == rank
    tree["split_conditions"][0] = 1.5
    right = tree["right_children"][0]
    tree["base_weights"][right] = tree["split_conditions"][right] = float("nan")
    src = out / f"src-{version}"
    src.mkdir()
    (src / "ranker.json").write_text(json.dumps(doc))
    (src / "feature_spec.json").write_text(json.dumps({"format": 1, "features": list(FEATURES)}))
    meta = bundle.BundleMetadata(format=1, version=version, model="ranker.json",
                                 training_window=bundle.TrainingWindow("2026-01-01", "2026-01-02"))
    (src / bundle.METADATA_NAME).write_bytes(meta.to_json())
    return src


class Fleet:
    def __init__(self, tmp: Path, h: Harness, rows_url: str) -> None:
        self.tmp, self.h, self.rows_url = tmp, h, rows_url
        token_file = tmp / "token-keys.json"
        tk = tokens.TokenKeys.generate()
        tk.save(token_file)
        control_keys = tmp / "control-keys.json"
        signer = h.ctx.signer
        control_keys.write_text(json.dumps({signer.key_id: signer.public_key_b64()}))
        self.keys = Keys(tk, Signer.generate(), token_file, control_keys)
        self.edges: dict[str, tuple[RunningEdge, web.AppRunner, Any]] = {}
        self.pages: dict[str, list[str | None]] = {}

    async def start(self, name: str) -> RunningEdge:
        config = self.edges[name][2] if name in self.edges else make_config(
            self.tmp / name, self.keys, appliance={"id": name}, mqtt={"port": self.h.broker_port},
            control={"api_url": self.rows_url}, telemetry={"interval_s": 0.3},
            rerank={"model_retry_s": 0.5, "control_backoff_s": 0.0})
        edge, runner = await start_edge(config, self.keys)
        self.edges[name] = (edge, runner, config)
        self.pages.setdefault(name, [])
        return edge

    async def stop(self, name: str) -> None:
        edge, runner, config = self.edges[name]
        await runner.cleanup()
        self.edges[name] = (edge, None, config)  # type: ignore[assignment]

    def running(self) -> dict[str, RunningEdge]:
        return {n: e for n, (e, r, _) in self.edges.items() if r is not None}

    def versions(self) -> dict[str, str | None]:
        return {n: e.ctx.models.version for n, e in self.running().items()}

    async def traffic(self) -> None:
        """Home pages on every running edge, all the time: the health gates' evidence."""
        async with aiohttp.ClientSession() as http:
            i = 0
            while True:
                for name, edge in list(self.running().items()):
                    i += 1
                    try:
                        async with http.get(f"{edge.url}/v1/home/p{i % 50}?device=tv&hour=21") as resp:
                            page = await resp.json()
                        self.pages[name].append(page.get("model_version"))
                    except (aiohttp.ClientError, ValueError):
                        pass
                await asyncio.sleep(0.01)

    async def close(self) -> None:
        for name in list(self.running()):
            await self.stop(name)


async def status(h: Harness) -> dict[str, Any]:
    _, st = await h.call("GET", "/v1/deployment")
    return dict(st)


async def finished(h: Harness, dep_id: str, timeout: float = 45.0) -> dict[str, Any]:
    async def check() -> Any:
        st = await status(h)
        return st if st["deployment"]["id"] == dep_id and st["deployment"]["phase"] != "baking" else None

    return dict(await eventually(check, timeout))


async def deploy(h: Harness, version: str, waves: list[float], bake_s: float = 0.6) -> str:
    code, body = await h.call("POST", "/v1/deployment", {"version": version, "waves": waves, "bake_s": bake_s,
                                                         "gates": GATES})
    assert code == 202, body
    return str(body["deployment"]["id"])


async def operator(h: Harness, *args: str) -> str:
    res = await asyncio.to_thread(CliRunner().invoke, cli, list(args),
                                  env={"NEARCAST_API": h.url, "NEARCAST_TOKEN": h.admin})
    assert res.exit_code == 0, f"nearcast {' '.join(args)}: {res.output}"
    return res.output


@pytest.mark.slow
async def test_rollout_to_real_edges(tmp_path: Path, control_factory: Any, rows_service: str) -> None:
    h = await control_factory({"models": {"tick_s": 0.1}, "fleet": {"heartbeat_ttl_s": 3.0}})
    fleet = Fleet(tmp_path, h, rows_service)
    for name in ("edge-a", "edge-b", "edge-c"):
        await fleet.start(name)
    load = h.ctx.tasks.spawn(fleet.traffic(), name="test-traffic")
    try:
        await eventually(lambda: {a.id for a in h.ctx.fleet.snapshot()
                                  if a.online(time.time(), 3.0)} == {"edge-a", "edge-b", "edge-c"}, 20)
        for version in ("v1", "v2", "v4"):
            code, body = await h.call("POST", "/v1/models", {"version": version, "pages": 150, "seed": 1})
            assert code == 201, body

        # v1 everywhere: every page is re-ranked by it
        st = await finished(h, await deploy(h, "v1", [100]))
        assert st["deployment"]["phase"] == "completed", st["deployment"]["reason"]
        assert fleet.versions() == dict.fromkeys(fleet.running(), "v1")
        await eventually(lambda: all(p[-5:] == ["v1"] * 5 for p in fleet.pages.values()))

        # a tampered v2 is refused by the canary; nobody stops serving v1
        path = h.state / "edge-models" / "v2.ncb"
        genuine = path.read_bytes()
        path.write_bytes(genuine[:1000] + bytes([genuine[1000] ^ 0xFF]) + genuine[1001:])
        st = await finished(h, await deploy(h, "v2", [34, 100], bake_s=5))
        dep = st["deployment"]
        assert dep["phase"] == "rolled_back" and "sha256" in dep["reason"], dep
        assert fleet.versions() == dict.fromkeys(fleet.running(), "v1") and st["active"] == "v1"
        served = len(fleet.pages["edge-a"])
        await eventually(lambda: len(fleet.pages["edge-a"]) > served + 10)
        assert all(v == "v1" for p in fleet.pages.values() for v in p[-10:])

        # the genuine v2, wave by wave, from the operator's CLI
        path.write_bytes(genuine)
        out = await operator(h, "model", "deploy", "v2", "--waves", "34,67,100", "--bake", "600ms",
                             "--min-requests", "30", "--ack-timeout", "20s", "--max-p99-ratio", "100", "--wait")
        assert out.count("baked") == 3 and "completed" in out, out
        assert fleet.versions() == dict.fromkeys(fleet.running(), "v2")
        for name, (edge, _, _) in fleet.edges.items():  # the previous version stays unpacked, for rollback
            assert sorted(p.name for p in edge.ctx.models.dir.joinpath("versions").iterdir()) == ["v1", "v2"], name

        # v3 loads and warms up fine, then fails on real pages: the gate rolls it back
        await asyncio.to_thread(h.ctx.bundles.publish, nan_beyond_rank_four(tmp_path, "v3"))  # type: ignore[union-attr]
        st = await finished(h, await deploy(h, "v3", [34, 100], bake_s=30))
        dep = st["deployment"]
        assert dep["phase"] == "rolled_back" and "re-rank error rate" in dep["reason"], dep
        await eventually(lambda: fleet.versions() == dict.fromkeys(fleet.running(), "v2"), 20)
        canary = next(a["appliance_id"] for a in st["appliances"] if a["wave"] == 1)
        metrics = fleet.edges[canary][0].ctx.metrics
        assert metrics.rerank_errors._value.get() >= 30  # counted on the edge, served in candidate order

        # v4 while edge-c is down: the others complete, edge-c converges when it returns
        await fleet.stop("edge-c")
        await eventually(lambda: not any(a.id == "edge-c" and a.online(time.time(), 3.0)
                                         for a in h.ctx.fleet.snapshot()))
        st = await finished(h, await deploy(h, "v4", [50, 100]))
        assert st["deployment"]["phase"] == "completed", st["deployment"]["reason"]
        rows = {a["appliance_id"]: a for a in st["appliances"]}
        assert rows["edge-c"]["desired"] == "v4" and rows["edge-c"]["active"] == "v2" and not rows["edge-c"]["online"]
        assert fleet.versions() == {"edge-a": "v4", "edge-b": "v4"}
        edge_c = await fleet.start("edge-c")
        await eventually(lambda: edge_c.ctx.models.version == "v4", 20)

        async def converged() -> bool:
            st = await status(h)
            return all(a["active"] == "v4" and a["online"] for a in st["appliances"])

        await eventually(converged, 20)
        text = await operator(h, "model", "status")
        assert "v4" in text and "edge-c" in text and "completed" in text
        _, audit = await h.call("GET", "/v1/audit")
        actions = [e["action"] for e in audit["entries"]]
        assert actions.count("model.rollback.auto") == 2 and actions.count("model.deploy") == 5
    finally:
        load.cancel()
        await asyncio.gather(load, return_exceptions=True)
        await fleet.close()
