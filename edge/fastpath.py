"""A purpose-built HTTP/1.1 server for content requests, with every other request handed to aiohttp.

Why: on the 2-core reference machine aiohttp's own request machinery (parser, Request and Response
objects, the handler task) caps a 1 KB answer at 0.57x nginx's single worker before any edge logic
runs (``bench/serve.py``); a plain :class:`asyncio.Protocol` answering from memory does not.  This
module is only the wire: the decisions are :meth:`edge.serving.ContentServer.resolve`'s, the same
ones the aiohttp handler uses, as are the metrics and the demand accounting (``begin``/``end``).

What it serves itself: ``GET``, ``HEAD`` and ``OPTIONS`` on ``/v1/content/...`` without a body.
Manifests and init segments answered from memory are written from ``data_received`` without a task;
a segment goes out with ``sendfile(2)`` from there too, and gets a task only when the socket is full
(:meth:`FastProtocol._send_file`, the same on asyncio's loop and uvloop, which has no ``loop.sendfile``).
Keep-alive, pipelining (answered in order, one at a time), ``Connection: close`` and HTTP/1.0.

What it hands over: any other request (``/healthz``, ``/metrics``, ``/v1/home``, a POST, a body,
``Expect``, ``Upgrade``, an absolute-form target ...).  Once the responses before it are written,
the connection is given to aiohttp: a ``RequestHandler`` from the runner's ``web.Server`` factory
takes the transport (``set_protocol`` + ``connection_made``) and is fed the bytes buffered so far,
starting with that request; from then on aiohttp owns the connection (content requests on it are
served by the aiohttp handler, with the same semantics).  One port, one routing table, no proxying.

Limits (``[http]`` settings, applied to aiohttp's handler too): the request head is bounded
(431 and close beyond it), a head must arrive whole within ``header_timeout_s`` of its first byte
(slow clients get 408 and are closed), an idle keep-alive connection is closed after
``idle_timeout_s``, and past ``max_connections`` a new connection gets 503 and is closed.  A
malformed request gets 400 and the connection is closed.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import socket
import time
from collections.abc import Callable
from email.utils import formatdate
from http import HTTPStatus
from typing import Any, cast

from aiohttp import web

from shared.httplimits import ConnectionLimits
from shared.tasks import TaskGroup

from .sendfile import FALLBACK_CHUNK, Reply
from .serving import CONDITIONAL_HEADERS, PREFLIGHT_HEADERS, ContentServer, Exchange, PendingRead

log = logging.getLogger(__name__)

PREFIX = b"/v1/content/"
SERVED_METHODS = frozenset({b"GET", b"HEAD", b"OPTIONS"})
# Headers that mean the request is not a plain body-less GET: aiohttp deals with those.
HANDED_OVER_HEADERS = frozenset({"content-length", "transfer-encoding", "expect", "upgrade"})
_TOKEN_RE = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")  # RFC 9110 token (methods, header names)
_TARGET_RE = re.compile(rb"[!-~\x80-\xff]+")  # no controls, no spaces
READ_PAUSE_BYTES = 256 * 1024  # stop reading a pipelining client that is this far ahead of us
# Flow control: pause_writing as soon as anything is left in the transport's buffer, resume_writing
# once it is empty.  The buffer only ever holds a head, a memory answer or one WAKE_CHUNK of a body
# (see _send_file), and _process answers nothing more until it is flushed.
WRITE_HIGH_WATER = 0
WAKE_CHUNK = 16 * 1024
# Parsed request heads, by their exact bytes: players repeat the same head (same target, same headers)
# for every manifest poll, and parsing is a pure function of those bytes.  Only valid, short heads.
HEAD_CACHE = 512
HEAD_CACHE_MAX_BYTES = 2048
DEFAULT_LIMITS = ConnectionLimits()
CORK: int | None = getattr(socket, "TCP_CORK", None)  # Linux
_STATUS_LINES = {s.value: f"HTTP/1.1 {s.value} {s.phrase}\r\n".encode() for s in HTTPStatus}


class _Date:
    """The Date header line, formatted once a second rather than once a response."""

    def __init__(self) -> None:
        self._second = 0
        self._value = b""

    def get(self) -> bytes:
        now = int(time.time())
        if now != self._second:
            self._second = now
            self._value = f"Date: {formatdate(now, usegmt=True)}\r\n".encode("latin-1")
        return self._value


class BadRequest(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class _Head:
    """A parsed request head and what the server decides from it alone, remembered by its exact bytes."""

    __slots__ = ("conditional", "headers", "keep_alive", "method_str", "ours", "target_str", "version")

    def __init__(self, method: bytes, target: bytes, version: bytes, headers: dict[str, str]) -> None:
        self.version, self.headers = version, headers
        self.method_str = method.decode("ascii")
        self.target_str = target.decode("latin-1")
        connection = headers.get("connection", "").lower()
        self.keep_alive = "close" not in connection if version == b"HTTP/1.1" else "keep-alive" in connection
        self.conditional = not CONDITIONAL_HEADERS.isdisjoint(headers)
        # Served here: a body-less GET/HEAD/OPTIONS on a content path; anything else goes to aiohttp.
        self.ours = (method in SERVED_METHODS and target.startswith(PREFIX)
                     and HANDED_OVER_HEADERS.isdisjoint(headers))


class FastProtocol(asyncio.Protocol):
    """One client connection, until it closes or is handed to aiohttp."""

    def __init__(self, site: FastSite) -> None:
        self.site = site
        self.server = site.content
        self.loop = site.loop
        self.transport: asyncio.Transport | None = None
        self.client_ip = ""
        self.buf = bytearray()
        self.busy = False  # a response is being produced or sent; later requests wait in buf
        self.closing = False
        self.reading = True
        self.write_paused = False
        self._drain: asyncio.Future[None] | None = None
        self.deadline = 0.0
        self.in_head = False  # part of a request head has arrived (the header timeout runs)

    # -- asyncio callbacks ------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # asyncio's or uvloop's TCP transport (uvloop's is not an asyncio.Transport subclass, same interface)
        self.transport = transport = cast(asyncio.Transport, transport)
        transport.set_write_buffer_limits(high=WRITE_HIGH_WATER, low=0)
        peer = transport.get_extra_info("peername")
        self.client_ip = str(peer[0]) if isinstance(peer, tuple) and peer else ""
        site = self.site
        if len(site.connections) >= site.limits.max_connections:
            site.content.metrics.refused.labels("connections").inc()
            self._write_error(503, "too many connections")
            self._close()
            return
        site.connections.add(self)
        self.server.track(transport)
        self.deadline = self.loop.time() + site.limits.idle_timeout_s

    def connection_lost(self, exc: Exception | None) -> None:
        self.closing = True
        self.site.connections.discard(self)
        if self._drain is not None and not self._drain.done():
            self._drain.set_exception(ConnectionResetError("connection lost"))
        self._drain = None

    def pause_writing(self) -> None:
        self.write_paused = True
        # _process stops without stamping a deadline: give a slow reader the idle timeout from here.
        self.deadline = self.loop.time() + self.site.limits.idle_timeout_s

    def resume_writing(self) -> None:
        self.write_paused = False
        if self._drain is not None and not self._drain.done():
            self._drain.set_result(None)
        self._drain = None
        if not self.busy:
            self._process()

    def data_received(self, data: bytes) -> None:
        # The head deadline starts with a head's first byte: _process stamps it when it stops at an
        # incomplete head, and the idle deadline when it stops at an empty buffer (one clock read per
        # read, none per request); only a client we cannot write to (so _process does not run) is
        # stamped here.
        if self.write_paused and not self.buf and not self.busy and not self.in_head:
            self.in_head = True
            self.deadline = self.loop.time() + self.site.limits.header_timeout_s
        self.buf += data
        if not self.busy:
            self._process()
        elif len(self.buf) > READ_PAUSE_BYTES and self.reading and self.transport is not None:
            self.reading = False
            self.transport.pause_reading()

    # -- requests ---------------------------------------------------------------------------------
    def _process(self) -> None:
        """Answer every complete request in the buffer, in order, until one needs to wait."""
        limits = self.site.limits
        while not self.closing and not self.write_paused:
            buf = self.buf
            while buf[:2] == b"\r\n":  # RFC 9112 2.2: ignore empty lines before a request line
                del buf[:2]
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                if len(buf) > limits.max_header_bytes:
                    self._fail(431, "request header too large")
                elif buf and not self.in_head:
                    self.in_head = True
                    self.deadline = self.loop.time() + limits.header_timeout_s
                elif not buf:
                    self.in_head = False
                    self.deadline = self.loop.time() + limits.idle_timeout_s
                if not self.reading and self.transport is not None:
                    self.reading = True
                    self.transport.resume_reading()
                return
            if end + 4 > limits.max_header_bytes:
                self._fail(431, "request header too large")
                return
            raw_head = bytes(buf[:end])
            heads = self.site.heads
            head = heads.get(raw_head)
            if head is None:
                try:
                    head = _Head(*_parse_head(raw_head))
                except BadRequest as exc:
                    self._fail(exc.status, str(exc))
                    return
                if end <= HEAD_CACHE_MAX_BYTES:
                    if len(heads) >= HEAD_CACHE:
                        heads.clear()
                    heads[raw_head] = head
            if not head.ours:
                self._hand_over()
                return
            del buf[:end + 4]
            self.in_head = False
            if not self._serve(head):
                return  # waiting for a task; it calls _process again

    def _serve(self, head: _Head) -> bool:
        """Answer one request; False while a task finishes it (the caller stops and waits)."""
        method, keep_alive, version = head.method_str, head.keep_alive, head.version
        if method == "OPTIONS":  # preflight: not a content request for the metrics, as in aiohttp
            self._write(Reply(204, dict(PREFLIGHT_HEADERS)), method, keep_alive, version)
            return True
        server = self.server
        started = server.begin()
        ex = Exchange(method, head.target_str, head.headers, self.client_ip, conditional=head.conditional)
        try:
            answer = server.resolve(ex)
        except BaseException:
            server.end(ex, None, started)
            raise
        sent: int | None = None  # body bytes already written, once the head is out
        if isinstance(answer, Reply) and answer.fd >= 0 and method != "HEAD" and answer.length > 0:
            try:
                sent = self._send_now(answer, self._head(answer, keep_alive, version))
            except OSError as exc:  # the client is gone
                log.debug("send aborted: %s", exc)
                self._abort()
                answer.close()
                server.end(ex, answer, started, aborted=True)
                return True
            if sent == answer.length:  # the socket took the whole body: done without a task
                answer.close()
                if not keep_alive:
                    self._close()
                server.end(ex, answer, started)
                return True
        if isinstance(answer, PendingRead) or sent is not None:
            self.busy = True
            self.deadline = float("inf")
            self.site.tasks.spawn(self._finish(ex, answer, keep_alive, version, started, sent), name="send")
            return False
        if answer.fd >= 0:
            answer.close()
        self._write(answer, method, keep_alive, version)
        server.end(ex, answer, started)
        return True

    async def _finish(self, ex: Exchange, answer: Reply | PendingRead, keep_alive: bool, version: bytes,
                      started: float, sent: int | None = None) -> None:
        """The rest of a response: ``sent`` body bytes of a file reply may already be out (head included)."""
        reply: Reply | None = None
        aborted = False
        try:
            reply = answer if isinstance(answer, Reply) else await self.server.read(answer)
            if reply.fd < 0 or ex.method == "HEAD":
                self._write(reply, ex.method, keep_alive, version)
            else:
                if sent is None:
                    self._write_head(reply, keep_alive, version)
                await self._send_file(reply, reply.start + (sent or 0))
                if not keep_alive:
                    self._close()
        except (OSError, RuntimeError) as exc:  # the client went away mid-body (RuntimeError: transport closing)
            aborted = True
            log.debug("send aborted: %s", exc)
            self._abort()
        finally:
            if reply is not None:
                reply.close()
            if isinstance(answer, PendingRead):
                answer.close()  # no-op once read() took the descriptor
            self.server.end(ex, reply, started, aborted=aborted)
            self.busy = False
            if not self.closing:
                self._process()

    def _send_now(self, reply: Reply, head: bytes) -> int:
        """Write the head, then as many body bytes as the socket takes right now with ``sendfile(2)``.

        The body goes straight to the socket only when nothing is queued in the transport ahead of it
        (so the order on the wire holds): a 2 MB segment usually goes in one call, with no task, no
        ``loop.sendfile`` set-up (file object, lseek, pause/resume reading) and no wait for
        writability; the rest, if any, is sent by :meth:`_finish`.  The head and the body are corked
        together (``TCP_CORK``, as nginx's ``tcp_nopush``) so the head does not leave as a packet of
        its own: measured, that alone was worth 0.7x -> 0.9x of nginx's GB/s on 2 MB segments.
        """
        transport = self.transport
        if (not self.server.use_sendfile or transport is None or transport.is_closing() or self.write_paused
                or transport.get_write_buffer_size()):
            if transport is not None and not transport.is_closing():
                transport.write(head)
            return 0
        sock = transport.get_extra_info("socket")
        out = sock.fileno()
        sent = 0
        if CORK is not None:
            sock.setsockopt(socket.IPPROTO_TCP, CORK, 1)
        try:
            transport.write(head)
            while sent < reply.length:
                try:
                    n = os.sendfile(out, reply.fd, reply.start + sent, reply.length - sent)
                except BlockingIOError:
                    break
                if n == 0:  # the file shrank: let the task path report it
                    break
                sent += n
        finally:
            if CORK is not None and not transport.is_closing():
                sock.setsockopt(socket.IPPROTO_TCP, CORK, 0)
        return sent

    async def _send_file(self, reply: Reply, offset: int) -> None:
        """The body from ``offset`` on, with ``sendfile(2)`` whenever the socket takes it.

        Works the same on every event loop (uvloop has no ``loop.sendfile``): while the transport's
        buffer is empty the socket is written directly; when the socket is full (EAGAIN), the next
        ``WAKE_CHUNK`` bytes are read and handed to the transport, whose flow control says when the
        socket has room again (``resume_writing`` once that chunk is out): the only copy, 16 KiB per
        full socket, is what it costs to be told.  With ``use_sendfile`` off every chunk goes through
        the transport.
        """
        transport = self.transport
        stop = reply.stop
        out = self._socket_fd() if self.server.use_sendfile else -1
        while offset < stop:
            if transport is None or transport.is_closing():
                raise ConnectionResetError("connection lost")
            if self.write_paused:
                self._drain = self.loop.create_future()
                await self._drain
                continue
            if out >= 0 and not transport.get_write_buffer_size():
                try:
                    n = os.sendfile(out, reply.fd, offset, stop - offset)
                except BlockingIOError:
                    n = -1
                if n == 0:
                    raise ConnectionResetError("file shrank while being sent")
                if n > 0:
                    offset += n
                    continue
            chunk = os.pread(reply.fd, min(WAKE_CHUNK if out >= 0 else FALLBACK_CHUNK, stop - offset), offset)
            if not chunk:
                raise ConnectionResetError("file shrank while being sent")
            transport.write(chunk)
            offset += len(chunk)

    def _socket_fd(self) -> int:
        sock = self.transport.get_extra_info("socket") if self.transport is not None else None
        return sock.fileno() if sock is not None else -1

    # -- writing ----------------------------------------------------------------------------------
    def _head(self, reply: Reply, keep_alive: bool, version: bytes) -> bytes:
        status = reply.status
        line = _STATUS_LINES.get(status) or f"HTTP/1.1 {status} Unknown\r\n".encode()
        rendered = reply.rendered or "".join(f"{k}: {v}\r\n" for k, v in reply.headers.items()).encode("latin-1")
        length = b"" if status in (204, 304) else b"Content-Length: %d\r\n" % reply.length
        if not keep_alive:
            tail = b"Connection: close\r\n\r\n"
        elif version == b"HTTP/1.0":
            tail = b"Connection: keep-alive\r\n\r\n"
        else:
            tail = b"\r\n"
        return b"".join((line, self.site.date.get(), rendered, length, tail))

    def _write_head(self, reply: Reply, keep_alive: bool, version: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(self._head(reply, keep_alive, version))

    def _write(self, reply: Reply, method: str, keep_alive: bool, version: bytes) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        head = self._head(reply, keep_alive, version)
        if method != "HEAD" and reply.body and reply.status not in (204, 304):
            transport.write(head + reply.body)
        else:
            transport.write(head)
        if not keep_alive:
            self._close()

    def _write_error(self, status: int, message: str) -> None:
        body = f'{{"error": "{message}"}}'.encode()
        self._write(Reply(status, {"Content-Type": "application/json; charset=utf-8"}, body), "GET", False,
                    b"HTTP/1.1")

    def _fail(self, status: int, message: str) -> None:
        self.server.metrics.refused.labels("malformed" if status == 400 else "limits").inc()
        self.buf.clear()
        self._write_error(status, message)
        self._close()

    def _close(self) -> None:
        self.closing = True
        if self.transport is not None:
            self.transport.close()

    def _abort(self) -> None:
        self.closing = True
        if self.transport is not None:
            self.transport.abort()

    def expire(self, now: float) -> None:
        """Called by the site's sweeper: close a connection whose idle or header deadline passed."""
        if self.busy or self.closing or now < self.deadline:
            return
        if self.in_head or self.buf:
            self.server.metrics.refused.labels("timeout").inc()
            self._write_error(408, "request header not received in time")
        self._close()

    def _hand_over(self) -> None:
        """Give the connection, and everything buffered from this request on, to aiohttp."""
        transport = self.transport
        assert transport is not None
        self.closing = True
        self.site.connections.discard(self)
        data = bytes(self.buf)
        self.buf.clear()
        handler = self.site.factory()
        transport.set_protocol(handler)
        handler.connection_made(transport)
        if not self.reading:
            transport.resume_reading()
        handler.data_received(data)


def _parse_head(head: bytes) -> tuple[bytes, bytes, bytes, dict[str, str]]:
    lines = head.split(b"\r\n")
    parts = lines[0].split(b" ")
    if len(parts) != 3:
        raise BadRequest(400, "malformed request line")
    method, target, version = parts
    if not _TOKEN_RE.fullmatch(method):
        raise BadRequest(400, "malformed method")
    if version not in (b"HTTP/1.1", b"HTTP/1.0"):
        raise BadRequest(505 if version.startswith(b"HTTP/") else 400, "unsupported HTTP version")
    if not _TARGET_RE.fullmatch(target):
        raise BadRequest(400, "malformed request target")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(b":")
        if not sep or not _TOKEN_RE.fullmatch(name):
            raise BadRequest(400, "malformed header line")
        if b"\n" in value or b"\r" in value or b"\x00" in value:
            raise BadRequest(400, "malformed header value")
        key = name.decode("ascii").lower()
        text = value.strip(b" \t").decode("latin-1")
        if key in headers:
            if key in ("host", "content-length", "range", "if-range"):
                raise BadRequest(400, f"repeated {key} header")
            headers[key] = f"{headers[key]}, {text}"
        else:
            headers[key] = text
    return method, target, version, headers


class FastSite(web.BaseSite):
    """An aiohttp site whose connections start in :class:`FastProtocol` (the runner's cleanup stops it)."""

    def __init__(self, runner: web.BaseRunner, content: ContentServer, host: str, port: int, *,
                 limits: ConnectionLimits = DEFAULT_LIMITS, shutdown_timeout: float = 10.0, reuse_port: bool = False,
                 handover: Callable[[web.Server], Callable[[], asyncio.Protocol]] | None = None) -> None:
        super().__init__(runner)
        self._handover = handover  # wraps aiohttp's protocol factory for handed-over connections
        self.content = content
        self.limits = limits
        self._host = host
        self._port = port
        self._reuse_port = reuse_port
        self._shutdown_timeout = shutdown_timeout
        self.connections: set[FastProtocol] = set()
        self.tasks = TaskGroup("fastpath")
        self.date = _Date()
        self.heads: dict[bytes, _Head] = {}
        self.loop = asyncio.get_event_loop()
        self.factory: Callable[[], asyncio.Protocol] = _no_server

    @property
    def name(self) -> str:
        return f"http://{self._host}:{self._port}"

    async def start(self) -> None:
        await super().start()
        self.loop = asyncio.get_running_loop()
        server = self._runner.server
        assert server is not None
        self.factory = server if self._handover is None else self._handover(server)
        self._server = await self.loop.create_server(lambda: FastProtocol(self), self._host, self._port,
                                                     reuse_address=True, reuse_port=self._reuse_port or None,
                                                     backlog=1024)
        self.tasks.spawn(self._sweep(), name="sweeper")

    async def stop(self) -> None:
        """Stop accepting, let responses in progress finish (bounded), close the rest."""
        if self._server is not None:
            self._server.close()
        deadline = self.loop.time() + self._shutdown_timeout
        while True:
            for conn in list(self.connections):
                if not conn.busy:
                    conn._close()
            if not self.connections or self.loop.time() >= deadline:
                break
            await asyncio.sleep(0.05)
        for conn in list(self.connections):
            conn._abort()
        await self.tasks.aclose()
        await super().stop()

    async def _sweep(self) -> None:
        every = max(0.05, min(1.0, self.limits.header_timeout_s / 4, self.limits.idle_timeout_s / 4))
        while True:
            await asyncio.sleep(every)
            now = self.loop.time()
            for conn in list(self.connections):
                conn.expire(now)


def _no_server() -> Any:
    raise RuntimeError("the fast path site is not started")
