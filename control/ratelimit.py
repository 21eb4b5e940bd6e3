"""Rate limits on the control API: token buckets per operator token and per client address.

Two classes of caller, two budgets (``[ratelimit]`` settings; a rate of 0 turns a class off):

- ``operator``: every request made with an operator token, keyed by the token's name, checked by
  the auth middleware once the token is known (:func:`control.auth.auth_middleware`'s ``limit``).
- ``client``: the public routes a player or a would-be appliance calls without a token
  (``/v1/play``, ``/v1/events``, the ClearKey license, ``/v1/enroll``, ``/v1/edges``), keyed by the
  client's address (the one ``/v1/play`` steers by, so a trusted proxy's clients are told apart;
  IPv6 by its /64, which is what one subscriber holds), and failed operator logins by the same key,
  so guessing tokens costs a budget too.

Routes appliances use for fills and rows (origin files, file sets, bundles, artwork, profile rows)
are not limited here: they are signed or token-checked, and a whole ISP's viewers reach them
through one appliance address.  A refused request gets 429 with ``Retry-After`` (whole seconds
until a token is back) and is counted in ``nearcast_control_rate_limited_total{class}``.

The buckets are pure (:class:`TokenBuckets` takes the time as an argument); the table is bounded
(least recently used keys are forgotten first, which only ever gives a forgotten key a full bucket).
"""

from __future__ import annotations

import ipaddress
import json
import math
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aiohttp import web
from aiohttp.typedefs import Middleware
from prometheus_client import CollectorRegistry, Counter

from shared.errors import InvalidInput, Unauthorized

CLIENT_PATHS = frozenset({"/v1/events", "/v1/enroll", "/v1/edges"})
CLIENT_PREFIXES = ("/v1/play/", "/v1/license/")
MAX_KEYS = 100_000

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class TokenBuckets:
    """One token bucket per key: ``rate`` tokens a second, at most ``burst`` saved up."""

    def __init__(self, rate: float, burst: float, *, max_keys: int = MAX_KEYS) -> None:
        self.rate = rate
        self.burst = max(burst, 1.0)
        self.max_keys = max_keys
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # key -> (tokens, at)

    @property
    def enabled(self) -> bool:
        return self.rate > 0

    def take(self, key: str, now: float) -> float:
        """Spend a token for ``key``: 0.0 if there was one, else the seconds until there is."""
        if not self.enabled:
            return 0.0
        tokens, at = self._buckets.pop(key, (self.burst, now))
        tokens = min(self.burst, tokens + max(0.0, now - at) * self.rate)
        if tokens >= 1.0:
            tokens -= 1.0
            wait = 0.0
        else:
            wait = (1.0 - tokens) / self.rate
        self._buckets[key] = (tokens, now)
        if len(self._buckets) > self.max_keys:
            self._buckets.popitem(last=False)
        return wait

    def __len__(self) -> int:
        return len(self._buckets)


@dataclass
class RateLimits:
    """The two budgets and the refusal counter; one per control plane."""

    operator: TokenBuckets
    client: TokenBuckets
    refused: Counter
    clock: Callable[[], float] = time.monotonic

    @classmethod
    def create(cls, registry: CollectorRegistry, *, operator_rate: float, operator_burst: float,
               client_rate: float, client_burst: float) -> RateLimits:
        counter = Counter("nearcast_control_rate_limited_total", "API requests refused with 429, by class "
                          "(operator: per token, client: per client address)", ["class"], registry=registry)
        return cls(TokenBuckets(operator_rate, operator_burst), TokenBuckets(client_rate, client_burst), counter)

    def check(self, kind: str, key: str) -> None:
        """Raise 429 (with ``Retry-After``) when ``key`` of class ``kind`` has no token left."""
        buckets = self.operator if kind == "operator" else self.client
        wait = buckets.take(key, self.clock())
        if wait > 0:
            self.refused.labels(kind).inc()
            raise too_many_requests(wait)


def too_many_requests(wait_s: float) -> web.HTTPTooManyRequests:
    """A JSON 429; its content type makes the error middleware pass it on with its headers."""
    retry = max(1, math.ceil(wait_s))
    return web.HTTPTooManyRequests(
        text=json.dumps({"error": "rate limit exceeded", "retry_after_s": retry}),
        content_type="application/json", headers={"Retry-After": str(retry)})


def client_key(address: str) -> str:
    """The bucket key of a client address: the address itself, or its /64 for IPv6."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address[:64]
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((int(ip) >> 64 << 64, 64)))
    return str(ip)


def is_client_route(path: str) -> bool:
    return path in CLIENT_PATHS or path.startswith(CLIENT_PREFIXES)


def client_middleware(limits: RateLimits, address: Callable[[web.Request], str]) -> Middleware:
    """Per-address buckets for the public client routes, and for requests refused as unauthenticated.

    Placed outside the auth middleware: a request refused as unauthenticated (401) is charged to the
    caller's address after the fact, and answered 429 instead once that address's bucket is empty.
    """
    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if not limits.client.enabled:
            return await handler(request)
        limited = is_client_route(request.path)
        if limited:
            limits.check("client", _key(request, address))
        try:
            return await handler(request)
        except Unauthorized:
            if not limited:
                limits.check("client", _key(request, address))
            raise

    return middleware


def _key(request: web.Request, address: Callable[[web.Request], str]) -> str:
    try:
        return client_key(address(request))
    except InvalidInput:  # e.g. a trusted proxy's X-Forwarded-For that is not an address: its own peer
        return client_key(request.remote or "")
