from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest
import sqlite_utils

from shared.db import Database


def _v1(db: sqlite_utils.Database) -> None:
    db["items"].create({"id": int, "name": str}, pk="id")


def _v2(db: sqlite_utils.Database) -> None:
    db["items"].add_column("size", int)


async def test_writes_are_serialised_on_one_thread_and_reads_see_them(tmp_path: Path) -> None:
    db = Database(tmp_path / "x.db", [_v1, _v2])
    await db.open()
    loop_thread = threading.get_ident()
    threads: set[int] = set()

    def insert(i: int) -> object:
        def fn(conn: sqlite_utils.Database) -> None:
            threads.add(threading.get_ident())
            conn["items"].insert({"id": i, "name": f"n{i}", "size": i})
        return fn

    await asyncio.gather(*(db.write(insert(i)) for i in range(200)))  # type: ignore[arg-type]
    assert len(threads) == 1 and loop_thread not in threads
    count = await db.read(lambda c: c["items"].count)
    assert count == 200
    assert await db.read(lambda c: c.execute("PRAGMA journal_mode").fetchone()[0]) == "wal"
    await db.close()


async def test_a_failing_write_rolls_back_alone(tmp_path: Path) -> None:
    db = Database(tmp_path / "x.db", [_v1, _v2])
    await db.open()

    def bad(conn: sqlite_utils.Database) -> None:
        conn["items"].insert({"id": 1, "name": "a", "size": 1})
        raise ValueError("nope")

    with pytest.raises(ValueError, match="nope"):
        await db.write(bad)
    await db.write(lambda c: c["items"].insert({"id": 2, "name": "b", "size": 2}))
    assert await db.read(lambda c: [r["id"] for r in c["items"].rows]) == [2]
    await db.close()


async def test_migrations_apply_once_and_refuse_a_newer_schema(tmp_path: Path) -> None:
    path = tmp_path / "x.db"
    db = Database(path, [_v1])
    await db.open()
    await db.close()
    db = Database(path, [_v1, _v2])  # upgrade applies only v2
    await db.open()
    assert await db.read(lambda c: "size" in c["items"].columns_dict)
    await db.close()
    old = Database(path, [_v1])
    with pytest.raises(RuntimeError, match="newer than this software"):
        await old.open()
    await old.close()


async def test_a_full_disk_fails_the_write_with_its_own_error_and_the_database_goes_on(tmp_path: Path) -> None:
    """SQLite rolls a transaction back itself on SQLITE_FULL; the writer must not hide that error behind a
    'cannot rollback' of its own, and must keep working once there is room again (a real 1 MiB tmpfs)."""
    import os
    import sqlite3
    import subprocess

    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs to fill needs root")
    where = tmp_path / "tiny"
    where.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(where)], capture_output=True,
                          text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()[:200]}")
    try:
        ballast = where / "ballast"
        ballast.write_bytes(b"\0" * 600_000)
        db = Database(where / "x.db", [_v1, _v2])
        await db.open()
        with pytest.raises(sqlite3.OperationalError, match="database or disk is full"):
            for i in range(1000):
                await db.write(lambda c, i=i: c["items"].insert({"id": i, "name": "x" * 20_000, "size": i}))
        ballast.unlink()
        await db.write(lambda c: c["items"].insert({"id": 10_000, "name": "after", "size": 0}))
        names = await db.read(lambda c: [r["name"] for r in c["items"].rows_where("id = 10000")])
        assert names == ["after"]
        await db.close()
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)
