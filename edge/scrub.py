"""The scrub: finds cached files that no longer match their manifest digest and has them filled again.

A disk that flips a bit, a file truncated by an operator's hand or a failing sector would otherwise be
served for as long as the set is held: every file was verified once, on fill, and never again.  The
scrub walks every complete file set at a bounded rate (``scrub.rate_bytes_s``, so it never competes
with serving for the disk), re-hashing each file against the sha256 its manifest gave, with a pause
of ``scrub.interval_s`` between passes.  Manifests and init segments are also checked when they are
read into memory (``scrub.verify_on_read``), which costs one hash of a small file per memory miss.

A damaged or missing file sends its whole set back to filling (:meth:`CacheStore.mark_corrupt`:
servers stop first, so requests for the title miss and are redirected to the next source, as for any
file not held), and the fill agent fetches what is missing and publishes the set again once every file
verified.  A set outside the current plan has no sources to fill from: it is evicted instead.

Hashing runs on one thread of the scrub's own, a chunk at a time, so the loop never blocks and the
rate limit is applied between chunks.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, cast

from shared.tasks import TaskGroup

from .config import ScrubSettings
from .eviction import SetKey
from .fill import FillAgent
from .memcache import Key, MemoryCache
from .metrics import EdgeMetrics
from .pacing import TokenBucket
from .store import CacheStore

log = logging.getLogger(__name__)

CHUNK = 256 * 1024


@dataclass
class PassResult:
    files: int = 0
    bytes: int = 0
    corrupt: int = 0


class Scrubber:
    def __init__(self, store: CacheStore, fill: FillAgent, metrics: EdgeMetrics, settings: ScrubSettings,
                 memory: MemoryCache | None = None) -> None:
        self.store = store
        self.fill = fill
        self.metrics = metrics
        self.settings = settings
        self.memory = memory
        self.bucket = TokenBucket(settings.rate_bytes_s, burst_s=0.25)
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None
        self._tasks = TaskGroup("scrub")
        self._repairing: set[SetKey] = set()

    # -- lifecycle ---------------------------------------------------------------------------------
    def start(self) -> None:
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="scrub")
        if self.settings.interval_s > 0:
            self._tasks.spawn(self.run(), name="passes")

    async def stop(self) -> None:
        await self._tasks.aclose()
        if self._pool is not None:
            pool, self._pool = self._pool, None
            await asyncio.get_running_loop().run_in_executor(None, pool.shutdown)

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.settings.interval_s)
            try:
                result = await self.scrub_pass()
            except asyncio.CancelledError:
                raise
            except Exception:  # a failing disk or index must not end the scrub for good
                log.exception("scrub pass failed; trying again after the interval")
                continue
            if result.corrupt:
                log.warning("scrub pass: %d of %d file(s) damaged, sent back to filling", result.corrupt,
                            result.files)

    # -- checking ----------------------------------------------------------------------------------
    async def scrub_pass(self) -> PassResult:
        """Re-hash every file of every complete set once; returns what was checked and found."""
        result = PassResult()
        for row in sorted(await self.store.sets(), key=lambda r: r.key):
            if row.state != "complete":
                continue
            files = await self.store.files(row.key)
            for path in sorted(files):
                size, sha256, state = files[path]
                if state != "complete":
                    continue
                ok, nbytes = await self.check_file(row.key, path, size, sha256)
                result.files += 1
                result.bytes += nbytes
                if not ok:
                    result.corrupt += 1
                    await self.repair(row.key, path, "scrub")
                    break  # the rest of the set is re-checked when the fill completes it again
        self.metrics.scrub_passes.inc()
        return result

    async def check_file(self, key: SetKey, path: str, size: int, sha256: str) -> tuple[bool, int]:
        """(matches, bytes read) for one file of a complete set, hashed a chunk at a time off the loop."""
        pool = self._pool
        if pool is None:
            raise RuntimeError("the scrub is not started")
        loop = asyncio.get_running_loop()
        target = self.store.set_dir(key, complete=True) / path
        try:
            fh = await loop.run_in_executor(pool, _open, target)
        except OSError:
            self.metrics.scrub_files.inc()
            return False, 0
        h = hashlib.sha256()
        n = 0
        try:
            while True:
                chunk = await loop.run_in_executor(pool, _update, fh, h)
                if not chunk:
                    break
                n += chunk
                self.metrics.scrub_bytes.inc(chunk)
                if n > size:
                    break
                await self.bucket.take(chunk)
        except OSError as exc:
            log.warning("scrub: cannot read %s: %s", target, exc)
            return False, n
        finally:
            await loop.run_in_executor(pool, fh.close)
        self.metrics.scrub_files.inc()
        return n == size and h.hexdigest() == sha256, n

    async def verify_read(self, key: Key, digest: str) -> bool:
        """For the server: a small file just read; False (and a repair) if it is not the manifest's."""
        title, version, path = key
        try:
            expected = (await self.store.files((title, version))).get(path)
        except Exception:
            log.exception("verify on read: index lookup failed for %s/%s/%s; serving", title, version, path)
            return True
        if expected is None or expected[1] == digest:
            return True  # not in the index any more (evicted meanwhile): the catalog no longer serves it
        self.metrics.scrub_corrupt.labels("read").inc()
        if (title, version) not in self._repairing:
            self._repairing.add((title, version))
            self._tasks.spawn(self._repair_after_read((title, version), path), name=f"repair {title}/{version}")
        return False

    async def _repair_after_read(self, key: SetKey, path: str) -> None:
        try:
            await self._send_back(key, path)
        finally:
            self._repairing.discard(key)

    # -- repairing ---------------------------------------------------------------------------------
    async def repair(self, key: SetKey, path: str, found_by: str) -> None:
        """Count a damaged file found by the scrub and send its set back to filling (or evict it)."""
        self.metrics.scrub_corrupt.labels(found_by).inc()
        await self._send_back(key, path)

    async def _send_back(self, key: SetKey, path: str) -> None:
        log.warning("cached file %s/%s/%s does not match its manifest digest", *key, path)
        if self.memory is not None:
            self.memory.drop_set(*key)
        if key not in self.fill.planned:
            log.warning("evicting %s/%s: damaged and not in the plan, so there is nothing to fill it from", *key)
            await self.store.evict(key)
            self.metrics.evictions.labels("corrupt").inc()
            return
        if await self.store.mark_corrupt(key, path):
            self.fill.refill(key)


def _open(path: Path) -> BinaryIO:
    return cast(BinaryIO, open(path, "rb"))


def _update(fh: BinaryIO, h: hashlib._Hash) -> int:
    chunk = fh.read(CHUNK)
    h.update(chunk)
    return len(chunk)
