"""The scrub (edge/scrub.py) on a real edge with a real origin and the real broker: a cached file damaged
on disk is found (by the periodic scrub, or on read for manifests and init segments), never served,
filled again from the origin, and then served with the right bytes."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import aiohttp

from tests.edge.conftest import fill_ref, publish_fill

FILES = {
    "hls/master.m3u8": b"#EXTM3U\n#EXT-X-STREAM-INF:BANDWIDTH=1\n720p/index.m3u8\n",
    "hls/720p/init.mp4": os.urandom(900),
    "hls/720p/seg_1.m4s": os.urandom(300_000),
    "hls/720p/seg_2.m4s": os.urandom(120_000),
}
SIZE = sum(len(b) for b in FILES.values())


def done(w: Any, env_id: str) -> bool:
    return any(a.command_id == env_id and a.status == "done" for a in w.bodies("/acks"))


async def fetch(edge: Any, title: str, path: str) -> tuple[int, bytes]:
    url = edge.content_url(edge.token(title), title, path)
    async with aiohttp.ClientSession() as s, s.get(url, allow_redirects=False) as r:
        return r.status, await r.read()


async def filled_edge(edge_factory: Any, origin: Any, file_set: Any, keys: Any, watch: Any, title: str,
                      **scrub: Any) -> tuple[Any, Any]:
    file_set(origin.root, keys.signer, title, "v1", FILES)
    edge = await edge_factory(scrub=scrub)
    aid = edge.ctx.config.appliance.id
    w = watch(aid)
    env_id = publish_fill(w, aid, 1, [fill_ref(origin, title, FILES)])
    await w.wait(lambda: done(w, env_id))
    return edge, w


def requests_for(origin: Any, path: str) -> int:
    return sum(1 for p, _ in origin.requests if p.endswith(path))


async def until_served(edge: Any, title: str, path: str, timeout: float = 20.0) -> list[int]:
    """Fetch until the file is served again; every status seen on the way (never a damaged 200)."""
    seen: list[int] = []
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        status, body = await fetch(edge, title, path)
        seen.append(status)
        if status == 200:
            assert body == FILES[path], "served bytes that are not the manifest's"
            return seen
        assert asyncio.get_running_loop().time() < deadline, f"not served again; statuses {seen[-5:]}"
        await asyncio.sleep(0.05)


def flip_byte(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


async def test_scrub_pass_finds_a_flipped_byte_and_the_set_is_filled_again(
        edge_factory: Any, origin: Any, file_set: Any, keys: Any, watch: Any) -> None:
    edge, _ = await filled_edge(edge_factory, origin, file_set, keys, watch, "sc1", interval_s=0)
    seg = "hls/720p/seg_1.m4s"
    assert await fetch(edge, "sc1", seg) == (200, FILES[seg])
    clean = await edge.ctx.scrub.scrub_pass()
    assert (clean.files, clean.bytes, clean.corrupt) == (len(FILES), SIZE, 0)

    flip_byte(edge.ctx.store.set_dir(("sc1", "v1"), complete=True) / seg, 4096)
    before = requests_for(origin, seg)
    found = await edge.ctx.scrub.scrub_pass()
    assert (found.files, found.corrupt) == (2, 1)  # init.mp4, then seg_1.m4s: the set goes back at once
    assert edge.ctx.metrics.scrub_corrupt.labels("scrub")._value.get() == 1
    # Not served while it is filled again (a miss: 404 here, as this token names no fallback).
    seen = await until_served(edge, "sc1", seg)
    assert set(seen[:-1]) <= {404}, seen
    assert requests_for(origin, seg) == before + 1  # only the damaged file was fetched again
    assert requests_for(origin, "seg_2.m4s") == 1
    row = await edge.ctx.store.get_set(("sc1", "v1"))
    assert row is not None and row.state == "complete" and row.done_bytes == SIZE
    again = await edge.ctx.scrub.scrub_pass()
    assert again.corrupt == 0 and again.files == len(FILES)
    assert edge.ctx.metrics.scrub_files._value.get() == len(FILES) + 2 + len(FILES)
    assert not list(edge.ctx.store.dir.rglob("*.part"))


async def test_the_periodic_scrub_finds_a_deleted_file_and_misses_redirect(
        edge_factory: Any, origin: Any, file_set: Any, keys: Any, watch: Any) -> None:
    edge, _ = await filled_edge(edge_factory, origin, file_set, keys, watch, "sc2", interval_s=0.05)
    seg = "hls/720p/seg_2.m4s"
    (edge.ctx.store.set_dir(("sc2", "v1"), complete=True) / seg).unlink()
    counter = edge.ctx.metrics.scrub_corrupt.labels("scrub")
    deadline = asyncio.get_running_loop().time() + 20
    while counter._value.get() < 1:
        assert asyncio.get_running_loop().time() < deadline, "the periodic scrub did not find the missing file"
        await asyncio.sleep(0.05)
    token = edge.token("sc2", fallbacks=(f"{origin.source('good')}/",))
    async with aiohttp.ClientSession() as s:
        while True:  # while the set fills again, a request is a redirect to the fallback, never an error
            async with s.get(edge.content_url(token, "sc2", seg), allow_redirects=False) as r:
                if r.status == 200:
                    assert await r.read() == FILES[seg]
                    break
                assert r.status == 302 and r.headers["Location"].endswith(f"/sc2/{seg}"), r.status
            assert asyncio.get_running_loop().time() < deadline
            await asyncio.sleep(0.02)


async def test_a_damaged_init_segment_is_caught_on_read_and_never_kept_in_memory(
        edge_factory: Any, origin: Any, file_set: Any, keys: Any, watch: Any) -> None:
    edge, _ = await filled_edge(edge_factory, origin, file_set, keys, watch, "sc3", interval_s=0)
    init = "hls/720p/init.mp4"
    flip_byte(edge.ctx.store.set_dir(("sc3", "v1"), complete=True) / init, 10)
    status, body = await fetch(edge, "sc3", init)
    assert status == 404 and body != FILES[init]
    assert edge.ctx.metrics.scrub_corrupt.labels("read")._value.get() == 1
    assert edge.ctx.server.memory.get(("sc3", "v1", init)) is None
    await until_served(edge, "sc3", init)
    assert edge.ctx.server.memory.get(("sc3", "v1", init)) is not None  # the good copy, now from memory
    assert await fetch(edge, "sc3", init) == (200, FILES[init])
    assert requests_for(origin, init) == 2


async def test_a_damaged_set_outside_the_plan_is_evicted(
        edge_factory: Any, origin: Any, file_set: Any, keys: Any, watch: Any) -> None:
    edge, w = await filled_edge(edge_factory, origin, file_set, keys, watch, "sc4", interval_s=0)
    aid = edge.ctx.config.appliance.id
    env2 = publish_fill(w, aid, 2, [])  # the set is kept beyond the plan (it still serves hits)...
    await w.wait(lambda: done(w, env2))
    assert (await fetch(edge, "sc4", "hls/master.m3u8"))[0] == 200
    flip_byte(edge.ctx.store.set_dir(("sc4", "v1"), complete=True) / "hls/720p/seg_2.m4s", 0)
    found = await edge.ctx.scrub.scrub_pass()
    assert found.corrupt == 1  # ...until it is found damaged: nothing to fill it from, so it goes
    assert await edge.ctx.store.get_set(("sc4", "v1")) is None
    assert (await fetch(edge, "sc4", "hls/master.m3u8"))[0] == 404
    assert not edge.ctx.store.set_dir(("sc4", "v1"), complete=True).exists()
    assert edge.ctx.metrics.evictions.labels("corrupt")._value.get() == 1


async def test_scrub_settings_off(edge_factory: Any, origin: Any, file_set: Any, keys: Any, watch: Any) -> None:
    """interval_s = 0 runs no periodic pass; verify_on_read = false serves what the disk holds."""
    edge, _ = await filled_edge(edge_factory, origin, file_set, keys, watch, "sc5", interval_s=0,
                                verify_on_read=False)
    assert len(edge.ctx.scrub._tasks) == 0 and edge.ctx.server.verify_read is None
    master = "hls/master.m3u8"
    flip_byte(edge.ctx.store.set_dir(("sc5", "v1"), complete=True) / master, 0)
    status, body = await fetch(edge, "sc5", master)
    assert status == 200 and body != FILES[master]
