"""Connection limits for aiohttp servers: slow request heads, oversized heads, too many connections.

Why: aiohttp bounds each request line and header field (``max_line_size``/``max_field_size``) and
closes a connection idle for ``keepalive_timeout``, but it has no deadline for a request head that
trickles in (slowloris: one header byte a second keeps a connection, and its buffers, forever
unless the keep-alive timer happens to fire), no bound on a head's total size (128 fields of 8 KB
each pass), and no cap on open connections.  The edge's fast path (:mod:`edge.fastpath`) has all
three; this module gives the same three to every aiohttp connection: the control plane's, the
edge's when ``http.fast_path`` is off, and the connections the fast path hands over to aiohttp.

How: :class:`GuardedFactory` is the protocol factory a listening socket calls per connection (in
place of aiohttp's ``web.Server``).  Past ``max_connections`` it answers 503 and closes; otherwise
it makes a :class:`GuardedHandler`, aiohttp's own ``RequestHandler`` with a deadline: the first byte
of a request head arms a timer of ``header_timeout_s``, the parser completing that head disarms it,
and a head still incomplete when the timer fires gets 408 and the connection is closed.  Bytes of
an incomplete head beyond ``max_header_bytes`` get 431.  A request body is not a head: an upload
may be slow for honest reasons, and is bounded by the route's own size limit instead.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError, LineTooLong
from aiohttp.http_parser import RawRequestMessage
from aiohttp.streams import EMPTY_PAYLOAD
from aiohttp.web_protocol import _ErrInfo

log = logging.getLogger(__name__)

# Called with "connections" (503), "limits" (431, or 400 for one over-long line), "timeout" (408) or
# "malformed" (400: a request aiohttp's parser refused).
OnRefused = Callable[[str], None]


@dataclass(frozen=True)
class ConnectionLimits:
    max_header_bytes: int = 16 * 1024
    header_timeout_s: float = 10.0
    idle_timeout_s: float = 75.0
    max_connections: int = 10_000

    def handler_options(self) -> dict[str, Any]:
        """aiohttp's own per-line limits and keep-alive timeout, from the same settings."""
        return {"keepalive_timeout": self.idle_timeout_s, "max_line_size": self.max_header_bytes,
                "max_field_size": self.max_header_bytes}


