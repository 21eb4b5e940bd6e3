"""A bounded, crash-safe on-disk queue for messages that must survive broker outages (telemetry).

Records are appended to segment files (``00000001.seg`` ...) as ``length | crc32 | payload``; a
cursor file (replaced atomically) records how far delivery has been acknowledged.  After a crash the
spool resumes at the cursor: records are delivered at least once, and each carries its envelope id
so the receiver drops duplicates.  A torn tail (a crash mid-append) fails its CRC and is cut off.
When the spool exceeds its byte budget the oldest segments are dropped and counted: the spool never
fills the disk.

All file work runs on one dedicated thread (:class:`Spool` methods are async), never on the loop.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import logging
import os
import struct
import zlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

_HEADER = struct.Struct(">II")  # payload length, crc32
MAX_RECORD = 1 << 20


@dataclass(frozen=True)
class Record:
    segment: int
    offset: int
    end: int
    payload: bytes


class Spool:
    def __init__(self, directory: Path, *, max_bytes: int = 64 << 20, segment_bytes: int = 1 << 20) -> None:
        self.dir = directory
        self.max_bytes = max_bytes
        self.segment_bytes = segment_bytes
        self.dropped_records = 0
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="spool")
        self._cursor = (0, 0)  # (segment, offset) of the first unacknowledged record
        self._write_seg = 0
        self._write_off = 0
        self._opened = False

    # -- thread-side helpers --------------------------------------------------------------------------
    def _seg_path(self, seg: int) -> Path:
        return self.dir / f"{seg:08d}.seg"

    def _segments(self) -> list[int]:
        return sorted(int(p.stem) for p in self.dir.glob("*.seg") if p.stem.isdigit())

    def _open(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        cursor_path = self.dir / "cursor"
        if cursor_path.exists():
            try:
                doc = json.loads(cursor_path.read_text())
                self._cursor = (int(doc["segment"]), int(doc["offset"]))
            except (ValueError, KeyError, TypeError):
                log.warning("spool cursor unreadable; delivering everything still on disk")
                self._cursor = (0, 0)
        segs = self._segments()
        if segs:
            self._write_seg = segs[-1]
            self._write_off = self._truncate_torn_tail(self._write_seg)
        else:
            self._write_seg, self._write_off = 1, 0
        if segs and self._cursor < (segs[0], 0):
            self._cursor = (segs[0], 0)  # the cursor's segment was dropped or delivered
        self._opened = True

    def _truncate_torn_tail(self, seg: int) -> int:
        path = self._seg_path(seg)
        good = 0
        with open(path, "rb") as fh:
            data = fh.read()
        while good + _HEADER.size <= len(data):
            length, crc = _HEADER.unpack_from(data, good)
            end = good + _HEADER.size + length
            if length > MAX_RECORD or end > len(data) or zlib.crc32(data[good + _HEADER.size:end]) != crc:
                break
            good = end
        if good != len(data):
            log.warning("spool segment %s: cutting a torn tail of %d bytes", path.name, len(data) - good)
            with open(path, "r+b") as fh:
                fh.truncate(good)
                os.fsync(fh.fileno())
        return good

    def _append(self, payloads: list[bytes]) -> None:
        if self._write_off >= self.segment_bytes:
            self._write_seg += 1
            self._write_off = 0
        with open(self._seg_path(self._write_seg), "ab") as fh:
            for payload in payloads:
                if len(payload) > MAX_RECORD:
                    raise ValueError(f"spool record of {len(payload)} bytes exceeds {MAX_RECORD}")
                fh.write(_HEADER.pack(len(payload), zlib.crc32(payload)) + payload)
                self._write_off += _HEADER.size + len(payload)
            fh.flush()
            os.fsync(fh.fileno())
        self._enforce_budget()

    def _size(self) -> int:
        return sum(self._seg_path(s).stat().st_size for s in self._segments())

    def _backlog(self) -> int:
        total = 0
        for seg in self._segments():
            if seg >= self._cursor[0]:
                total += self._seg_path(seg).stat().st_size - (self._cursor[1] if seg == self._cursor[0] else 0)
        return total

    def _enforce_budget(self) -> None:
        segs = self._segments()
        sizes = {s: self._seg_path(s).stat().st_size for s in segs}  # one stat per segment per append
        total = sum(sizes.values())
        while len(segs) > 1 and total > self.max_bytes:
            oldest = segs.pop(0)
            total -= sizes[oldest]
            dropped = sum(1 for _ in self._iter_segment(oldest, 0))
            self._seg_path(oldest).unlink()
            if self._cursor[0] <= oldest:
                self.dropped_records += dropped
                self._cursor = (segs[0], 0)
                self._save_cursor()
            log.warning("spool over budget: dropped segment %d (%d records)", oldest, dropped)

    def _iter_segment(self, seg: int, offset: int) -> list[Record]:
        path = self._seg_path(seg)
        try:
            with open(path, "rb") as fh:
                fh.seek(offset)
                data = fh.read()
        except FileNotFoundError:
            return []
        out = []
        pos = 0
        while pos + _HEADER.size <= len(data):
            length, crc = _HEADER.unpack_from(data, pos)
            end = pos + _HEADER.size + length
            if length > MAX_RECORD or end > len(data) or zlib.crc32(data[pos + _HEADER.size:end]) != crc:
                break
            out.append(Record(seg, offset + pos, offset + end, data[pos + _HEADER.size:end]))
            pos = end
        return out

    def _pending(self, limit: int) -> list[Record]:
        out: list[Record] = []
        for seg in self._segments():
            if seg < self._cursor[0]:
                continue
            start = self._cursor[1] if seg == self._cursor[0] else 0
            out.extend(self._iter_segment(seg, start))
            if len(out) >= limit:
                return out[:limit]
        return out

    def _ack(self, record: Record) -> None:
        self._cursor = (record.segment, record.end)
        self._save_cursor()
        for seg in self._segments():  # fully delivered segments are deleted
            if seg < record.segment:
                self._seg_path(seg).unlink()

    def _save_cursor(self) -> None:
        tmp = self.dir / "cursor.tmp"
        with open(tmp, "w") as fh:
            json.dump({"segment": self._cursor[0], "offset": self._cursor[1]}, fh)
            fh.flush()
            os.fsync(fh.fileno())
        tmp.replace(self.dir / "cursor")

    # -- async API ------------------------------------------------------------------------------------
    async def _call(self, fn: Callable[..., object], *args: object) -> object:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    async def open(self) -> None:
        await self._call(self._open)

    async def append(self, *payloads: bytes) -> None:
        """Durably queue ``payloads`` (fsynced before this returns)."""
        await self._call(self._append, list(payloads))

    async def pending(self, limit: int = 100) -> list[Record]:
        result = await self._call(self._pending, limit)
        assert isinstance(result, list)
        return result

    async def ack(self, record: Record) -> None:
        """Mark ``record`` and everything before it delivered."""
        await self._call(self._ack, record)

    async def size(self) -> int:
        result = await self._call(self._size)
        assert isinstance(result, int)
        return result

    async def backlog(self) -> int:
        """Bytes of records not yet acknowledged (:meth:`size` also counts delivered ones not yet deleted)."""
        result = await self._call(self._backlog)
        assert isinstance(result, int)
        return result

    async def drain(self, deliver: Callable[[bytes], Awaitable[None]], *, batch: int = 100) -> int:
        """Deliver pending records in order with ``deliver`` (which raises to stop); returns how many."""
        sent = 0
        while True:
            records = await self.pending(batch)
            if not records:
                return sent
            delivered: Record | None = None
            try:
                for record in records:
                    await deliver(record.payload)
                    delivered = record
                    sent += 1
            finally:
                if delivered is not None:  # one cursor write per batch, even when delivery stops
                    await self.ack(delivered)

    async def close(self) -> None:
        self._pool.shutdown(wait=True)
