"""Sending one cached file: conditionals and a single range, then ``sendfile(2)`` on the event loop.

This replaces aiohttp's ``FileResponse`` on the segment path, deliberately, after measuring it
(``bench/serve.py``): ``FileResponse`` opens, stats and closes every file through the default thread
pool, and those hand-offs (GIL contention on two busy cores) cost more than the transfer of a 2 MB
segment from the page cache.  Opening a cached file is a microseconds-long syscall, so it is done
inline (:mod:`edge.beneath`: one ``openat2`` that refuses any symlink) and the reply built from the
open descriptor, so what is checked is what is sent.
The decisions (304, 416, 206 or 200, which bytes) are :mod:`edge.ranges`' pure functions, shared with
the in-memory path, and come back as a :class:`Reply` holding the open descriptor; the bytes go out
with ``loop.sendfile`` (or a plain read/write loop when sendfile is off, which the tests exercise as
aiohttp's own tests do), from aiohttp (:func:`send_reply`) or from :mod:`edge.fastpath`.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Mapping
from dataclasses import dataclass
from email.utils import formatdate

from aiohttp import web

from . import ranges

FALLBACK_CHUNK = 256 * 1024


@dataclass(slots=True)
class Reply:
    """A decided response: status, headers, and either a body in memory or bytes [start, stop) of ``fd``."""

    status: int
    headers: dict[str, str]
    body: bytes = b""
    fd: int = -1
    start: int = 0
    stop: int = 0
    # ``headers`` already rendered as ``Name: value\r\n`` lines (latin-1), when the server had them at
    # hand (a plain memory hit); a shell may write these instead of formatting ``headers`` again.
    rendered: bytes = b""

    @property
    def length(self) -> int:
        return self.stop - self.start if self.fd >= 0 else len(self.body)

    def body_bytes(self, method: str) -> int:
        """What the client is sent after the head (metrics and demand count this)."""
        return 0 if method == "HEAD" or self.status in (204, 304) else self.length

    closed: bool = False

    def close(self) -> None:
        """Close the descriptor (once); ``length`` still says what the reply carried."""
        if self.fd >= 0 and not self.closed:
            self.closed = True
            os.close(self.fd)


def fd_reply(fd: int, st: os.stat_result, headers: Mapping[str, str], req_headers: Mapping[str, str]) -> Reply:
    """Decide the answer for an open file (``st`` its ``fstat``); takes ownership of ``fd``.

    ``req_headers`` are looked up by lower-case name.  The reply owns the descriptor when it has a
    body to send (200, 206), and it is closed otherwise; the caller closes it with :meth:`Reply.close`.
    """
    try:
        size = st.st_size
        etag = ranges.etag_for(st.st_mtime_ns, size)
        last_modified = formatdate(st.st_mtime, usegmt=True)
        out = {**headers, "ETag": f'"{etag}"', "Last-Modified": last_modified, "Accept-Ranges": "bytes"}
        if ranges.not_modified(etag=etag, last_modified_s=st.st_mtime,
                               if_none_match=req_headers.get("if-none-match"),
                               if_modified_since=req_headers.get("if-modified-since")):
            os.close(fd)
            return Reply(304, out)
        rng: ranges.ByteRange | None = None
        if ranges.range_applies(etag=etag, last_modified_http=last_modified, if_range=req_headers.get("if-range")):
            try:
                rng = ranges.parse_range(req_headers.get("range"), size)
            except ranges.RangeNotSatisfiable:
                os.close(fd)
                return Reply(416, {**out, "Content-Range": f"bytes */{size}"})
        if rng is None:
            return Reply(200, out, fd=fd, start=0, stop=size)
        out["Content-Range"] = rng.content_range(size)
        return Reply(206, out, fd=fd, start=rng.start, stop=rng.stop)
    except BaseException:
        try:
            os.close(fd)
        except OSError:
            pass
        raise


async def send_reply(request: web.Request, reply: Reply, *, use_sendfile: bool = True) -> web.StreamResponse:
    """aiohttp shell: the head, then the file's bytes (the caller still owns and closes ``reply.fd``)."""
    resp = web.StreamResponse(status=reply.status, headers=reply.headers)
    resp.content_length = reply.length
    writer = await resp.prepare(request)
    if request.method != "HEAD" and reply.length > 0 and writer is not None:
        await writer.drain()  # the headers go before the body
        loop = asyncio.get_running_loop()
        # uvloop has no loop.sendfile (AbstractEventLoop's raises NotImplementedError): copy instead.
        if use_sendfile and isinstance(loop, asyncio.BaseEventLoop):
            transport = request.transport
            if transport is None:
                raise ConnectionResetError("connection lost")
            with open(reply.fd, "rb", buffering=0, closefd=False) as fobj:  # noqa: ASYNC230 (no I/O: wraps the fd)
                await loop.sendfile(transport, fobj, reply.start, reply.length)
        else:
            offset = reply.start
            while offset < reply.stop:
                chunk = os.pread(reply.fd, min(FALLBACK_CHUNK, reply.stop - offset), offset)
                if not chunk:
                    raise ConnectionResetError("file shrank while being sent")
                await resp.write(chunk)
                offset += len(chunk)
    await resp.write_eof()
    return resp
