"""``GET /v1/home`` on a real running edge, with a real aiohttp server standing in for the control plane."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import socket
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest
import xgboost as xgb
from aiohttp import web

from edge.app import CTX, EdgeContext, build_app
from edge.config import EdgeConfig
from edge.models import LoadedModel
from edge.rerank import parse_candidates
from shared import bundle, tokens
from shared import config as cfg
from shared.bandits import LinUCB

FEATURES = ["cp_score", "local_log_demand", "cached_here", "hour_sin", "device_tv"]
ROWS, ITEMS = 10, 40


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def seed_model(models_dir: Path, version: str = "v1") -> None:
    """An unpacked, active bundle as a previous run left it: the edge loads it at start-up.

    The ranker learned score = cp_score + 0.5 * cached_here, so a cached title climbs its row."""
    rng = np.random.default_rng(3)
    x = rng.random((2000, len(FEATURES)), dtype=np.float32)
    x[:, 2] = rng.integers(0, 2, 2000)
    booster = xgb.train({"objective": "reg:squarederror", "nthread": 1, "max_depth": 4},
                        xgb.DMatrix(x, label=x[:, 0] + 0.5 * x[:, 2]), 40)
    src = models_dir / "versions" / version
    src.mkdir(parents=True)
    booster.save_model(src / "ranker.ubj")
    (src / "feature_spec.json").write_text(json.dumps({"format": 1, "features": FEATURES}))
    meta = bundle.BundleMetadata(format=1, version=version, model="ranker.ubj",
                                 training_window=bundle.TrainingWindow("2026-01-01", "2026-02-01"))
    (src / bundle.METADATA_NAME).write_bytes(meta.to_json())
    (models_dir / "state.json").write_text(json.dumps({"active": version, "previous": None}))


def candidates(profile_id: str) -> dict[str, Any]:
    return {"profile_id": profile_id, "affinities": {"drama": 0.8},
            "rows": [{"id": f"row{r}", "title": f"Row {r}",
                      "items": [{"title_id": f"t{r}-{i}", "score": 1.0 - i / ITEMS,
                                 "artwork": [f"art{k}" for k in range(1 + i % 3)]} for i in range(ITEMS)]}
                     for r in range(ROWS)]}


@dataclass
class Control:
    port: int
    requests: list[str] = field(default_factory=list)
    runner: web.AppRunner | None = None

    async def start(self) -> None:
        async def home(request: web.Request) -> web.Response:
            pid = request.match_info["pid"]
            self.requests.append(pid)
            if pid == "unknown":
                raise web.HTTPNotFound()
            if pid == "garbage":
                return web.Response(text="{not json")
            if pid == "huge":
                return web.Response(body=b" " * (5 << 20), content_type="application/json")
            if pid == "hostile":
                return web.json_response({"rows": [{"id": "../../x", "items": []}]})
            return web.json_response(candidates(pid))

        app = web.Application()
        app.router.add_get("/v1/profiles/{pid}/home", home)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()


@dataclass
class Edge:
    url: str
    ctx: EdgeContext
    http: aiohttp.ClientSession
    token_keys: tokens.TokenKeys

    async def home(self, path: str) -> tuple[int, Any]:
        async with self.http.get(self.url + path) as resp:
            return resp.status, await resp.json()


@pytest.fixture
async def control() -> AsyncIterator[Control]:
    c = Control(free_port())
    yield c
    await c.stop()


@pytest.fixture
async def edge(tmp_path: Path, control: Control) -> AsyncIterator[Edge]:
    tk = tokens.TokenKeys.generate()
    tk.save(tmp_path / "token-keys.json")
    seed_model(tmp_path / "models")
    port = free_port()
    config = cfg.build(EdgeConfig, {
        "appliance": {"id": f"edge-h{port}"}, "http": {"port": port},
        "cache": {"dir": str(tmp_path / "cache"), "capacity_bytes": 64 << 20},
        "security": {"token_keys_file": str(tmp_path / "token-keys.json")},
        "mqtt": {"port": free_port(), "keepalive_s": 5},  # no broker: the re-ranker must not need one
        "control": {"api_url": f"http://127.0.0.1:{control.port}"},
        "rerank": {"models_dir": str(tmp_path / "models"), "candidates_ttl_s": 0.3, "control_backoff_s": 0,
                   "control_timeout_s": 0.5},
    }, source="<test>")
    app = build_app(config, bound_port=port)
    runner = web.AppRunner(app, shutdown_timeout=2, access_log=None, handle_signals=False)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    async with aiohttp.ClientSession() as http:
        yield Edge(f"http://127.0.0.1:{port}", app[CTX], http, tk)
    await runner.cleanup()


async def test_rows_are_reranked_locally_with_artwork_and_propensities(edge: Edge, control: Control,
                                                                       seed: Any) -> None:
    await control.start()
    await seed(edge.ctx.store, "t0-39", "v1", {"master.m3u8": b"#EXTM3U\n"})
    status, page = await edge.home("/v1/home/p1?device=tv&hour=21")
    assert status == 200, page
    assert page["source"] == "control" and page["model_version"] == "v1"
    assert [r["id"] for r in page["rows"]] == [f"row{r}" for r in range(ROWS)]
    sent = candidates("p1")["rows"]
    impressions = set()
    for row, original in zip(page["rows"], sent, strict=True):
        assert sorted(i["title_id"] for i in row["items"]) == sorted(i["title_id"] for i in original["items"])
        arts = {i["title_id"]: i["artwork"] for i in original["items"]}
        scores = [i["score"] for i in row["items"]]
        assert scores == sorted(scores, reverse=True)
        for item in row["items"]:
            assert item["artwork"] in arts[item["title_id"]]
            assert 0 < item["propensity"] <= 1
            assert len(arts[item["title_id"]]) > 1 or item["propensity"] == 1
            impressions.add(item["impression_id"])
    assert len(impressions) == ROWS * ITEMS
    # the title cached here climbs from last place: the local model saw cached_here = 1
    first_row = [i["title_id"] for i in page["rows"][0]["items"]]
    assert first_row.index("t0-39") < first_row.index("t0-30")
    assert page["rows"][1]["items"][-1]["title_id"] == "t1-39"  # nothing cached in row 1: it stays last
    # within the TTL the control plane is not asked again
    await edge.home("/v1/home/p1?device=tv&hour=21")
    assert control.requests == ["p1"]
    async with edge.http.get(edge.url + "/metrics") as resp:
        text = await resp.text()
    assert 'nearcast_edge_model_info{version="v1"} 1.0' in text
    assert "nearcast_edge_rerank_requests_total 2.0" in text and "nearcast_edge_rerank_errors_total 0.0" in text
    assert "nearcast_edge_rerank_p99_ms" in text
    gauges = edge.ctx.agent.telemetry_sample().gauges
    assert gauges["nearcast_edge_model_info{version=v1}"] == 1 and gauges["nearcast_edge_rerank_p99_ms"] > 0


async def test_stale_rows_when_the_control_plane_goes_away(edge: Edge, control: Control) -> None:
    await control.start()
    status, fresh = await edge.home("/v1/home/p2?device=mobile&hour=3")
    assert status == 200 and fresh["source"] == "control"
    await control.stop()
    await asyncio.sleep(0.35)  # past the candidate TTL
    status, stale = await edge.home("/v1/home/p2?device=mobile&hour=3")
    assert status == 200 and stale["source"] == "stale" and len(stale["rows"]) == ROWS
    assert [i["title_id"] for i in stale["rows"][0]["items"]] == [i["title_id"] for i in fresh["rows"][0]["items"]]
    assert edge.ctx.metrics.rerank_fallbacks._value.get() == 1


async def test_local_trending_when_the_control_plane_never_answered(edge: Edge, seed: Any) -> None:
    for title in ("hot", "warm"):
        await seed(edge.ctx.store, title, "v1", {"master.m3u8": b"#EXTM3U\n"})
    for title, n in (("hot", 3), ("warm", 1)):
        token = tokens.sign(edge.token_keys, path_prefix=f"{title}/", client_prefix="127.0.0.0/8", ttl_s=300)
        for _ in range(n):
            async with edge.http.get(f"{edge.url}/v1/content/{token}/{title}/master.m3u8") as resp:
                assert resp.status == 200
    status, page = await edge.home("/v1/home/p3")
    assert status == 200 and page["source"] == "trending"
    assert [[i["title_id"] for i in r["items"]] for r in page["rows"]] == [["hot", "warm"]]
    assert all(i["propensity"] == 1 and i["artwork"] is None for i in page["rows"][0]["items"])


@pytest.mark.parametrize("pid", ["unknown", "garbage", "huge", "hostile"])
async def test_bad_control_answers_fall_back_without_failing(edge: Edge, control: Control, pid: str) -> None:
    await control.start()
    status, page = await edge.home(f"/v1/home/{pid}")
    assert status == 200 and page["source"] == "trending" and page["rows"] == []


@pytest.mark.parametrize("path", [
    "/v1/home/..%2f..%2fetc", "/v1/home/" + "a" * 65, "/v1/home/p%00", "/v1/home/p%20q",
    "/v1/home/p?device=fridge", "/v1/home/p?hour=24", "/v1/home/p?hour=-1", "/v1/home/p?hour=1e1",
    "/v1/home/p?hour=%D9%A3", "/v1/home/p?device=tv&device=web", "/v1/home/p?debug=1",
])
async def test_hostile_requests_are_4xx(edge: Edge, control: Control, path: str) -> None:
    await control.start()
    async with edge.http.get(edge.url + path) as resp:
        assert 400 <= resp.status < 500, path
        assert "error" in await resp.json()
    assert control.requests == []


async def test_no_model_serves_candidate_order_counted_as_fallback(edge: Edge, control: Control) -> None:
    await control.start()
    edge.ctx.models.current = None  # the state before any bundle ever arrived
    status, page = await edge.home("/v1/home/p4?hour=1")
    assert status == 200 and page["model_version"] is None
    assert [i["title_id"] for i in page["rows"][0]["items"]] == [f"t0-{i}" for i in range(ITEMS)]
    assert edge.ctx.metrics.rerank_fallbacks._value.get() == 1


async def test_a_model_failing_at_serve_time_costs_the_rerank_not_the_page(edge: Edge, control: Control) -> None:
    await control.start()
    good = edge.ctx.models.current
    assert good is not None
    # the same booster behind a two-column spec: every scoring call raises inside XGBoost
    edge.ctx.models.current = LoadedModel("broken", ("cp_score", "cached_here"), good.booster, (0, 0))
    status, page = await edge.home("/v1/home/p5?device=web&hour=9")
    assert status == 200 and page["model_version"] == "broken" and page["source"] == "control"
    assert [i["title_id"] for i in page["rows"][0]["items"]] == [f"t0-{i}" for i in range(ITEMS)]
    assert edge.ctx.metrics.rerank_errors._value.get() == 1
    assert edge.ctx.metrics.rerank_fallbacks._value.get() == 1


async def test_a_shipped_artwork_bandit_chooses_the_artwork(edge: Edge, control: Control) -> None:
    """A model that ships a bandit: its learned preference shows; a bandit of another layout is ignored."""
    await control.start()
    home = edge.ctx.home
    model = edge.ctx.models.current
    assert model is not None and model.bandit is None
    arms = sorted({a for r in candidates("p1")["rows"] for it in r["items"] for a in it["artwork"]})
    learned = LinUCB(home.encoder.dim, epsilon=0.0, min_epsilon=0.0, seed=1)
    for _ in range(300):  # the last variant is always played, the others never
        for arm in arms:
            learned.update(home.encoder.encode({}, "tv", 21), arm, float(arm == arms[-1]))
    edge.ctx.models.current = dataclasses.replace(model, bandit=learned)
    status, page = await edge.home("/v1/home/p2?device=tv&hour=21")
    assert status == 200
    variants = {it["title_id"]: it["artwork"] for r in candidates("p2")["rows"] for it in r["items"]}
    choices = Counter(it["artwork"] for r in page["rows"] for it in r["items"] if arms[-1] in variants[it["title_id"]])
    assert choices[arms[-1]] > 0.8 * sum(choices.values()), choices  # epsilon 0.1 explores the rest
    assert learned.min_epsilon == home.settings.bandit_epsilon  # the edge's exploration floor holds
    other = LinUCB(home.encoder.dim + 1, seed=1)
    edge.ctx.models.current = dataclasses.replace(model, bandit=other)
    assert home._bandit(edge.ctx.models.current) is home.bandit


async def test_the_discovery_rows_first_slot_is_explored_with_logged_propensities(edge: Edge) -> None:
    home = edge.ctx.home
    doc = {"profile_id": "p9", "rows": [
        {"id": "top-picks", "title": "Top",
         "items": [{"title_id": "a", "score": 1.0}, {"title_id": "b", "score": 0.5}]},
        {"id": "discovery", "title": "Something different",
         "items": [{"title_id": f"d{i}", "score": 1.0 - i / 10, "artwork": ["x", "y"]} for i in range(4)]}]}
    cands = parse_candidates(doc, "p9")
    firsts: Counter[str] = Counter()
    logged: dict[str, float] = {}
    for _ in range(400):
        page = home.page("p9", cands, "control", "tv", 21, time.time())
        top, disc = page["rows"]
        assert "explore" not in top
        slot = disc["explore"]
        first = disc["items"][0]
        assert first["title_id"] == slot["title_id"] and 0 < slot["propensity"] <= 1
        assert sorted(i["title_id"] for i in disc["items"]) == ["d0", "d1", "d2", "d3"]
        # the tile's propensity is the slot's times the artwork's
        assert first["propensity"] <= slot["propensity"] + 1e-12
        firsts[slot["title_id"]] += 1
        logged[slot["title_id"]] = slot["propensity"]
    assert len(firsts) == 4  # every title gets the slot sometimes
    for title, p in logged.items():  # an untrained bandit: its logged propensities match what it did
        assert abs(firsts[title] / 400 - p) < 0.1, (title, firsts[title], p)
