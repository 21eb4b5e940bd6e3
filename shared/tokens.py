"""Signed, expiring URL tokens for edge content.

A token authorises one client network to fetch everything under one path prefix (a title) until an
expiry.  It sits in the URL *path* (``/v1/content/{token}/{title}/...``) so relative URIs inside HLS
and DASH manifests inherit it.  Form (URL-safe, no ``/``)::

    1.<key id>.<base64url(payload JSON)>.<base64url(HMAC-SHA256)>

The MAC covers ``1.<key id>.<payload>`` exactly as sent, and is checked (in constant time) before the
payload is parsed.  The payload holds ``e`` (expiry, Unix seconds), ``p`` (path prefix), ``c``
(client prefix in CIDR form) and optionally ``f`` (fallback base URLs for misses).  Keys rotate: the
signer uses its current key, the verifier accepts every key it still holds.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import ipaddress
import json
import re
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ConfigError, TokenError
from .files import write_private

MAX_TOKEN_LEN = 4096
_KID_RE = re.compile(r"[A-Za-z0-9_-]{1,16}")
_B64_RE = re.compile(r"[A-Za-z0-9_-]*")
MIN_KEY_BYTES = 16


def _b64e(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _b64d(text: str) -> bytes:
    if not _B64_RE.fullmatch(text) or len(text) % 4 == 1:
        raise TokenError("token is not valid base64url")
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raise TokenError("token is not valid base64url") from None


@dataclass(frozen=True)
class TokenKeys:
    """HMAC keys by id; ``current`` signs, all verify (old keys stay until tokens signed with them expire)."""

    keys: Mapping[str, bytes]
    current: str

    def __post_init__(self) -> None:
        if self.current not in self.keys:
            raise ConfigError(f"current token key {self.current!r} is not among the keys")
        for kid, key in self.keys.items():
            if not _KID_RE.fullmatch(kid):
                raise ConfigError(f"token key id {kid!r} must be 1-16 of [A-Za-z0-9_-]")
            if len(key) < MIN_KEY_BYTES:
                raise ConfigError(f"token key {kid!r} is shorter than {MIN_KEY_BYTES} bytes")

    @classmethod
    def generate(cls, kid: str = "k1") -> TokenKeys:
        return cls({kid: secrets.token_bytes(32)}, kid)

    def rotated(self, new_kid: str, *, keep: int = 2) -> TokenKeys:
        """A new current key; keeps the previous current key (and older ones, up to ``keep`` in all)."""
        order = [k for k in self.keys if k not in (self.current, new_kid)] + [self.current]
        old = order[-(keep - 1):] if keep > 1 else []
        keys = {k: self.keys[k] for k in old}
        keys[new_kid] = secrets.token_bytes(32)
        return TokenKeys(keys, new_kid)

    def to_json(self) -> str:
        return json.dumps({"current": self.current,
                           "keys": {k: _b64e(v) for k, v in self.keys.items()}}, indent=2)

    @classmethod
    def from_json(cls, text: str, source: str = "token keys") -> TokenKeys:
        try:
            doc = json.loads(text)
            keys = {str(k): _b64d(str(v)) for k, v in doc["keys"].items()}
            return cls(keys, str(doc["current"]))
        except (ValueError, KeyError, TypeError, AttributeError, TokenError) as exc:
            raise ConfigError(f"{source}: not a valid token key file ({exc.__class__.__name__})") from None

    @classmethod
    def load(cls, path: Path) -> TokenKeys:
        try:
            text = path.read_text()
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read token keys: {exc.strerror}") from None
        return cls.from_json(text, str(path))

    def save(self, path: Path) -> None:
        write_private(path, self.to_json())


@dataclass(frozen=True)
class Grant:
    """What a verified token allows."""

    path_prefix: str
    client_prefix: str
    expires: int
    key_id: str
    fallbacks: tuple[str, ...] = field(default=())


def _normalise_prefix(client_prefix: str) -> str:
    if client_prefix == "*":
        return client_prefix
    try:
        return str(ipaddress.ip_network(client_prefix, strict=False))
    except ValueError:
        raise TokenError(f"invalid client prefix {client_prefix[:60]!r}") from None


def sign(keys: TokenKeys, *, path_prefix: str, client_prefix: str, ttl_s: float,
         fallbacks: tuple[str, ...] = (), now: float | None = None) -> str:
    """A token for ``path_prefix`` (e.g. ``"title-1/"``) usable from ``client_prefix`` (CIDR or ``*``)."""
    if not path_prefix or path_prefix.startswith("/") or "\x00" in path_prefix:
        raise TokenError("path prefix must be relative and non-empty")
    payload: dict[str, Any] = {
        "e": int((time.time() if now is None else now) + ttl_s),
        "p": path_prefix,
        "c": _normalise_prefix(client_prefix),
    }
    if fallbacks:
        payload["f"] = list(fallbacks)
    body = f"1.{keys.current}.{_b64e(json.dumps(payload, separators=(',', ':')).encode())}"
    mac = hmac.new(keys.keys[keys.current], body.encode(), hashlib.sha256).digest()
    token = f"{body}.{_b64e(mac)}"
    if len(token) > MAX_TOKEN_LEN:
        raise TokenError("token too long (too many fallbacks?)")
    return token


def verify(keys: TokenKeys, token: str, *, path: str, client_ip: str, leeway_s: float = 30.0,
           now: float | None = None) -> Grant:
    """Check ``token`` for a request of ``path`` (relative, e.g. ``title-1/hls/master.m3u8``) from ``client_ip``.

    Raises :class:`TokenError` (and nothing else) when the token is malformed, forged, signed with an
    unknown key, expired beyond ``leeway_s``, or used outside its path or client prefix.
    """
    if not isinstance(token, str) or len(token) > MAX_TOKEN_LEN:
        raise TokenError("token missing or too long")
    parts = token.split(".")
    if len(parts) != 4 or parts[0] != "1":
        raise TokenError("token is malformed")
    _, kid, payload_b64, mac_b64 = parts
    key = keys.keys.get(kid) if _KID_RE.fullmatch(kid) else None
    if key is None:
        raise TokenError("token signed with an unknown key")
    mac = _b64d(mac_b64)
    expected = hmac.new(key, f"1.{kid}.{payload_b64}".encode(), hashlib.sha256).digest()
    if not hmac.compare_digest(mac, expected):
        raise TokenError("token signature does not verify")
    try:
        doc = json.loads(_b64d(payload_b64))
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise TokenError("token payload is malformed") from None
    if not isinstance(doc, dict):
        raise TokenError("token payload is malformed")
    exp, prefix, cprefix, fb = doc.get("e"), doc.get("p"), doc.get("c"), doc.get("f", [])
    if (isinstance(exp, bool) or not isinstance(exp, int) or not isinstance(prefix, str)
            or not isinstance(cprefix, str) or not isinstance(fb, list)
            or not all(isinstance(u, str) for u in fb)):
        raise TokenError("token payload is malformed")
    current = time.time() if now is None else now
    if current > exp + leeway_s:
        raise TokenError("token expired")
    if not _path_within(path, prefix):
        raise TokenError("token does not cover this path")
    if cprefix != "*":
        try:
            net = ipaddress.ip_network(cprefix, strict=False)
            ip = ipaddress.ip_address(client_ip)
        except ValueError:
            raise TokenError("client address not allowed by token") from None
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None and net.version == 4:
            ip = ip.ipv4_mapped
        if ip.version != net.version or ip not in net:
            raise TokenError("client address not allowed by token")
    return Grant(prefix, cprefix, exp, kid, tuple(fb))


def _path_within(path: str, prefix: str) -> bool:
    # Defence in depth: callers pass canonical paths, but a dot segment, a backslash or a NUL must
    # never be able to step out of the prefix the token grants.
    if not prefix or "\\" in path or "\x00" in path:
        return False
    segments = path.split("/")
    if any(seg in ("", ".", "..") for seg in segments[:-1]) or segments[-1] in (".", ".."):
        return False
    if prefix.endswith("/"):
        return path.startswith(prefix)
    return path == prefix or path.startswith(prefix + "/")