def _raw_error(status: int, reason: str, message: str) -> bytes:
    body = json.dumps({"error": message}).encode()
    return (f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json; charset=utf-8\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode() + body


class GuardedHandler(web.RequestHandler):
    """aiohttp's request handler with a deadline and a size bound on each request head.

    It uses a few of ``RequestHandler``'s private parts (``_request_count``, ``_messages``,
    ``_request_in_progress``, ``_ErrInfo``) to know when the parser completed a head and to answer an
    oversized one; ``tests/control/test_hostile_limits.py`` and ``tests/edge/test_hostile_limits.py``
    exercise it over real sockets, so an aiohttp release that changes them fails there.
    """

    def __init__(self, manager: web.Server, factory: GuardedFactory, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._guard = factory
        self._head_timer: asyncio.TimerHandle | None = None
        self._head_bytes = 0
        self._last_payload: Any = None  # the body stream of the last request whose head completed
        self._counted = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._guard.open += 1
        self._counted = True
        super().connection_made(transport)

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._counted:
            self._counted = False
            self._guard.open -= 1
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._force_close or self._close:
            return
        if (self._head_timer is None and data
                and (self._last_payload is None or self._last_payload.is_eof())):
            # A new request head starts here (the previous request's body, if any, is complete).
            self._last_payload = None
            self._head_bytes = 0
            self._head_timer = self._loop.call_later(self._guard.limits.header_timeout_s, self._head_expired)
        if self._head_timer is not None:
            self._head_bytes += len(data)
        before = self._request_count
        super().data_received(data)
        if self._request_count != before:  # the parser completed one or more heads
            self._disarm()
            self._last_payload = self._messages[-1][1] if self._messages else None
            self._check_sizes(self._request_count - before)
        elif self._head_timer is not None and self._head_bytes > self._guard.limits.max_header_bytes:
            self._refuse(431, "Request Header Fields Too Large", "request header too large", "limits")

    def _check_sizes(self, new: int) -> None:
        """Count what the parser refused; a head that arrived whole in one read is bounded too (431)."""
        limit = self._guard.limits.max_header_bytes
        messages = self._messages
        for i in range(max(0, len(messages) - new), len(messages)):
            msg = messages[i][0]
            if isinstance(msg, _ErrInfo):
                self._guard.refused("limits" if isinstance(msg.exc, LineTooLong) else "malformed")
            elif _head_size(msg) > limit:
                self._guard.refused("limits")
                messages[i] = (_ErrInfo(status=431, exc=_HeadTooLarge(), message="request header too large"),
                               EMPTY_PAYLOAD)

    def log_exception(self, *args: Any, **kw: Any) -> None:
        """A malformed request is the client's fault: one debug line (it is counted), not a traceback."""
        exc = kw.get("exc_info")
        if isinstance(exc, HttpProcessingError):
            log.debug("refused a request: %s", str(exc).replace("\n", " ")[:200])
            return
        super().log_exception(*args, **kw)

    def _disarm(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_expired(self) -> None:
        self._head_timer = None
        if not (self._force_close or self._close):
            self._refuse(408, "Request Timeout", "request header not received in time", "timeout")

    def _refuse(self, status: int, reason: str, message: str, cause: str) -> None:
        self._disarm()
        self._guard.refused(cause)
        transport = self.transport
        # Write the error only when no response is being written on this connection.
        if transport is not None and not transport.is_closing() and not self._request_in_progress \
                and not self._messages:
            transport.write(_raw_error(status, reason, message))
        self.force_close()


class _HeadTooLarge(HttpProcessingError):
    code = 431
    message = "request header too large"


def _head_size(msg: RawRequestMessage) -> int:
    """The request head's size on the wire, near enough (request line, fields, line ends)."""
    return len(msg.method) + len(msg.path) + 12 + sum(len(k) + len(v) + 4 for k, v in msg.raw_headers)


class _Refuser(asyncio.Protocol):
    """A connection over the limit: 503, then closed."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        transport.write(_raw_error(503, "Service Unavailable", "too many connections"))
        transport.close()

    def data_received(self, data: bytes) -> None:
        pass


class GuardedFactory:
    """The per-connection protocol factory: a :class:`GuardedHandler`, or a 503 past the connection cap."""

    def __init__(self, server: web.Server, limits: ConnectionLimits, on_refused: OnRefused | None = None) -> None:
        self.server = server
        self.limits = limits
        self.on_refused = on_refused
        self.open = 0

    def refused(self, cause: str) -> None:
        if self.on_refused is not None:
            self.on_refused(cause)

    def __call__(self) -> asyncio.Protocol:
        if self.open >= self.limits.max_connections:
            self.refused("connections")
            return _Refuser()
        # The same options aiohttp's own factory (web.Server.__call__) passes: timeouts, limits, logging.
        return GuardedHandler(self.server, self, loop=asyncio.get_running_loop(),
                              **self.server._kwargs)


class GuardedSite(web.BaseSite):
    """A TCP site whose connections are made by :class:`GuardedFactory` (``web.TCPSite`` otherwise)."""

    def __init__(self, runner: web.BaseRunner, host: str, port: int, limits: ConnectionLimits, *,
                 on_refused: OnRefused | None = None, reuse_port: bool = False, backlog: int = 1024) -> None:
        super().__init__(runner, backlog=backlog)
        self._host = host
        self._port = port
        self._limits = limits
        self._on_refused = on_refused
        self._reuse_port = reuse_port
        self.factory: GuardedFactory | None = None

    @property
    def name(self) -> str:
        return f"http://{self._host}:{self._port}"

    async def start(self) -> None:
        await super().start()
        server = self._runner.server
        assert server is not None
        self.factory = GuardedFactory(server, self._limits, self._on_refused)
        self._server = await asyncio.get_running_loop().create_server(
            self.factory, self._host, self._port, reuse_address=True, reuse_port=self._reuse_port or None,
            backlog=self._backlog)
