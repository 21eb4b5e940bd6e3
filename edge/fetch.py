"""Fetching one file of a file set from a ranked list of sources, verified and written atomically.

A file is written to ``<name>.part`` in the set's fill directory, hashed as it arrives, fsynced and
renamed to its name only when size and sha256 match the manifest.  An interrupted transfer resumes
from the bytes already in the temp file with a ``Range`` request (the part is re-hashed first, so the
digest still covers every byte); a server that ignores the range starts the file over.  A corrupt file
or an HTTP error moves on to the next source; nothing unverified ever gets its final name.  A full
disk (ENOSPC, EDQUOT) is no source's fault: the temp file goes and :class:`DiskFull` stops the fetch.
"""

from __future__ import annotations

import asyncio
import errno
import hashlib
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, cast

import aiohttp

from shared.errors import NearcastError
from shared.messages import FillSource

from .manifest import FileEntry
from .metrics import EdgeMetrics
from .pacing import TokenBucket
from .store import PART_SUFFIX

log = logging.getLogger(__name__)

READ_CHUNK = 64 * 1024
RESUME_ATTEMPTS = 3


class FetchFailed(NearcastError):
    """No source delivered a verified copy of a file."""

    http_status = 502


class DiskFull(NearcastError):
    """The cache filesystem has no room for what a fill must write: a local condition, not the source's."""

    http_status = 507


#: Write errors that mean "no room here" (a full filesystem, or the cache user's quota).
DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})


def is_disk_full(exc: BaseException) -> bool:
    """An OSError for a full disk, or SQLite's word for the same (the index lives on the cache disk)."""
    if isinstance(exc, DiskFull):
        return True
    if isinstance(exc, OSError):
        return exc.errno in DISK_FULL_ERRNOS
    return "database or disk is full" in str(exc)


class _Corrupt(Exception):
    pass


class _Interrupted(Exception):
    pass


@dataclass(frozen=True)
class FetchResult:
    source: str
    resumed: bool


def file_url(base: str, path: str) -> str:
    return f"{base.rstrip('/')}/{path}"


def _hash_file(path: Path) -> tuple[hashlib._Hash, int]:
    h = hashlib.sha256()
    n = 0
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            h.update(chunk)
            n += len(chunk)
    return h, n


def verify_file(path: Path, size: int, sha256: str) -> bool:
    """Blocking: does the file on disk match the manifest entry?"""
    try:
        h, n = _hash_file(path)
    except OSError:
        return False
    return n == size and h.hexdigest() == sha256


class Fetcher:
    def __init__(self, http: aiohttp.ClientSession, bucket: TokenBucket, metrics: EdgeMetrics) -> None:
        self.http = http
        self.bucket = bucket
        self.metrics = metrics

    async def fetch(self, entry: FileEntry, final: Path, sources: Sequence[FillSource]) -> FetchResult:
        """Fetch ``entry`` to ``final`` from the first source that delivers it intact."""
        part = final.with_name(final.name + PART_SUFFIX)
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, lambda: final.parent.mkdir(parents=True, exist_ok=True))
        reasons: list[str] = []
        for source in sources:
            url = file_url(source.url, entry.path)
            for _attempt in range(RESUME_ATTEMPTS):
                try:
                    resumed = await self._download(url, entry, part, source.kind)
                except _Interrupted as exc:
                    reasons.append(f"{source.kind} {url}: interrupted ({exc})")
                    continue  # resume from the same source
                except _Corrupt as exc:
                    reasons.append(f"{source.kind} {url}: {exc}")
                    self.metrics.fill_files.labels("corrupt").inc()
                    await loop.run_in_executor(None, lambda: part.unlink(missing_ok=True))
                    break
                except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                    if is_disk_full(exc):  # no other source can help: stop at once, keep nothing partial
                        await loop.run_in_executor(None, lambda: part.unlink(missing_ok=True))
                        raise DiskFull(f"disk full writing {entry.path}: {exc}"[:300]) from None
                    reasons.append(f"{source.kind} {url}: {type(exc).__name__}: {exc}"[:300])
                    self.metrics.fill_files.labels("error").inc()
                    break
                await loop.run_in_executor(None, _commit, part, final)
                self.metrics.fill_files.labels("ok").inc()
                return FetchResult(source.url, resumed)
        await loop.run_in_executor(None, lambda: part.unlink(missing_ok=True))
        raise FetchFailed(f"{entry.path}: no source delivered a verified copy: " + "; ".join(reasons[-4:]))

    async def _download(self, url: str, entry: FileEntry, part: Path, kind: str) -> bool:
        loop = asyncio.get_running_loop()
        have = await loop.run_in_executor(None, lambda: part.stat().st_size if part.exists() else 0)
        if have > entry.size:
            raise _Corrupt("temp file longer than the declared size")
        h = hashlib.sha256()
        if have:
            h, have = await loop.run_in_executor(None, _hash_file, part)
        if have == entry.size:
            if h.hexdigest() != entry.sha256:
                raise _Corrupt("sha256 mismatch")
            return True
        headers = {"Range": f"bytes={have}-"} if have else {}
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=30)
        async with self.http.get(url, headers=headers, timeout=timeout, allow_redirects=True) as resp:
            if have and resp.status == 206 and resp.headers.get("Content-Range", "").startswith(f"bytes {have}-"):
                mode, written, resumed = "ab", have, True
            elif resp.status == 200:
                mode, written, resumed, h = "wb", 0, False, hashlib.sha256()
            else:
                raise aiohttp.ClientResponseError(resp.request_info, resp.history, status=resp.status,
                                                  message=resp.reason or "")
            fh = await loop.run_in_executor(None, _open, part, mode)
            try:
                try:
                    async for chunk in resp.content.iter_chunked(READ_CHUNK):
                        written += len(chunk)
                        if written > entry.size:
                            raise _Corrupt("source sent more bytes than the declared size")
                        h.update(chunk)
                        await loop.run_in_executor(None, fh.write, chunk)
                        self.metrics.fill_bytes.labels(kind).inc(len(chunk))
                        await self.bucket.take(len(chunk))
                except (aiohttp.ClientPayloadError, aiohttp.ServerDisconnectedError,
                        ConnectionResetError) as exc:
                    raise _Interrupted(type(exc).__name__) from None
                await loop.run_in_executor(None, _flush_sync, fh)
            finally:
                await loop.run_in_executor(None, fh.close)
        if written < entry.size:
            raise _Interrupted(f"got {written} of {entry.size} bytes")
        if h.hexdigest() != entry.sha256:
            raise _Corrupt("sha256 mismatch")
        return resumed


def _open(path: Path, mode: str) -> BinaryIO:
    return cast(BinaryIO, open(path, mode))


def _flush_sync(fh: BinaryIO) -> None:
    fh.flush()
    os.fsync(fh.fileno())


def _commit(part: Path, final: Path) -> None:
    os.replace(part, final)
    fd = os.open(final.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
