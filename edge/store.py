"""The cache store: file sets on disk, indexed in SQLite, with capacity accounting.

Layout under ``cache.dir``::

    index.db                      the index (shared.db: WAL, one writer thread)
    served.json                   title → served version, for the serving workers (edge.catalog)
    fill/<title>/<version>/...    a set being filled; files land here by temp + fsync + rename
    sets/<title>/<version>/...    complete sets only: the fill directory is renamed here once every
                                  file verified, so nothing under sets/ is ever partial

Capacity is accounted by declared sizes: a set reserves its whole size when its fill begins, and a
file is only kept when its size and sha256 match the manifest, so the bytes on disk never exceed what
was reserved.  Eviction decisions are :mod:`edge.eviction`'s; this module carries them out.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import shutil
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlite_utils

from shared.db import Database
from shared.errors import Conflict

from .catalog import Catalog
from .eviction import HeldSet, SetKey
from .manifest import FileEntry

log = logging.getLogger(__name__)

PART_SUFFIX = ".part"


def _v1(db: sqlite_utils.Database) -> None:
    db.table("file_sets").create({"title_id": str, "version": str, "state": str, "size": int, "done_bytes": int,
                            "hits": int, "last_access": float, "created": float, "completed": float},
                           pk=("title_id", "version"))
    db.table("files").create({"title_id": str, "version": str, "path": str, "size": int, "sha256": str,
                        "state": str}, pk=("title_id", "version", "path"))


MIGRATIONS = [_v1]


@dataclass(frozen=True)
class SetRow:
    title_id: str
    version: str
    state: str  # filling | complete
    size: int
    done_bytes: int
    hits: int
    last_access: float

    @property
    def key(self) -> SetKey:
        return (self.title_id, self.version)

    def held(self) -> HeldSet:
        return HeldSet(self.key, self.size, self.hits, self.last_access, self.state == "complete")


def _row(r: dict[str, Any]) -> SetRow:
    return SetRow(r["title_id"], r["version"], r["state"], r["size"], r["done_bytes"], r["hits"],
                  r["last_access"])


class CacheStore:
    def __init__(self, cache_dir: Path, capacity: int, catalog: Catalog) -> None:
        self.dir = cache_dir
        self.capacity = capacity
        self.catalog = catalog
        self.fill_dir = cache_dir / "fill"
        self.sets_dir = cache_dir / "sets"
        self.db = Database(cache_dir / "index.db", MIGRATIONS)
        self._pending_hits: dict[SetKey, tuple[int, float]] = {}
        #: Held while a set's directory moves between fill/ and sets/ (complete, evict, mark_corrupt).
        self._moves = asyncio.Lock()

    async def open(self) -> None:
        for d in (self.fill_dir, self.sets_dir):
            d.mkdir(parents=True, exist_ok=True)
        await self.db.open()

    async def close(self) -> None:
        await self.flush_hits()
        await self.db.close()

    # -- reads -------------------------------------------------------------------------------------
    async def sets(self) -> list[SetRow]:
        return await self.db.read(lambda db: [_row(r) for r in db["file_sets"].rows])

    async def get_set(self, key: SetKey) -> SetRow | None:
        rows = await self.db.read(lambda db: list(db["file_sets"].rows_where(
            "title_id = ? and version = ?", list(key))))
        return _row(rows[0]) if rows else None

    async def files(self, key: SetKey) -> dict[str, tuple[int, str, str]]:
        """path → (size, sha256, state) for a set."""
        rows = await self.db.read(lambda db: list(db["files"].rows_where(
            "title_id = ? and version = ?", list(key))))
        return {r["path"]: (r["size"], r["sha256"], r["state"]) for r in rows}

    async def count_by_state(self) -> dict[str, int]:
        rows = await self.db.read(lambda db: db.execute(
            "select state, count(*) from file_sets group by state").fetchall())
        return {"filling": 0, "complete": 0, **{str(s): int(n) for s, n in rows}}

    async def used_bytes(self) -> int:
        return int(await self.db.read(
            lambda db: db.execute("select coalesce(sum(size), 0) from file_sets").fetchone()[0]))

    def free_bytes(self) -> int:
        """Blocking (call from a thread): bytes the cache's user may still write on its filesystem."""
        st = os.statvfs(self.dir)
        return st.f_bavail * st.f_frsize

    def set_dir(self, key: SetKey, *, complete: bool) -> Path:
        return (self.sets_dir if complete else self.fill_dir) / key[0] / key[1]

    # -- writes ------------------------------------------------------------------------------------
    async def begin_fill(self, key: SetKey, files: Iterable[FileEntry]) -> None:
        """Reserve the set's whole size and record its files (the caller made room first)."""
        entries = list(files)
        size = sum(f.size for f in entries)
        now = time.time()

        def write(db: sqlite_utils.Database) -> None:
            used = db.execute("select coalesce(sum(size), 0) from file_sets where not "
                              "(title_id = ? and version = ?)", list(key)).fetchone()[0]
            if used + size > self.capacity:
                raise CapacityExceeded(f"{key[0]}/{key[1]} needs {size} bytes; {self.capacity - used} free")
            existing = list(db["file_sets"].rows_where("title_id = ? and version = ?", list(key)))
            if not existing:
                db.table("file_sets").insert({"title_id": key[0], "version": key[1], "state": "filling", "size": size,
                                        "done_bytes": 0, "hits": 0, "last_access": now, "created": now,
                                        "completed": 0.0})
            db.table("files").insert_all(({"title_id": key[0], "version": key[1], "path": f.path, "size": f.size,
                                     "sha256": f.sha256, "state": "missing"} for f in entries), ignore=True)

        await self.db.write(write)
        await asyncio.get_running_loop().run_in_executor(
            None, lambda: self.set_dir(key, complete=False).mkdir(parents=True, exist_ok=True))

    async def file_done(self, key: SetKey, path: str, size: int) -> None:
        def write(db: sqlite_utils.Database) -> None:
            cur = db.execute("update files set state = 'complete' where title_id = ? and version = ? "
                             "and path = ? and state != 'complete'", [key[0], key[1], path])
            if cur.rowcount:
                db.execute("update file_sets set done_bytes = done_bytes + ? where title_id = ? and "
                           "version = ?", [size, key[0], key[1]])

        await self.db.write(write)

    async def file_missing(self, key: SetKey, path: str, size: int) -> None:
        def write(db: sqlite_utils.Database) -> None:
            cur = db.execute("update files set state = 'missing' where title_id = ? and version = ? "
                             "and path = ? and state = 'complete'", [key[0], key[1], path])
            if cur.rowcount:
                db.execute("update file_sets set done_bytes = done_bytes - ? where title_id = ? and "
                           "version = ?", [size, key[0], key[1]])

        await self.db.write(write)

    async def complete(self, key: SetKey) -> None:
        """Move the verified set under sets/ (one rename), mark it complete, then publish it to servers."""
        src, dst = self.set_dir(key, complete=False), self.set_dir(key, complete=True)

        def move() -> None:
            dst.parent.mkdir(parents=True, exist_ok=True)
            if dst.exists():
                shutil.rmtree(dst)
            os.rename(src, dst)
            _fsync_dir(dst.parent)

        async with self._moves:
            await asyncio.get_running_loop().run_in_executor(None, move)
            await self.db.write(lambda db: db.execute(
                "update file_sets set state = 'complete', completed = ? where title_id = ? and version = ?",
                [time.time(), key[0], key[1]]))
            await self.publish_catalog()

    async def evict(self, key: SetKey) -> None:
        """Stop serving first, then forget, then delete: a reader never sees a half-deleted set."""
        async with self._moves:
            served = self.catalog.snapshot()
            if served.get(key[0]) == key[1]:
                await self.publish_catalog(exclude={key})

            await self.db.write(functools.partial(_delete_set, key=key))
            await asyncio.get_running_loop().run_in_executor(None, self._remove_dirs, key)
            await self.publish_catalog()

    async def mark_corrupt(self, key: SetKey, path: str) -> bool:
        """A file of a complete set failed verification: stop serving the set and put it back to filling.

        Servers stop first (the catalog drops the set, so requests miss and are redirected), then the
        index records the set filling and the file missing, then the directory moves back under fill/
        and the damaged file goes; the fill agent re-fetches it and completes the set as any fill.  A
        crash in between is what :meth:`recover` already handles (a filling set found under sets/ is
        moved back, and its files re-verified).  Returns False when the set is not complete any more
        (evicted, or already being repaired).
        """
        async with self._moves:
            row = await self.get_set(key)
            if row is None or row.state != "complete":
                return False
            await self.publish_catalog(exclude={key})
            if not await self.db.write(functools.partial(_mark_corrupt, key=key, path=path)):
                await self.publish_catalog()
                return False
            await asyncio.get_running_loop().run_in_executor(None, self._move_back, key, path)
            await self.publish_catalog()
            return True

    def _move_back(self, key: SetKey, path: str) -> None:
        src, dst = self.set_dir(key, complete=True), self.set_dir(key, complete=False)
        if dst.exists():
            shutil.rmtree(dst)
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.is_dir():
            os.rename(src, dst)
            _fsync_dir(dst.parent)
            _fsync_dir(src.parent)
        else:
            dst.mkdir(parents=True, exist_ok=True)
        (dst / path).unlink(missing_ok=True)

    def _remove_dirs(self, key: SetKey) -> None:
        for complete in (True, False):
            d = self.set_dir(key, complete=complete)
            shutil.rmtree(d, ignore_errors=True)
            try:
                d.parent.rmdir()
            except OSError:
                pass

    async def publish_catalog(self, exclude: set[SetKey] | None = None) -> None:
        """Serve, per title, the most recently completed version."""
        exclude = exclude or set()
        rows = await self.db.read(lambda db: list(db.execute(
            "select title_id, version from file_sets where state = 'complete' order by completed").fetchall()))
        served = {t: v for t, v in rows if (t, v) not in exclude}
        await asyncio.get_running_loop().run_in_executor(None, self.catalog.publish, served)

    # -- popularity --------------------------------------------------------------------------------
    def record_hit(self, key: SetKey, now: float | None = None) -> None:
        hits, _ = self._pending_hits.get(key, (0, 0.0))
        self._pending_hits[key] = (hits + 1, time.time() if now is None else now)

    async def flush_hits(self) -> None:
        pending, self._pending_hits = self._pending_hits, {}
        if not pending:
            return

        def write(db: sqlite_utils.Database) -> None:
            for (title, version), (hits, last) in pending.items():
                db.execute("update file_sets set hits = hits + ?, last_access = max(last_access, ?) "
                           "where title_id = ? and version = ?", [hits, last, title, version])

        await self.db.write(write)

    # -- start-up recovery -------------------------------------------------------------------------
    async def recover(self) -> dict[str, int]:
        """Bring disk and index back into agreement after a crash; returns what it did.

        Temp files go; a set recorded complete whose directory is gone is forgotten; a set recorded
        filling whose directory already reached sets/ (crash between rename and commit) is moved back to
        be re-verified; directories the index does not know are removed.  File re-verification of
        filling sets is the fill agent's job (it has the digests at hand and a rate limit).
        """
        rows = await self.sets()
        known = {r.key: r for r in rows}
        loop = asyncio.get_running_loop()
        stats, forget = await loop.run_in_executor(None, self._recover_disk, known)
        for key in forget:
            await self.db.write(functools.partial(_delete_set, key=key))
        await self.publish_catalog()
        return stats

    def _recover_disk(self, known: dict[SetKey, SetRow]) -> tuple[dict[str, int], list[SetKey]]:
        stats = {"temp_files_removed": 0, "orphans_removed": 0, "sets_forgotten": 0, "moved_back": 0}
        forget: list[SetKey] = []
        for key, row in known.items():
            fill, done = self.set_dir(key, complete=False), self.set_dir(key, complete=True)
            if row.state == "filling" and done.is_dir():
                if fill.exists():
                    shutil.rmtree(fill)
                fill.parent.mkdir(parents=True, exist_ok=True)
                os.rename(done, fill)
                stats["moved_back"] += 1
            elif row.state == "complete" and not done.is_dir():
                forget.append(key)
                stats["sets_forgotten"] += 1
        for base, state in ((self.fill_dir, "filling"), (self.sets_dir, "complete")):
            for title_dir in list(base.iterdir()) if base.is_dir() else []:
                for version_dir in list(title_dir.iterdir()) if title_dir.is_dir() else [title_dir]:
                    found = known.get((title_dir.name, version_dir.name))
                    if found is None or found.state != state:
                        _remove(version_dir)
                        stats["orphans_removed"] += 1
                if title_dir.is_dir() and not any(title_dir.iterdir()):
                    title_dir.rmdir()
        for dirpath, _dirs, names in os.walk(self.fill_dir):
            for name in names:
                if name.endswith(PART_SUFFIX):
                    os.unlink(os.path.join(dirpath, name))
                    stats["temp_files_removed"] += 1
        return stats, forget


def _mark_corrupt(db: sqlite_utils.Database, key: SetKey, path: str) -> bool:
    cur = db.execute("update file_sets set state = 'filling' where title_id = ? and version = ? and "
                     "state = 'complete'", list(key))
    if not cur.rowcount:
        return False
    found = db.execute("select size from files where title_id = ? and version = ? and path = ? and "
                       "state = 'complete'", [*key, path]).fetchone()
    if found is not None:
        db.execute("update files set state = 'missing' where title_id = ? and version = ? and path = ?",
                   [*key, path])
        db.execute("update file_sets set done_bytes = done_bytes - ? where title_id = ? and version = ?",
                   [found[0], *key])
    return True


def _delete_set(db: sqlite_utils.Database, key: SetKey) -> None:
    db.execute("delete from files where title_id = ? and version = ?", list(key))
    db.execute("delete from file_sets where title_id = ? and version = ?", list(key))


class CapacityExceeded(Conflict):
    """Reserving a set would exceed the disk budget."""


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
