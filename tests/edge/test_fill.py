"""The fill agent against a real HTTP origin and the real broker: desired state in (retained), acks out."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import aiohttp

from shared.messages import FileSetRef
from shared.tasks import TaskGroup
from tests.edge.conftest import fill_ref, publish_fill

FILES = {
    "hls/master.m3u8": b"#EXTM3U\n#EXT-X-STREAM-INF:BANDWIDTH=1\n720p/index.m3u8\n",
    "hls/720p/init.mp4": os.urandom(700),
    "hls/720p/seg_1.m4s": os.urandom(150_000),
    "hls/720p/seg_2.m4s": os.urandom(150_000),
}


def ref(origin: Any, title: str, version: str, kinds: list[str], files: dict[str, bytes] = FILES) -> FileSetRef:
    return fill_ref(origin, title, files, version, kinds)


def final_ack(w: Any, env_id: str) -> Any:
    acks = [a for a in w.bodies("/acks") if a.command_id == env_id and a.status in ("done", "failed", "rejected")]
    return acks[-1] if acks else None


async def fetch(edge: Any, title: str, path: str) -> tuple[int, bytes]:
    url = edge.content_url(edge.token(title), title, path)
    async with aiohttp.ClientSession() as s, s.get(url, allow_redirects=False) as r:
        return r.status, await r.read()


async def test_corrupt_source_is_detected_and_next_source_used(edge: Any, origin: Any, file_set: Any,
                                                               watch: Any, keys: Any) -> None:
    file_set(origin.root, keys.signer, "t1", "v1", FILES)
    aid = edge.ctx.config.appliance.id
    w = watch(aid)
    await w.wait(edge.ctx.agent.session.connected.is_set)
    assert (await fetch(edge, "t1", "hls/master.m3u8"))[0] == 404  # not held yet
    env_id = publish_fill(w, aid, 1, [ref(origin, "t1", "v1", ["corrupt", "good"])])
    await w.wait(lambda: final_ack(w, env_id) is not None)
    ack = final_ack(w, env_id)
    assert ack.status == "done", ack
    assert ack.detail["file_sets"]["t1/v1"]["state"] == "done"
    assert any(a.status == "progress" for a in w.bodies("/acks") if a.command_id == env_id)
    for path, body in FILES.items():
        assert await fetch(edge, "t1", path) == (200, body)
    assert edge.ctx.metrics.fill_files.labels("corrupt")._value.get() == len(FILES)
    assert not list((edge.ctx.store.dir).rglob("*.part"))


async def test_interrupted_transfer_resumes_with_range(edge: Any, origin: Any, file_set: Any, watch: Any,
                                                       keys: Any) -> None:
    file_set(origin.root, keys.signer, "t2", "v1", FILES)
    aid = edge.ctx.config.appliance.id
    w = watch(aid)
    env_id = publish_fill(w, aid, 1, [ref(origin, "t2", "v1", ["flaky"])])
    await w.wait(lambda: final_ack(w, env_id) is not None)
    assert final_ack(w, env_id).status == "done"
    resumed = [r for p, r in origin.requests if p.endswith("seg_1.m4s") and r]
    assert resumed == ["bytes=75000-"]
    assert await fetch(edge, "t2", "hls/720p/seg_1.m4s") == (200, FILES["hls/720p/seg_1.m4s"])


async def test_bad_manifests_fail_the_set_and_nothing_is_served(edge: Any, origin: Any, file_set: Any,
                                                                watch: Any, keys: Any) -> None:
    from shared.signing import Signer

    file_set(origin.root, Signer.generate(), "t3", "v1", FILES)  # signed by a key we do not trust
    file_set(origin.root, keys.signer, "t4", "v1", {"../escape.m4s": b"x"})
    aid = edge.ctx.config.appliance.id
    w = watch(aid)
    env_id = publish_fill(w, aid, 1, [ref(origin, "t3", "v1", ["good"]), ref(origin, "t4", "v1", ["good"]),
                                         ref(origin, "t5", "v1", ["good"])])
    await w.wait(lambda: final_ack(w, env_id) is not None)
    ack = final_ack(w, env_id)
    assert ack.status == "failed"
    sets = ack.detail["file_sets"]
    assert "unknown signing key" in sets["t3/v1"]["reason"]
    assert "not allowed" in sets["t4/v1"]["reason"]
    assert "HTTP 404" in sets["t5/v1"]["reason"]
    assert (await fetch(edge, "t3", "hls/master.m3u8"))[0] == 404
    assert not (edge.ctx.store.dir / "escape.m4s").exists()
    # a malformed window rejects the generation outright
    bad_id = publish_fill(w, aid, 2, [], window="25:00-26:00")
    await w.wait(lambda: final_ack(w, bad_id) is not None)
    assert final_ack(w, bad_id).status == "rejected"


def _disk_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file() and p.parent != root)


async def test_capacity_is_never_exceeded_and_eviction_follows_the_plan(
        tmp_path: Path, keys: Any, origin: Any, file_set: Any, watch: Any, edge_factory: Any) -> None:
    set_a = {"a/seg.m4s": os.urandom(400_000)}
    set_b = {"b/seg.m4s": os.urandom(400_000)}
    for title, files in (("ta", set_a), ("tb", set_b)):
        file_set(origin.root, keys.signer, title, "v1", files)
    capacity = 600_000
    edge = await edge_factory(cache={"capacity_bytes": capacity})
    aid = edge.ctx.config.appliance.id
    cache = edge.ctx.store.dir
    peak = 0
    tasks = TaskGroup("test")

    async def sample() -> None:
        nonlocal peak
        while True:
            peak = max(peak, _disk_bytes(cache / "sets") + _disk_bytes(cache / "fill"))
            await asyncio.sleep(0.005)

    tasks.spawn(sample(), name="disk sampler")
    try:
        w = watch(aid)
        env1 = publish_fill(w, aid, 1, [ref(origin, "ta", "v1", ["good"], set_a),
                                           ref(origin, "tb", "v1", ["good"], set_b)])
        await w.wait(lambda: final_ack(w, env1) is not None)
        ack = final_ack(w, env1)
        assert ack.status == "failed" and "no room" in ack.detail["file_sets"]["tb/v1"]["reason"]
        assert ack.detail["file_sets"]["ta/v1"]["state"] == "done"
        env2 = publish_fill(w, aid, 2, [ref(origin, "tb", "v1", ["good"], set_b)])
        await w.wait(lambda: final_ack(w, env2) is not None)
        assert final_ack(w, env2).status == "done"
        held = {r.key: r.state for r in await edge.ctx.store.sets()}
        assert held == {("tb", "v1"): "complete"}  # ta was outside the plan: evicted to make room
        assert not (cache / "sets" / "ta").exists()
        assert edge.ctx.metrics.evictions.labels("capacity")._value.get() == 1
        assert (await fetch(edge, "tb", "b/seg.m4s")) == (200, set_b["b/seg.m4s"])
    finally:
        await tasks.aclose()
    assert 400_000 <= peak <= capacity


async def test_rate_limit_holds_within_ten_percent(keys: Any, origin: Any, file_set: Any, watch: Any,
                                                   edge_factory: Any) -> None:
    files = {f"r/seg_{i}.m4s": os.urandom(512_000) for i in range(6)}  # 3 MB
    file_set(origin.root, keys.signer, "tr", "v1", files)
    edge = await edge_factory(fill={"concurrency": 3})
    aid = edge.ctx.config.appliance.id
    counter = edge.ctx.metrics.fill_bytes.labels("origin")
    samples: list[tuple[float, float]] = []
    loop = asyncio.get_running_loop()
    tasks = TaskGroup("test")

    async def sample() -> None:  # what the edge has taken in, as it goes (socket buffers hide it at the origin)
        while True:
            samples.append((loop.time(), counter._value.get()))
            await asyncio.sleep(0.005)

    tasks.spawn(sample(), name="fill sampler")
    w = watch(aid)
    rate_bytes = 1_000_000
    try:
        env_id = publish_fill(w, aid, 1, [ref(origin, "tr", "v1", ["good"], files)], rate_bps=rate_bytes * 8)
        await w.wait(lambda: final_ack(w, env_id) is not None, timeout=30)
    finally:
        await tasks.aclose()
    assert final_ack(w, env_id).status == "done"
    moving = [(t, b) for t, b in samples if b > 0]
    (t0, b0), (t1, b1) = moving[0], next(s for s in moving if s[1] == moving[-1][1])
    measured = (b1 - b0) / (t1 - t0)
    print(f"fill rate {measured:.0f} B/s for a limit of {rate_bytes} B/s ({measured / rate_bytes:.3f}x)")
    assert b1 == sum(len(b) for b in files.values())
    assert abs(measured - rate_bytes) / rate_bytes <= 0.10


async def test_fill_waits_for_its_window_and_oversized_manifests_are_refused(
        keys: Any, origin: Any, file_set: Any, watch: Any, edge_factory: Any) -> None:
    from datetime import datetime, timedelta

    file_set(origin.root, keys.signer, "tw", "v1", FILES)
    big = {f"x/{i:05d}.m4s": b"x" for i in range(200)}  # a manifest well over 2 KB
    file_set(origin.root, keys.signer, "tb", "v1", big)
    edge = await edge_factory(fill={"max_manifest_bytes": 2000})
    aid = edge.ctx.config.appliance.id
    w = watch(aid)
    opens = datetime.now() + timedelta(hours=2)
    window = f"{opens:%H:%M}-{opens + timedelta(hours=1):%H:%M}"
    env_id = publish_fill(w, aid, 1, [ref(origin, "tw", "v1", ["good"])], window=window)

    def waiting() -> bool:
        return any(a.status == "progress" and a.detail["file_sets"]["tw/v1"]["state"] == "waiting_window"
                   for a in w.bodies("/acks") if a.command_id == env_id)

    await w.wait(waiting)
    await asyncio.sleep(0.3)
    assert not origin.requests  # not even the manifest: nothing moves outside the window
    env2 = publish_fill(w, aid, 2, [ref(origin, "tb", "v1", ["good"], big)])  # a new plan interrupts the wait
    await w.wait(lambda: final_ack(w, env2) is not None)
    ack = final_ack(w, env2)
    assert ack.status == "failed" and "larger than 2000 bytes" in ack.detail["file_sets"]["tb/v1"]["reason"]
    assert [p for p, _ in origin.requests] == ["/manifests/tb/v1.json"]


async def test_room_is_made_from_superseded_versions_first_never_by_reviving_one(
        keys: Any, origin: Any, file_set: Any, watch: Any, edge_factory: Any) -> None:
    """ta/v1, much watched, then replaced by ta/v2; a third set needs room for one of them.  Popularity
    alone would keep v1 and evict v2, and the catalog would fall back to serving v1 again: a version
    this appliance had already replaced (stale).  A superseded version goes first instead."""
    v1, v2, other = ({"a/seg.m4s": os.urandom(300_000)} for _ in range(3))
    file_set(origin.root, keys.signer, "ta", "v1", v1)
    file_set(origin.root, keys.signer, "ta", "v2", v2)
    file_set(origin.root, keys.signer, "tb", "v1", other)
    edge = await edge_factory(cache={"capacity_bytes": 700_000})
    aid = edge.ctx.config.appliance.id
    w = watch(aid)
    env = publish_fill(w, aid, 1, [ref(origin, "ta", "v1", ["good"], v1)])
    await w.wait(lambda: final_ack(w, env) is not None)
    for _ in range(50):
        assert await fetch(edge, "ta", "a/seg.m4s") == (200, v1["a/seg.m4s"])
    env = publish_fill(w, aid, 2, [ref(origin, "ta", "v2", ["good"], v2)])
    await w.wait(lambda: final_ack(w, env) is not None)
    assert await fetch(edge, "ta", "a/seg.m4s") == (200, v2["a/seg.m4s"])
    await edge.ctx.store.flush_hits()  # what housekeeping does every few seconds
    env = publish_fill(w, aid, 3, [ref(origin, "tb", "v1", ["good"], other)])
    await w.wait(lambda: final_ack(w, env) is not None)
    assert final_ack(w, env).status == "done"
    assert {r.key for r in await edge.ctx.store.sets()} == {("ta", "v2"), ("tb", "v1")}
    assert await fetch(edge, "ta", "a/seg.m4s") == (200, v2["a/seg.m4s"])
