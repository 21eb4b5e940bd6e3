"""The model manager against real signed bundles of real XGBoost models, served over real HTTP."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest
import xgboost as xgb
from aiohttp import web

from edge.metrics import EdgeMetrics
from edge.models import ModelError, ModelManager, load_model
from shared import bundle
from shared.envelope import Envelope
from shared.errors import InvalidInput
from shared.messages import Ack, DesiredModel, ModelDescriptor
from shared.signing import Signer
from shared.tasks import TaskGroup

FEATURES = ["cp_score", "local_log_demand", "cached_here", "hour_sin", "device_tv"]


def train_model(out: Path, version: str, *, nan: bool = False, features: list[str] | None = None) -> Path:
    """A bundle directory holding a small real ranker; ``nan`` poisons its leaves (scores NaN)."""
    names = features or FEATURES
    rng = np.random.default_rng(1)
    x = rng.random((300, len(names)), dtype=np.float32)
    y = x[:, 0] + 0.5 * x[:, min(2, len(names) - 1)]
    booster = xgb.train({"objective": "reg:squarederror", "nthread": 1, "max_depth": 3}, xgb.DMatrix(x, label=y), 15)
    src = out / f"src-{version}"
    src.mkdir(parents=True)
    doc = json.loads(bytes(booster.save_raw("json")))
    if nan:
        for tree in doc["learner"]["gradient_booster"]["model"]["trees"]:
            tree["base_weights"] = [float("nan")] * len(tree["base_weights"])
            tree["split_conditions"] = [float("nan")] * len(tree["split_conditions"])
    (src / "ranker.json").write_text(json.dumps(doc))
    (src / "feature_spec.json").write_text(json.dumps({"format": 1, "features": names}))
    meta = bundle.BundleMetadata(format=1, version=version, model="ranker.json",
                                 training_window=bundle.TrainingWindow("2026-01-01", "2026-02-01"))
    (src / bundle.METADATA_NAME).write_bytes(meta.to_json())
    return src


@dataclass
class Repo:
    """A real HTTP server for bundles (with Range support from FileResponse); records requests."""

    url: str
    root: Path
    signer: Signer
    requests: list[str]

    def publish(self, version: str, **kw: Any) -> ModelDescriptor:
        return bundle.build(train_model(self.root, version, **kw), self.root / "files", self.signer, self.url)


@pytest.fixture
async def repo(tmp_path: Path, unused_tcp_port: int) -> AsyncIterator[Repo]:
    root = tmp_path / "repo"
    (root / "files").mkdir(parents=True)
    requests: list[str] = []

    async def serve(request: web.Request) -> web.StreamResponse:
        requests.append(request.headers.get("Range", ""))
        path = root / "files" / request.match_info["name"]
        if not path.is_file():
            raise web.HTTPNotFound()
        return web.FileResponse(path)

    app = web.Application()
    app.router.add_get("/{name}", serve)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", unused_tcp_port).start()
    yield Repo(f"http://127.0.0.1:{unused_tcp_port}", root, Signer.generate(), requests)
    await runner.cleanup()


class Harness:
    def __init__(self, models_dir: Path, repo: Repo) -> None:
        self.acks: list[Ack] = []
        self.metrics = EdgeMetrics()
        self.repo = repo
        self.dir = models_dir
        self.gen = 0

    def manager(self) -> ModelManager:
        async def send(ack: Ack) -> None:
            self.acks.append(ack)

        return ModelManager(self.dir, _keys(self.repo.signer), self.metrics, send, retry_s=0.2)

    def env(self, desc: ModelDescriptor | None) -> Envelope[Any]:
        self.gen += 1
        return Envelope("desired.model", 1, f"m{self.gen}", "control", 0.0, DesiredModel(self.gen, desc))

    async def until_final(self, msg_id: str) -> Ack:
        for _ in range(400):
            final = [a for a in self.acks if a.command_id == msg_id and a.status in ("done", "failed")]
            if final:
                return final[-1]
            await asyncio.sleep(0.025)
        raise AssertionError(f"no final ack for {msg_id}: {self.acks}")


def _keys(signer: Signer) -> dict[str, bytes]:
    from shared.signing import parse_public_keys

    return parse_public_keys({signer.key_id: signer.public_key_b64()})


@pytest.fixture
async def running(tmp_path: Path, repo: Repo) -> AsyncIterator[tuple[Harness, ModelManager]]:
    h = Harness(tmp_path / "models", repo)
    mgr = h.manager()
    await mgr.start()
    tasks = TaskGroup("test-models")
    tasks.spawn(mgr.run(), name="models")
    yield h, mgr
    await tasks.aclose()
    await mgr.stop()


def _info(h: Harness) -> dict[str, float]:
    return {s.labels["version"]: s.value for m in h.metrics.model_info.collect() for s in m.samples}


async def test_deploy_swap_keeps_previous_and_rolls_back_without_download(
        running: tuple[Harness, ModelManager], repo: Repo) -> None:
    h, mgr = running
    d1, d2 = repo.publish("v1"), repo.publish("v2")
    env = h.env(d1)
    await mgr.apply(env)
    ack = await h.until_final(env.id)
    assert ack.status == "done" and ack.detail["model_version"] == "v1"
    first = mgr.current
    assert first is not None and np.all(np.isfinite(first.score(np.zeros((4, len(FEATURES)), np.float32))))
    env = h.env(d2)
    await mgr.apply(env)
    assert (await h.until_final(env.id)).detail["model_version"] == "v2"
    assert mgr.previous == "v1" and _info(h) == {"v2": 1.0}
    assert sorted(p.name for p in (h.dir / "versions").iterdir()) == ["v1", "v2"]
    downloads = len(repo.requests)
    env = h.env(d1)  # rollback: the previous version is still unpacked, verified
    await mgr.apply(env)
    assert (await h.until_final(env.id)).detail["model_version"] == "v1"
    assert len(repo.requests) == downloads and mgr.previous == "v2"


async def test_tampered_bundle_is_refused_and_current_model_keeps_serving(
        running: tuple[Harness, ModelManager], repo: Repo) -> None:
    h, mgr = running
    env = h.env(repo.publish("v1"))
    await mgr.apply(env)
    await h.until_final(env.id)
    d2 = repo.publish("v2")
    path = repo.root / "files" / "v2.ncb"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    env = h.env(d2)
    await mgr.apply(env)
    ack = await h.until_final(env.id)
    assert ack.status == "failed" and "sha256" in ack.reason
    assert ack.detail == {"model_version": "v1", "refused": "v2"} and mgr.version == "v1"
    assert not (h.dir / "versions" / "v2").exists() and not list((h.dir / "downloads").iterdir())
    # a forged signature (right bytes, signed by another key) is refused the same way
    forged = bundle.build(train_model(repo.root, "v3"), repo.root / "files", Signer.generate(), repo.url)
    env = h.env(forged)
    await mgr.apply(env)
    ack = await h.until_final(env.id)
    assert ack.status == "failed" and "signature" in ack.reason and mgr.version == "v1"


async def test_nan_scoring_model_is_refused_at_warm_up(running: tuple[Harness, ModelManager], repo: Repo) -> None:
    h, mgr = running
    env = h.env(repo.publish("v1"))
    await mgr.apply(env)
    await h.until_final(env.id)
    env = h.env(repo.publish("bad", nan=True))
    await mgr.apply(env)
    ack = await h.until_final(env.id)
    assert ack.status == "failed" and "warm-up" in ack.reason and mgr.version == "v1"
    assert not (h.dir / "versions" / "bad").exists()
    assert h.metrics.model_loads.labels("refused")._value.get() == 1


async def test_unknown_feature_and_missing_server_are_refused(running: tuple[Harness, ModelManager],
                                                               repo: Repo) -> None:
    h, mgr = running
    env = h.env(repo.publish("odd", features=["cp_score", "user_age"]))
    await mgr.apply(env)
    ack = await h.until_final(env.id)
    assert ack.status == "failed" and "user_age" in ack.reason and mgr.current is None
    gone = ModelDescriptor("v9", repo.url + "/v9.ncb", 100, "0" * 64, "AA==", repo.signer.key_id)
    env = h.env(gone)
    await mgr.apply(env)
    ack = await h.until_final(env.id)
    assert ack.status == "failed" and "404" in ack.reason


async def test_hostile_descriptors_are_rejected_before_any_download(running: tuple[Harness, ModelManager],
                                                                    repo: Repo) -> None:
    h, mgr = running
    good = repo.publish("v1")
    for bad in (ModelDescriptor("../x", good.url, good.size, good.sha256, good.signature, good.key_id),
                ModelDescriptor("v1", "file:///etc/passwd", good.size, good.sha256, good.signature, good.key_id),
                ModelDescriptor("v1", good.url, 10 << 30, good.sha256, good.signature, good.key_id)):
        with pytest.raises(InvalidInput):
            await mgr.apply(h.env(bad))
    assert repo.requests == []


async def test_interrupted_download_resumes_with_range(running: tuple[Harness, ModelManager], repo: Repo) -> None:
    h, mgr = running
    desc = repo.publish("v1")
    blob = (repo.root / "files" / "v1.ncb").read_bytes()
    (h.dir / "downloads" / "v1.ncb.part").write_bytes(blob[: len(blob) // 2])
    env = h.env(desc)
    await mgr.apply(env)
    assert (await h.until_final(env.id)).status == "done"
    assert repo.requests == [f"bytes={len(blob) // 2}-"]


async def test_restart_loads_the_active_version(tmp_path: Path, repo: Repo) -> None:
    h = Harness(tmp_path / "models", repo)
    mgr = h.manager()
    await mgr.start()
    tasks = TaskGroup("test-models")
    tasks.spawn(mgr.run(), name="models")
    for version in ("v1", "v2"):
        env = h.env(repo.publish(version))
        await mgr.apply(env)
        await h.until_final(env.id)
    await tasks.aclose()
    await mgr.stop()
    again = h.manager()
    await again.start()
    try:
        assert again.version == "v2" and again.previous == "v1"
    finally:
        await again.stop()
    # the active version's files are damaged: the previous one serves after the restart
    (tmp_path / "models" / "versions" / "v2" / "ranker.json").write_text("{not json")
    third = h.manager()
    await third.start()
    try:
        assert third.version == "v1"
    finally:
        await third.stop()


def test_load_model_refuses_a_spec_that_does_not_fit_the_booster(tmp_path: Path) -> None:
    src = train_model(tmp_path, "v1")
    (src / "feature_spec.json").write_text(json.dumps({"features": ["cp_score"]}))
    with pytest.raises(ModelError, match="booster takes"):
        load_model(src, "v1")
    (src / "feature_spec.json").write_text("[1, 2")
    with pytest.raises(ModelError, match="cannot load"):
        load_model(src, "v1")


async def test_desired_model_over_the_real_broker(edge: Any, watch: Any, keys: Any, repo: Repo) -> None:
    """The agent's ``desired/model`` hook end to end: retained desired state in, acks out, tamper refused."""
    from shared.messages import REGISTRY

    repo.signer = keys.signer  # the edge trusts the control plane's key from its config
    aid = edge.ctx.config.appliance.id
    topic = f"nearcast/v1/appliances/{aid}/desired/model"
    w = watch(aid)
    await w.wait(edge.ctx.agent.session.connected.is_set)

    def final(env_id: str) -> Any:
        acks = [a for a in w.bodies("/acks") if a.command_id == env_id and a.status in ("done", "failed")]
        return acks[-1] if acks else None

    try:
        w.publish(topic, REGISTRY.encode(DesiredModel(1, repo.publish("v1")), sender="control", msg_id="dm-1"),
                  retain=True)
        await w.wait(lambda: final("dm-1") is not None)
        assert final("dm-1").status == "done" and final("dm-1").detail["model_version"] == "v1"
        d2 = repo.publish("v2")
        tampered = ModelDescriptor(d2.version, d2.url, d2.size, "f" * 64, d2.signature, d2.key_id)
        w.publish(topic, REGISTRY.encode(DesiredModel(2, tampered), sender="control", msg_id="dm-2"), retain=True)
        await w.wait(lambda: final("dm-2") is not None)
        ack = final("dm-2")
        assert ack.status == "failed" and ack.detail["model_version"] == "v1" and edge.ctx.models.version == "v1"
        async with aiohttp.ClientSession() as http, http.get(edge.url + "/metrics") as resp:
            text = await resp.text()
        assert 'nearcast_edge_model_info{version="v1"} 1.0' in text
        assert 'nearcast_edge_model_loads_total{result="refused"} 1.0' in text
    finally:
        w.publish(topic, b"", retain=True)


