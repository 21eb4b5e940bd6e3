"""Operator tokens: stored as SHA-256 hashes with a role; checked by one middleware.

Roles: ``read`` may call every GET under ``/v1/``; ``admin`` may also write.  Tokens are random
(256 bits), so a plain SHA-256 is the right storage (no password-style stretching is needed).

The store holds the tokens.  :class:`TokenStore` is the bootstrap file (``operator-tokens.json``)
that ``nearcast demo`` and installers write before the control plane first starts; its entries are
imported into the store at startup, so the first admin never needs a token to create a token.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from aiohttp import web
from aiohttp.typedefs import Middleware

from shared.errors import ConfigError, Forbidden, NearcastError, Unauthorized
from shared.files import write_private

log = logging.getLogger(__name__)

Role = Literal["read", "admin"]
ROLES: tuple[Role, ...] = ("read", "admin")
TOKEN_PREFIX = "nct_"


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True)
class TokenEntry:
    name: str
    sha256: str
    role: Role


class TokenStore:
    def __init__(self, entries: list[TokenEntry]) -> None:
        self._by_hash = {e.sha256: e for e in entries}

    @classmethod
    def load(cls, path: Path) -> TokenStore:
        if not path.exists():
            return cls([])
        try:
            doc = json.loads(path.read_text())
            entries = []
            for item in doc["tokens"]:
                role = item["role"]
                if role not in ROLES:
                    raise ValueError(f"unknown role {role!r}")
                entries.append(TokenEntry(str(item["name"]), str(item["sha256"]), role))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ConfigError(f"{path}: not a valid operator token file: {exc}") from None
        return cls(entries)

    def save(self, path: Path) -> None:
        doc = {"tokens": [{"name": e.name, "sha256": e.sha256, "role": e.role} for e in self._by_hash.values()]}
        write_private(path, json.dumps(doc, indent=2))

    def add(self, name: str, role: Role) -> str:
        """Create a token; only its hash is kept. Returns the token (shown once)."""
        token = new_token()
        self._by_hash[token_hash(token)] = TokenEntry(name, token_hash(token), role)
        return token

    def check(self, token: str) -> TokenEntry | None:
        digest = token_hash(token)
        for known, entry in self._by_hash.items():
            if hmac.compare_digest(known, digest):
                return entry
        return None

    def __len__(self) -> int:
        return len(self._by_hash)

    def entries(self) -> list[TokenEntry]:
        return list(self._by_hash.values())


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


OPERATOR = web.RequestKey("operator", TokenEntry)
READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})

Checker = Callable[[str], Awaitable[TokenEntry | None]]
Limiter = Callable[[TokenEntry], None]
#: Records one audit row: (operator, method, path, route, status).
Auditor = Callable[[TokenEntry, str, str, str, int], Awaitable[None]]


def auth_middleware(check: Checker, public: Callable[[web.Request], bool], *, limit: Limiter | None = None,
                    audit: Auditor | None = None) -> Middleware:
    """Bearer tokens on everything not ``public``; only ``admin`` may use anything but GET/HEAD/OPTIONS.

    ``limit`` is called with the operator once the token is known (it raises to refuse: rate limits).
    ``audit`` is called after every write an operator token attempts, with the method, path, route and
    the status answered, refused (403 for a read-only token) and failed ones included; it decides what
    to record (the control plane skips successful writes whose handlers wrote a domain row themselves).
    """
    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if public(request):
            return await handler(request)
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token or len(token) > 256:
            raise Unauthorized("missing operator token (Authorization: Bearer ...)")
        entry = await check(token.strip())
        if entry is None:
            raise Unauthorized("invalid operator token")
        if limit is not None:
            limit(entry)
        request[OPERATOR] = entry
        if request.method in READ_METHODS or audit is None:
            if request.method not in READ_METHODS and entry.role != "admin":
                raise Forbidden(f"token {entry.name!r} is read-only")
            return await handler(request)
        status = 500
        try:
            if entry.role != "admin":
                raise Forbidden(f"token {entry.name!r} is read-only")
            response = await handler(request)
            status = response.status
            return response
        except NearcastError as exc:
            status = exc.http_status
            raise
        except web.HTTPException as exc:
            status = exc.status
            raise
        finally:
            resource = request.match_info.route.resource
            try:
                await audit(entry, request.method, request.path, resource.canonical if resource else "", status)
            except Exception:  # the write itself stands; a lost audit row must at least be loud
                log.exception("could not audit %s %s by %s", request.method, request.path, entry.name)

    return middleware
