"""SQLite from async code: one writer thread, a few reader threads, never the event loop.

Writes are callables run on the single writer thread inside ``BEGIN IMMEDIATE`` and awaited as
futures, so they are serialised without lock contention and a failing write rolls back alone.
Reads run on a small pool of threads, each with its own connection (WAL lets them read while the
writer writes).  Callables receive a :class:`sqlite_utils.Database`.  Schema changes are versioned
migrations applied once, in order, at open (``PRAGMA user_version``).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import queue
import sqlite3
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import sqlite_utils

log = logging.getLogger(__name__)

T = TypeVar("T")
Migration = Callable[[sqlite_utils.Database], None]

_STOP = object()


def connect(path: Path | str, *, busy_timeout_ms: int = 5000) -> sqlite_utils.Database:
    conn = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
    conn.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
    conn.execute("PRAGMA foreign_keys=ON")
    if str(path) != ":memory:":
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
    return sqlite_utils.Database(conn)


def migrate(db: sqlite_utils.Database, migrations: Sequence[Migration]) -> int:
    """Apply the migrations after ``PRAGMA user_version``; returns the new version."""
    version = int(db.execute("PRAGMA user_version").fetchone()[0])
    if version > len(migrations):
        raise RuntimeError(f"database schema v{version} is newer than this software (v{len(migrations)})")
    for number, step in enumerate(migrations[version:], start=version + 1):
        db.execute("BEGIN IMMEDIATE")
        try:
            step(db)
            db.execute(f"PRAGMA user_version={number}")
            db.execute("COMMIT")
        except BaseException:
            _rollback(db)
            raise
        log.info("database migrated to v%d", number)
    return len(migrations)


def _rollback(db: sqlite_utils.Database) -> None:
    """Roll back what is still open.  SQLite has already rolled back on some errors (SQLITE_FULL on a full
    disk, SQLITE_IOERR, SQLITE_NOMEM); a ROLLBACK then fails with 'no transaction is active', which would
    replace the error that says what went wrong."""
    if db.conn.in_transaction:
        db.execute("ROLLBACK")


class Database:
    """The one door to a SQLite file for async code."""

    def __init__(self, path: Path, migrations: Sequence[Migration] = (), *, readers: int = 2) -> None:
        self.path = path
        self._migrations = migrations
        self._writes: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._writer: threading.Thread | None = None
        self._readers = concurrent.futures.ThreadPoolExecutor(max_workers=readers,
                                                              thread_name_prefix=f"sqlite-read:{path.name}")
        self._local = threading.local()
        self._read_conns: list[sqlite_utils.Database] = []
        self._conns_lock = threading.Lock()
        self._opened = threading.Event()
        self._open_error: BaseException | None = None

    async def open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._writer = threading.Thread(target=self._write_loop, name=f"sqlite-write:{self.path.name}", daemon=True)
        self._writer.start()
        await asyncio.get_running_loop().run_in_executor(None, self._opened.wait)
        if self._open_error is not None:
            raise self._open_error

    async def close(self) -> None:
        if self._writer is not None:
            self._writes.put(_STOP)
            await asyncio.get_running_loop().run_in_executor(None, self._writer.join)
            self._writer = None
        self._readers.shutdown(wait=True)
        with self._conns_lock:
            for conn in self._read_conns:
                conn.conn.close()
            self._read_conns.clear()

    async def write(self, fn: Callable[[sqlite_utils.Database], T]) -> T:
        """Run ``fn`` on the writer thread inside one IMMEDIATE transaction."""
        if self._writer is None:
            raise RuntimeError("database is not open")
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[T] = loop.create_future()
        self._writes.put((fn, loop, fut))
        return await fut

    async def read(self, fn: Callable[[sqlite_utils.Database], T]) -> T:
        """Run ``fn`` on a reader thread with its own connection."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._readers, self._run_read, fn)

    def _run_read(self, fn: Callable[[sqlite_utils.Database], T]) -> T:
        conn: sqlite_utils.Database | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = connect(self.path)
            self._local.conn = conn
            with self._conns_lock:
                self._read_conns.append(conn)
        return fn(conn)

    def _write_loop(self) -> None:
        try:
            db = connect(self.path)
            migrate(db, self._migrations)
        except BaseException as exc:
            self._open_error = exc
            self._opened.set()
            return
        self._opened.set()
        try:
            while True:
                item = self._writes.get()
                if item is _STOP:
                    break
                fn, loop, fut = item
                try:
                    db.execute("BEGIN IMMEDIATE")
                    try:
                        result = fn(db)
                        db.execute("COMMIT")
                    except BaseException:
                        _rollback(db)
                        raise
                except BaseException as exc:
                    loop.call_soon_threadsafe(_set_exception, fut, exc)
                else:
                    loop.call_soon_threadsafe(_set_result, fut, result)
        finally:
            db.conn.close()


def _set_result(fut: asyncio.Future[Any], value: Any) -> None:
    if not fut.done():
        fut.set_result(value)


def _set_exception(fut: asyncio.Future[Any], exc: BaseException) -> None:
    if not fut.done():
        fut.set_exception(exc)