async def test_a_damaged_unpacked_version_is_fetched_again_not_refused(
        running: tuple[Harness, ModelManager], repo: Repo) -> None:
    """A rollback target whose directory lost files (a crash mid-delete, a bad disk) is re-downloaded."""
    h, mgr = running
    d1, d2 = repo.publish("v1"), repo.publish("v2")
    for desc in (d1, d2):
        env = h.env(desc)
        await mgr.apply(env)
        assert (await h.until_final(env.id)).status == "done"
    (h.dir / "versions" / "v1" / bundle.METADATA_NAME).unlink()
    downloads = len(repo.requests)
    env = h.env(d1)
    await mgr.apply(env)
    ack = await h.until_final(env.id)
    assert ack.status == "done" and ack.detail["model_version"] == "v1", ack
    assert len(repo.requests) == downloads + 1 and (h.dir / "versions" / "v1" / bundle.METADATA_NAME).is_file()


PAD_FILES = 5000
_SWAP_SCRIPT = """
import asyncio, json, sys
from pathlib import Path
from edge.metrics import EdgeMetrics
from edge.models import ModelManager
from shared.envelope import Envelope
from shared.messages import DesiredModel, ModelDescriptor
from shared.signing import parse_public_keys

async def main() -> None:
    async def send(ack): pass
    mgr = ModelManager(Path(sys.argv[1]), parse_public_keys(json.loads(sys.argv[2])), EdgeMetrics(), send)
    await mgr.start()
    desc = ModelDescriptor(**json.loads(sys.argv[3]))
    await mgr.apply(Envelope("desired.model", 1, "k1", "control", 0.0, DesiredModel(1, desc)))
    await mgr.run()

asyncio.run(main())
"""


