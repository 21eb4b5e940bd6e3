"""A full disk on a real edge: fills stop with a clear status (acks, /healthz, metrics), nothing partial is
left, serving goes on, and fills resume once there is room.  The small filesystem is a real tmpfs of
a few MiB (needs root to mount; skipped with a reason otherwise)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from edge.fetch import DiskFull, Fetcher
from edge.manifest import FileEntry
from edge.metrics import EdgeMetrics
from edge.pacing import TokenBucket
from shared.messages import FillSource
from tests.edge.conftest import fill_ref, publish_fill

SMALL = {"s/master.m3u8": b"#EXTM3U\n", "s/seg_1.m4s": os.urandom(700_000)}
BIG = {f"b/seg_{i}.m4s": os.urandom(500_000) for i in range(4)}  # 2 MB


def mount_tmpfs(where: Path, size: str) -> None:
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs to fill needs root")
    where.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()[:200]}")


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A 4 MiB filesystem of its own, unmounted afterwards whatever happened."""
    where = tmp_path / "small-fs"
    mount_tmpfs(where, "4m")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def final_acks(w: Any, env_id: str) -> list[Any]:
    return [a for a in w.bodies("/acks") if a.command_id == env_id and a.status in ("done", "failed")]


async def get(url: str) -> tuple[int, bytes]:
    async with aiohttp.ClientSession() as s, s.get(url, allow_redirects=False) as r:
        return r.status, await r.read()


async def test_full_disk_stops_fills_with_a_clear_status_and_serving_goes_on(
        small_fs: Path, keys: Any, origin: Any, file_set: Any, watch: Any, edge_factory: Any) -> None:
    file_set(origin.root, keys.signer, "small", "v1", SMALL)
    file_set(origin.root, keys.signer, "big", "v1", BIG)
    # The capacity setting promises far more than the 4 MiB the filesystem holds, as on a shared disk.
    edge = await edge_factory(cache={"dir": str(small_fs / "cache"), "capacity_bytes": 1 << 30,
                                     "reserve_bytes": 64 * 1024},
                              fill={"retry_s": 0.3})
    aid = edge.ctx.config.appliance.id
    w = watch(aid)
    env1 = publish_fill(w, aid, 1, [fill_ref(origin, "small", SMALL)])
    await w.wait(lambda: bool(final_acks(w, env1)))
    assert final_acks(w, env1)[-1].status == "done"
    seg = edge.content_url(edge.token("small"), "small", "s/seg_1.m4s")
    assert await get(seg) == (200, SMALL["s/seg_1.m4s"])

    ballast = small_fs / "ballast"  # someone else's 1.6 MB on the same filesystem
    ballast.write_bytes(b"\0" * 1_600_000)
    env2 = publish_fill(w, aid, 2, [fill_ref(origin, "small", SMALL), fill_ref(origin, "big", BIG)])
    await w.wait(lambda: bool(final_acks(w, env2)))
    ack = final_acks(w, env2)[0]
    assert ack.status == "failed" and "disk full" in ack.reason, ack
    assert ack.detail["file_sets"]["big/v1"]["state"] == "failed"
    assert ack.detail["file_sets"]["small/v1"]["state"] == "done"
    assert ack.detail["stopped"].startswith("disk full: 2000000 bytes to fetch")
    assert not [p for p, _ in origin.requests if p.startswith("/good/big/")]  # nothing fetched to throw away
    assert not list(small_fs.rglob("*.part"))
    async with aiohttp.ClientSession() as s, s.get(f"{edge.url}/healthz") as r:
        health = json.loads(await r.read())
    assert health["status"] == "ok" and health["disk"] == "full" and "disk full" in health["disk_detail"]
    assert edge.ctx.metrics.disk_full._value.get() == 1
    assert await get(seg) == (200, SMALL["s/seg_1.m4s"])  # serving goes on
    assert (await get(edge.content_url(edge.token("big"), "big", "b/seg_0.m4s")))[0] == 404
    retries = len(final_acks(w, env2))
    await w.wait(lambda: len(final_acks(w, env2)) > retries)  # retried after fill.retry_s, still full
    assert final_acks(w, env2)[-1].status == "failed"

    ballast.unlink()  # room again: the next retry fills the set, and the status clears
    await w.wait(lambda: final_acks(w, env2)[-1].status == "done")
    assert edge.ctx.metrics.disk_full._value.get() == 0
    assert "stopped" not in final_acks(w, env2)[-1].detail
    for path, body in BIG.items():
        assert await get(edge.content_url(edge.token("big"), "big", path)) == (200, body)
    async with aiohttp.ClientSession() as s, s.get(f"{edge.url}/healthz") as r:
        assert json.loads(await r.read())["disk"] == "ok"


async def test_sets_outside_the_plan_make_room_on_a_full_filesystem(
        small_fs: Path, keys: Any, origin: Any, file_set: Any, watch: Any, edge_factory: Any) -> None:
    file_set(origin.root, keys.signer, "small", "v1", SMALL)
    file_set(origin.root, keys.signer, "big", "v1", BIG)
    edge = await edge_factory(cache={"dir": str(small_fs / "cache"), "capacity_bytes": 1 << 30,
                                     "reserve_bytes": 64 * 1024})
    aid = edge.ctx.config.appliance.id
    w = watch(aid)
    env1 = publish_fill(w, aid, 1, [fill_ref(origin, "small", SMALL)])
    await w.wait(lambda: bool(final_acks(w, env1)))
    (small_fs / "ballast").write_bytes(b"\0" * 1_600_000)  # big fits only once small is gone
    env2 = publish_fill(w, aid, 2, [fill_ref(origin, "big", BIG)])  # small is no longer planned
    await w.wait(lambda: bool(final_acks(w, env2)))
    assert final_acks(w, env2)[-1].status == "done"
    assert await edge.ctx.store.get_set(("small", "v1")) is None
    assert edge.ctx.metrics.evictions.labels("disk")._value.get() == 1
    assert edge.ctx.metrics.disk_full._value.get() == 0
    path = "b/seg_3.m4s"
    assert await get(edge.content_url(edge.token("big"), "big", path)) == (200, BIG[path])


async def test_enospc_mid_download_stops_at_once_and_keeps_nothing(tmp_path: Path, origin: Any, file_set: Any,
                                                                  keys: Any) -> None:
    """The write itself failing (the free-space check passed, then the disk filled): no other source is
    tried, since none can help, and the temp file goes."""
    where = tmp_path / "tiny-fs"
    mount_tmpfs(where, "256k")
    try:
        body = os.urandom(600_000)
        file_set(origin.root, keys.signer, "e", "v1", {"x.m4s": body})
        entry = FileEntry("x.m4s", len(body), hashlib.sha256(body).hexdigest())
        sources = [FillSource(f"{origin.source('good')}/e/v1", "origin"),
                   FillSource(f"{origin.source('good')}/e/v1", "peer")]
        async with aiohttp.ClientSession() as http:
            fetcher = Fetcher(http, TokenBucket(0), EdgeMetrics())
            with pytest.raises(DiskFull, match="disk full writing x.m4s"):
                await fetcher.fetch(entry, where / "e" / "x.m4s", sources)
        assert [p for p, _ in origin.requests] == ["/good/e/v1/x.m4s"]  # one source only
        assert not list(where.rglob("*.m4s*"))
    finally:
        await asyncio.get_running_loop().run_in_executor(
            None, lambda: subprocess.run(["umount", "-l", str(where)], check=False))
