"""The cache store: capacity reservation, recovery of disk and index after a crash, the served map."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from edge.catalog import Catalog
from edge.manifest import FileEntry
from edge.store import CacheStore, CapacityExceeded


def entry(path: str, body: bytes) -> FileEntry:
    return FileEntry(path, len(body), hashlib.sha256(body).hexdigest())


async def test_reservation_respects_capacity(tmp_path: Path) -> None:
    store = CacheStore(tmp_path, 1000, Catalog(tmp_path))
    await store.open()
    try:
        await store.begin_fill(("a", "v1"), [entry("x", b"1" * 600)])
        with pytest.raises(CapacityExceeded):
            await store.begin_fill(("b", "v1"), [entry("x", b"1" * 500)])
        assert await store.used_bytes() == 600
        await store.begin_fill(("a", "v1"), [entry("x", b"1" * 600)])  # idempotent for the same set
        assert await store.used_bytes() == 600
    finally:
        await store.close()


async def test_recovery_after_a_crash(tmp_path: Path) -> None:
    catalog = Catalog(tmp_path)
    store = CacheStore(tmp_path, 10_000, catalog)
    await store.open()
    await store.begin_fill(("done", "v1"), [entry("a.m4s", b"a")])
    (store.set_dir(("done", "v1"), complete=False) / "a.m4s").write_bytes(b"a")
    await store.file_done(("done", "v1"), "a.m4s", 1)
    await store.complete(("done", "v1"))
    assert json.loads((tmp_path / "served.json").read_text()) == {"done": "v1"}
    await store.begin_fill(("half", "v1"), [entry("a.m4s", b"a"), entry("b.m4s", b"b")])
    (store.set_dir(("half", "v1"), complete=False) / "b.m4s.part").write_bytes(b"")
    # a crash between the directory rename and the index update:
    await store.begin_fill(("torn", "v1"), [entry("a.m4s", b"a")])
    store.set_dir(("torn", "v1"), complete=True).parent.mkdir(parents=True)
    store.set_dir(("torn", "v1"), complete=False).rename(store.set_dir(("torn", "v1"), complete=True))
    await store.close()
    (tmp_path / "sets" / "stranger" / "v9").mkdir(parents=True)  # unknown to the index

    store = CacheStore(tmp_path, 10_000, Catalog(tmp_path))
    await store.open()
    try:
        stats = await store.recover()
        assert stats == {"temp_files_removed": 1, "orphans_removed": 1, "sets_forgotten": 0, "moved_back": 1}
        assert store.catalog.snapshot() == {"done": "v1"}  # torn and half are not served
        assert store.set_dir(("torn", "v1"), complete=False).is_dir()
        assert not (tmp_path / "sets" / "stranger").exists()
    finally:
        await store.close()


def test_worker_catalog_follows_the_file_and_survives_damage(tmp_path: Path) -> None:
    agent, worker = Catalog(tmp_path), Catalog(tmp_path, refresh_s=0)
    agent.publish({"t1": "v1"})
    worker.refresh(now=1.0)
    assert worker.get("t1") == "v1"
    (tmp_path / "served.json").write_text('{"../x": "v1"}')
    worker.refresh(now=2.0)
    assert worker.snapshot() == {"t1": "v1"}  # damaged: keep the last good map
    (tmp_path / "served.json").unlink()
    worker.refresh(now=3.0)
    assert worker.get("t1") is None