async def test_sigkill_while_an_old_version_is_deleted_leaves_no_half_deleted_version(
        tmp_path: Path, repo: Repo) -> None:
    """v1 → v2, then v3 in a real process killed (SIGKILL) while it deletes v1 (made slow to delete):
    ``versions/v1`` is gone or whole, never half deleted, and a later rollback to v1 gets all of it."""
    import dataclasses
    import os
    import signal
    import subprocess
    import sys

    h = Harness(tmp_path / "models", repo)
    mgr = h.manager()
    await mgr.start()
    tasks = TaskGroup("test-models")
    tasks.spawn(mgr.run(), name="models")
    d1 = repo.publish("v1")
    for desc in (d1, repo.publish("v2")):
        env = h.env(desc)
        await mgr.apply(env)
        assert (await h.until_final(env.id)).status == "done"
    await tasks.aclose()
    await mgr.stop()
    v1 = h.dir / "versions" / "v1"
    whole = sorted(p.name for p in v1.iterdir())
    (v1 / "pad").mkdir()
    for i in range(PAD_FILES):  # enough files that deleting them takes a while
        (v1 / "pad" / f"{i}").write_bytes(b"x")
    keys = {repo.signer.key_id: repo.signer.public_key_b64()}
    proc = subprocess.Popen([sys.executable, "-c", _SWAP_SCRIPT, str(h.dir), json.dumps(keys),
                             json.dumps(dataclasses.asdict(repo.publish("v3")))])
    try:
        for _ in range(30_000):  # the swap persists state.json, then deletes v1: kill as soon as that starts
            try:
                if sorted(p.name for p in v1.iterdir()) != sorted([*whole, "pad"]) \
                        or len(os.listdir(v1 / "pad")) < PAD_FILES:
                    break
            except FileNotFoundError:
                break
            await asyncio.sleep(0.001)
        else:
            raise AssertionError("v1 was never deleted")
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait(10)
    assert not v1.exists() or (len(os.listdir(v1 / "pad")) == PAD_FILES
                               and sorted(p.name for p in v1.iterdir()) == sorted([*whole, "pad"]))
    again = h.manager()
    await again.start()
    tasks = TaskGroup("test-models")
    tasks.spawn(again.run(), name="models")
    try:
        assert again.version == "v3" and not [p for p in (h.dir / "versions").iterdir() if p.name.startswith(".")]
        env = h.env(d1)
        await again.apply(env)
        assert (await h.until_final(env.id)).status == "done" and again.version == "v1"
        assert set(whole) <= {p.name for p in v1.iterdir()}  # the bundle's files: refetched, or never touched
    finally:
        await tasks.aclose()
        await again.stop()
