"""Sending one cached file: conditionals and a single range, then ``sendfile(2)`` on the event loop.

This replaces aiohttp's ``FileResponse`` on the segment path, deliberately, after measuring it
(``bench/serve.py``): ``FileResponse`` opens, stats and closes every file through the default thread
pool, and those hand-offs (GIL contention on two busy cores) cost more than the transfer of a 2 MB
segment from the page cache.  Opening a cached file is a microseconds-long syscall, so it is done
inline, with ``O_NOFOLLOW`` so the final component can never be a symlink swapped in after the check.
The decisions (304, 416, 206 or 200, which bytes) are :mod:`edge.ranges`' pure functions, shared with
the in-memory path; the bytes go out with ``loop.sendfile`` (or a plain read/write loop when sendfile
is off, which the tests exercise as aiohttp's own tests do).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Mapping
from email.utils import formatdate

from aiohttp import web

from . import ranges

FALLBACK_CHUNK = 256 * 1024


async def send_file(request: web.Request, path: str, headers: Mapping[str, str], *,
                    use_sendfile: bool = True) -> web.StreamResponse:
    """Answer ``request`` with the file at ``path``; raises OSError if it cannot be opened."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        st = os.fstat(fd)
        size = st.st_size
        etag = ranges.etag_for(st.st_mtime_ns, size)
        last_modified = formatdate(st.st_mtime, usegmt=True)
        out = {**headers, "ETag": f'"{etag}"', "Last-Modified": last_modified, "Accept-Ranges": "bytes"}
        if ranges.not_modified(etag=etag, last_modified_s=st.st_mtime,
                               if_none_match=request.headers.get("If-None-Match"),
                               if_modified_since=request.headers.get("If-Modified-Since")):
            return await _finish(request, web.StreamResponse(status=304, headers=out))
        rng: ranges.ByteRange | None = None
        if ranges.range_applies(etag=etag, last_modified_http=last_modified,
                                if_range=request.headers.get("If-Range")):
            try:
                rng = ranges.parse_range(request.headers.get("Range"), size)
            except ranges.RangeNotSatisfiable:
                resp = web.StreamResponse(status=416, headers={**out, "Content-Range": f"bytes */{size}"})
                resp.content_length = 0
                return await _finish(request, resp)
        start, stop = (0, size) if rng is None else (rng.start, rng.stop)
        resp = web.StreamResponse(status=200 if rng is None else 206, headers=out)
        if rng is not None:
            resp.headers["Content-Range"] = rng.content_range(size)
        resp.content_length = stop - start
        writer = await resp.prepare(request)
        if request.method != "HEAD" and stop > start and writer is not None:
            await writer.drain()  # the headers go before the body
            if use_sendfile:
                transport = request.transport
                if transport is None:
                    raise ConnectionResetError("connection lost")
                with os.fdopen(os.dup(fd), "rb") as fobj:
                    await asyncio.get_running_loop().sendfile(transport, fobj, start, stop - start)
            else:
                offset = start
                while offset < stop:
                    chunk = os.pread(fd, min(FALLBACK_CHUNK, stop - offset), offset)
                    if not chunk:
                        raise ConnectionResetError("file shrank while being sent")
                    await resp.write(chunk)
                    offset += len(chunk)
        await resp.write_eof()
        return resp
    finally:
        os.close(fd)


async def _finish(request: web.Request, resp: web.StreamResponse) -> web.StreamResponse:
    await resp.prepare(request)
    await resp.write_eof()
    return resp
