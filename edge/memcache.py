"""A bounded in-memory cache for manifests and init segments.

Every playback session starts by fetching the same few small files; holding them in memory saves a
file open and a sendfile per request, which is where small-file throughput goes.  The bound is in
bytes, least recently used goes first, and entries of an evicted file set are dropped with it (files in
a complete set never change, so there is nothing else to invalidate).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from email.utils import formatdate

from .ranges import etag_for

Key = tuple[str, str, str]  # title_id, version, path


@dataclass(frozen=True)
class CachedBody:
    body: bytes
    etag: str
    mtime_s: float
    last_modified_http: str

    @classmethod
    def of(cls, body: bytes, mtime_ns: int) -> CachedBody:
        mtime_s = mtime_ns / 1e9
        return cls(body, etag_for(mtime_ns, len(body)), mtime_s, formatdate(mtime_s, usegmt=True))


class MemoryCache:
    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.used = 0
        self._entries: OrderedDict[Key, CachedBody] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: Key) -> CachedBody | None:
        entry = self._entries.get(key)
        if entry is not None:
            self._entries.move_to_end(key)
        return entry

    def put(self, key: Key, entry: CachedBody) -> None:
        size = len(entry.body)
        if size > self.max_bytes:
            return
        old = self._entries.pop(key, None)
        if old is not None:
            self.used -= len(old.body)
        self._entries[key] = entry
        self.used += size
        while self.used > self.max_bytes:
            _, dropped = self._entries.popitem(last=False)
            self.used -= len(dropped.body)

    def drop_set(self, title_id: str, version: str) -> None:
        for key in [k for k in self._entries if k[0] == title_id and k[1] == version]:
            self.used -= len(self._entries.pop(key).body)
