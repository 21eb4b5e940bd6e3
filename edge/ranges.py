"""HTTP range and conditional decisions for bodies held in memory (manifests, init segments).

Files on disk go through aiohttp's ``FileResponse``, which already does this; the memory cache must
answer the same way, so the rules live here as pure functions of headers and body metadata, with the
same ETag form as ``FileResponse`` (``"<mtime_ns hex>-<size hex>"``) so a client sees one validator
whichever path served it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from email.utils import parsedate_to_datetime

_RANGE_RE = re.compile(r"bytes=(\d{0,19})-(\d{0,19})")


class RangeNotSatisfiable(Exception):
    """The range starts at or beyond the end of the body (416)."""


@dataclass(frozen=True)
class ByteRange:
    start: int
    stop: int  # exclusive

    def content_range(self, size: int) -> str:
        return f"bytes {self.start}-{self.stop - 1}/{size}"


def etag_for(mtime_ns: int, size: int) -> str:
    return f"{mtime_ns:x}-{size:x}"


def parse_range(header: str | None, size: int) -> ByteRange | None:
    """The single byte range asked for, or None for the whole body.

    Multiple ranges and syntactically invalid headers are ignored (RFC 9110 lets a server do so and
    answer 200 with the whole body); a range that starts past the end raises RangeNotSatisfiable.
    """
    if header is None:
        return None
    m = _RANGE_RE.fullmatch(header.strip().replace(" ", ""))
    if m is None:
        return None
    first, last = m.group(1), m.group(2)
    if not first and not last:
        return None
    if not first:  # suffix: the last N bytes
        n = int(last)
        if n == 0:
            raise RangeNotSatisfiable
        return ByteRange(max(0, size - n), size)
    start = int(first)
    stop = size if not last else int(last) + 1
    if last and int(last) < start:
        return None
    if start >= size:
        raise RangeNotSatisfiable
    return ByteRange(start, min(stop, size))


def _etags(header: str) -> list[str]:
    return [t.strip().removeprefix("W/").strip('"') for t in header.split(",") if t.strip()]


def not_modified(*, etag: str, last_modified_s: float, if_none_match: str | None,
                 if_modified_since: str | None) -> bool:
    """True when a GET/HEAD may be answered 304 (If-None-Match wins over If-Modified-Since)."""
    if if_none_match is not None:
        tags = _etags(if_none_match)
        return "*" in tags or etag in tags
    if if_modified_since is not None:
        try:
            since = parsedate_to_datetime(if_modified_since).timestamp()
        except (TypeError, ValueError, IndexError, OverflowError):
            return False
        return int(last_modified_s) <= since
    return False


def range_applies(*, etag: str, last_modified_http: str, if_range: str | None) -> bool:
    """If-Range: honour the Range header only when the validator still matches."""
    if if_range is None:
        return True
    value = if_range.strip()
    if value.startswith('"') or value.startswith("W/"):
        return not value.startswith("W/") and value.strip('"') == etag
    return value == last_modified_http
