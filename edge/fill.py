"""The fill agent: makes the cache hold what the control plane's desired state says.

It runs in the agent process only (it owns the index).  Each desired-fill generation replaces the
plan; the loop walks the plan in order, and for each file set not yet complete: waits for the fill
window, fetches and verifies the signed file-set manifest, makes room (evicting only sets outside the
plan, see :mod:`edge.eviction`), reserves the set's size, then fetches missing files with bounded
concurrency and a shared token bucket (:mod:`edge.fetch`).  When every file verified, the set's
directory is renamed under ``sets/`` and only then published to the servers.  Progress and results go
back as acks on the desired-state envelope id.  A new plan interrupts the walk between files.

On start-up the store removes temp files and orphan directories, and this agent re-hashes every file
a filling set had already committed, dropping any that no longer match, so a crash mid-fill (even
SIGKILL) loses at most the files in flight and never serves a partial or unverified file.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import sqlite3
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

import aiohttp

from shared.envelope import Envelope
from shared.errors import InvalidInput, NearcastError
from shared.messages import Ack, DesiredFill, FileSetRef

from .eviction import SetKey, choose_evictions
from .fetch import DiskFull, Fetcher, is_disk_full, verify_file
from .manifest import FileSetManifest, parse_manifest
from .metrics import EdgeMetrics
from .pacing import FillWindow, TokenBucket, bits_to_bytes
from .store import CacheStore

log = logging.getLogger(__name__)

AckSink = Callable[[Ack], Awaitable[None]]


@dataclass(frozen=True)
class FillOptions:
    concurrency: int = 4
    rate_limit_bps: int = 0  # bits/s; 0 is unlimited; desired state may set its own
    window: str = ""
    max_manifest_bytes: int = 8 << 20
    retry_s: float = 30.0
    progress_interval_s: float = 2.0
    eviction_half_life_s: float = 3600.0
    reserve_bytes: int = 0  # kept free on the cache filesystem (index, spool, models)


@dataclass
class SetProgress:
    state: str = "pending"  # pending | waiting_window | filling | done | failed
    bytes: int = 0
    size: int = 0
    reason: str = ""

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"state": self.state, "bytes": self.bytes, "size": self.size}
        if self.reason:
            out["reason"] = self.reason[:300]
        return out


@dataclass
class _Plan:
    env_id: str
    env_type: str
    desired: DesiredFill
    window: FillWindow
    progress: dict[str, SetProgress] = field(default_factory=dict)


class FillAgent:
    def __init__(self, store: CacheStore, metrics: EdgeMetrics, options: FillOptions,
                 public_keys: Mapping[str, bytes], send_ack: AckSink,
                 local_now: Callable[[], datetime] = datetime.now) -> None:
        self.store = store
        self.metrics = metrics
        self.options = options
        self.public_keys = public_keys
        self.send_ack = send_ack
        self.local_now = local_now
        self.bucket = TokenBucket(bits_to_bytes(options.rate_limit_bps))
        self._plan: _Plan | None = None
        self._wake = asyncio.Event()
        self._http: aiohttp.ClientSession | None = None
        self._last_progress = 0.0
        self._busy = False  # the run loop is walking a plan
        self._rerun = False  # walk the plan again once this walk ends (a set needs filling again)
        #: Why fills are stopped for lack of disk ("" when they are not); cleared by a walk without it.
        self.disk_full = ""

    @property
    def planned(self) -> set[SetKey]:
        return {(r.title_id, r.version) for r in self._plan.desired.file_sets} if self._plan else set()

    # -- lifecycle ---------------------------------------------------------------------------------
    async def start(self) -> None:
        self._http = aiohttp.ClientSession(auto_decompress=False)
        await self.reverify_filling()

    async def stop(self) -> None:
        if self._http is not None:
            await self._http.close()
            self._http = None

    async def reverify_filling(self) -> int:
        """Re-hash every committed file of every set that was filling; returns how many were dropped."""
        dropped = 0
        loop = asyncio.get_running_loop()
        for row in await self.store.sets():
            if row.state != "filling":
                continue
            base = self.store.set_dir(row.key, complete=False)
            for path, (size, sha, state) in (await self.store.files(row.key)).items():
                if state != "complete":
                    continue
                target = base / path
                if not await loop.run_in_executor(None, verify_file, target, size, sha):
                    await loop.run_in_executor(None, functools.partial(target.unlink, missing_ok=True))
                    await self.store.file_missing(row.key, path, size)
                    dropped += 1
        if dropped:
            log.warning("start-up: %d file(s) of interrupted fills failed verification and will be refetched",
                        dropped)
        return dropped

    # -- desired state (called by the agent before it acks "accepted") ------------------------------
    async def apply(self, env: Envelope[Any]) -> None:
        body = env.body
        if not isinstance(body, DesiredFill):
            raise InvalidInput("not a desired fill")
        window = FillWindow.parse(body.fill_window or self.options.window)  # bad: the generation is rejected
        if body.rate_limit_bps < 0:
            raise InvalidInput("rate_limit_bps must be >= 0")
        self._plan = _Plan(env.id, env.type, body, window,
                           {f"{r.title_id}/{r.version}": SetProgress(size=r.size) for r in body.file_sets})
        self.bucket.set_rate(bits_to_bytes(body.rate_limit_bps or self.options.rate_limit_bps))
        self._wake.set()

    def refill(self, key: SetKey) -> bool:
        """A set of the current plan lost a file (the scrub found it damaged): walk the plan again.

        Returns False when the set is not in the plan (nobody asked for it: there is nothing to fill).
        The walk is asked for without touching ``_wake`` mid-walk, which a window wait listens to.
        """
        if key not in self.planned:
            return False
        if self._busy:
            self._rerun = True
        else:
            self._wake.set()
        return True

    # -- the loop ----------------------------------------------------------------------------------
    async def run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            plan = self._plan
            if plan is None:
                continue
            self._busy, self._rerun = True, False
            try:
                ok = await self._execute(plan)
            finally:
                self._busy = False
            if self._rerun:
                self._wake.set()
                continue
            if not ok and not self._wake.is_set():
                try:
                    await asyncio.wait_for(self._wake.wait(), self.options.retry_s)
                except TimeoutError:
                    self._wake.set()

    def _superseded(self, plan: _Plan) -> bool:
        return self._plan is not plan

    async def _execute(self, plan: _Plan) -> bool:
        all_ok = True
        disk_full = ""
        refs = plan.desired.file_sets
        self.metrics.fill_queue.set(sum(r.size for r in refs))
        for ref in refs:
            if self._superseded(plan):
                return True
            prog = plan.progress[f"{ref.title_id}/{ref.version}"]
            try:
                await self._fill_set(plan, ref, prog)
                prog.state = "done"
                self.metrics.fill_sets.labels("done").inc()
            except (NearcastError, OSError, sqlite3.Error) as exc:  # none of them may end the fill loop
                if self._superseded(plan):
                    return True
                reason = str(exc)
                if is_disk_full(exc):
                    reason = disk_full = reason if isinstance(exc, DiskFull) else f"disk full: {exc}"[:300]
                elif not isinstance(exc, NearcastError):
                    log.exception("fill of %s/%s: local error", ref.title_id, ref.version)
                    reason = f"local error: {type(exc).__name__}: {exc}"[:300]
                prog.state, prog.reason = "failed", reason
                all_ok = False
                self.metrics.fill_sets.labels("failed").inc()
                log.warning("fill of %s/%s failed: %s", ref.title_id, ref.version, exc)
            await self._report(plan, force=True)
        if self._superseded(plan):
            return True
        await self._set_disk_full(disk_full)
        remaining = sum(p.size - p.bytes for p in plan.progress.values() if p.state != "done")
        self.metrics.fill_queue.set(max(0, remaining))
        failed = {k: p.reason for k, p in plan.progress.items() if p.state == "failed"}
        await self._safe_ack(Ack(plan.env_id, plan.env_type, "failed" if failed else "done", reason="; ".join(
            f"{k}: {r}" for k, r in failed.items())[:500], progress=self._fraction(plan),
            detail=self._detail(plan)))
        return all_ok

    async def _set_disk_full(self, reason: str) -> None:
        was, self.disk_full = self.disk_full, reason
        self.metrics.disk_full.set(1 if reason else 0)
        if reason and not was:
            log.warning("fills stopped: %s", reason)
        elif was and not reason:
            log.info("fills resumed: the cache filesystem has room again")
            await self.store.publish_catalog()  # in case the served map could not be written meanwhile

    async def _check_disk(self, key: SetKey, need: int) -> None:
        """Room on the filesystem itself (the capacity setting may promise more than the disk holds):
        sets outside the plan are evicted for it as for capacity; if that is not enough, DiskFull."""
        if need <= 0:
            return
        loop = asyncio.get_running_loop()
        reserve = self.options.reserve_bytes
        free = await loop.run_in_executor(None, self.store.free_bytes) - reserve
        self.metrics.fs_free.set(free + reserve)
        if free >= need:
            return
        held = [r.held() for r in await self.store.sets() if r.key != key and r.state == "complete"]
        victims = choose_evictions(held, planned=self.planned, capacity=sum(h.size for h in held),
                                   need=need - free, half_life_s=self.options.eviction_half_life_s)
        for victim in victims or []:
            log.info("evicting %s/%s: the cache filesystem has no room for %s/%s", *victim, *key)
            await self.store.evict(victim)
            self.metrics.evictions.labels("disk").inc()
        if victims:
            free = await loop.run_in_executor(None, self.store.free_bytes) - reserve
            self.metrics.fs_free.set(free + reserve)
        if free < need:
            raise DiskFull(f"disk full: {need} bytes to fetch, {max(0, free)} free on the cache filesystem "
                           f"beyond the {reserve} bytes kept in reserve")

    async def _fill_set(self, plan: _Plan, ref: FileSetRef, prog: SetProgress) -> None:
        key = (ref.title_id, ref.version)
        row = await self.store.get_set(key)
        if row is not None and row.state == "complete":
            prog.bytes = prog.size = row.size
            return
        wait = plan.window.seconds_until_open(self.local_now())
        if wait > 0:
            prog.state = "waiting_window"
            await self._report(plan, force=True)
            while wait > 0 and not self._superseded(plan):
                try:  # a new plan wakes us (the run loop clears the event, not us)
                    await asyncio.wait_for(self._wake.wait(), min(wait, 60))
                except TimeoutError:
                    pass
                wait = plan.window.seconds_until_open(self.local_now())
            if self._superseded(plan):
                raise FillError("superseded by a newer plan")
        prog.state = "filling"
        manifest = await self._manifest(ref)
        prog.size = manifest.size
        await self._make_room(key, manifest.size if row is None else manifest.size - row.size)
        await self.store.begin_fill(key, manifest.files)
        self.metrics.disk_used.set(await self.store.used_bytes())
        have = await self.store.files(key)
        todo = [f for f in manifest.files if have.get(f.path, (0, "", "missing"))[2] != "complete"]
        prog.bytes = manifest.size - sum(f.size for f in todo)
        await self._check_disk(key, sum(f.size for f in todo))
        base = self.store.set_dir(key, complete=False)
        sem = asyncio.Semaphore(self.options.concurrency)
        assert self._http is not None
        fetcher = Fetcher(self._http, self.bucket, self.metrics)
        errors: list[Exception] = []

        async def one(entry: Any) -> None:
            async with sem:
                if self._superseded(plan) or errors or not plan.window.is_open(self.local_now()):
                    return
                try:
                    await fetcher.fetch(entry, base / entry.path, ref.sources)
                    await self.store.file_done(key, entry.path, entry.size)
                except (NearcastError, OSError, sqlite3.Error) as exc:  # every file ends: no orphan fetch
                    errors.append(exc)
                    return
                prog.bytes += entry.size
                await self._report(plan)

        await asyncio.gather(*(one(f) for f in todo))
        if errors:
            first = next((e for e in errors if is_disk_full(e)), errors[0])
            if isinstance(first, NearcastError):
                raise first
            if is_disk_full(first):
                raise DiskFull(f"disk full: {first}"[:300]) from first
            raise FillError(f"local error: {type(first).__name__}: {first}"[:300]) from first
        have = await self.store.files(key)
        if any(state != "complete" for _, _, state in have.values()):
            raise FillError("fill interrupted (new plan or fill window closed); will resume")
        await self.store.complete(key)
        log.info("file set %s/%s complete (%d files, %d bytes)", key[0], key[1], len(have), manifest.size)

    async def _manifest(self, ref: FileSetRef) -> FileSetManifest:
        assert self._http is not None
        limit = self.options.max_manifest_bytes
        try:
            timeout = aiohttp.ClientTimeout(total=60, sock_connect=10)
            async with self._http.get(ref.manifest_url, timeout=timeout) as resp:
                if resp.status != 200:
                    raise FillError(f"manifest {ref.manifest_url}: HTTP {resp.status}")
                data = await resp.content.read(limit + 1)
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            raise FillError(f"manifest {ref.manifest_url}: {type(exc).__name__}: {exc}"[:300]) from None
        if len(data) > limit:
            raise FillError(f"manifest {ref.manifest_url} is larger than {limit} bytes")
        return parse_manifest(data, self.public_keys, title_id=ref.title_id, version=ref.version)

    async def _make_room(self, key: SetKey, need: int) -> None:
        if need <= 0:
            return
        served = self.store.catalog.snapshot()  # title -> the one version it serves
        held = [replace(r.held(), superseded=r.state == "complete" and served.get(r.title_id, r.version) != r.version)
                for r in await self.store.sets() if r.key != key]
        victims = choose_evictions(held, planned=self.planned, capacity=self.store.capacity, need=need,
                                   half_life_s=self.options.eviction_half_life_s)
        if victims is None:
            raise FillError(f"no room: {need} bytes needed and everything held is in the plan")
        for victim in victims:
            log.info("evicting %s/%s to make room for %s/%s", *victim, *key)
            await self.store.evict(victim)
            self.metrics.evictions.labels("capacity").inc()

    # -- reporting ---------------------------------------------------------------------------------
    def _fraction(self, plan: _Plan) -> float:
        total = sum(p.size for p in plan.progress.values())
        return 1.0 if total == 0 else min(1.0, sum(p.bytes for p in plan.progress.values()) / total)

    def _detail(self, plan: _Plan) -> dict[str, Any]:
        out: dict[str, Any] = {"generation": plan.desired.generation,
                               "file_sets": {k: p.as_dict() for k, p in plan.progress.items()}}
        if self.disk_full:
            out["stopped"] = self.disk_full
        return out

    async def _report(self, plan: _Plan, *, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last_progress < self.options.progress_interval_s:
            return
        self._last_progress = now
        await self._safe_ack(Ack(plan.env_id, plan.env_type, "progress", progress=self._fraction(plan),
                                 detail=self._detail(plan)))

    async def _safe_ack(self, ack: Ack) -> None:
        try:
            await self.send_ack(ack)
        except NearcastError as exc:  # not connected: the next report carries the news
            log.info("fill ack not sent: %s", exc)


class FillError(NearcastError):
    http_status = 502
