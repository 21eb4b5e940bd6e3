"""From a steering decision to what a player receives, and who the client is.

Pure: the handler passes the peer address, the ``X-Forwarded-For`` header and the trusted proxies
in; no request object reaches here, so the trust rule is testable on its own.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass

from shared import tokens
from shared.errors import InvalidInput

from .prefixes import IPNetwork, parse_ip
from .store import TitleRecord

MAX_XFF = 2048


def trusted_networks(cidrs: Sequence[str]) -> tuple[IPNetwork, ...]:
    try:
        return tuple(ipaddress.ip_network(c, strict=False) for c in cidrs)
    except ValueError as exc:
        raise InvalidInput(f"http.trusted_proxies: {exc}") from None


def client_ip(peer: str | None, forwarded_for: str | None, trusted: Sequence[IPNetwork]) -> str:
    """The client's address: the peer, unless the peer is a trusted proxy.

    Behind trusted proxies, ``X-Forwarded-For`` is walked from the right (the entry our own proxy
    appended) and the first address not itself a trusted proxy is the client; anything to its left
    was written by the client and is not believed.
    """
    if peer is None:
        raise InvalidInput("no peer address")
    address = parse_ip(peer)
    if not forwarded_for or not any(address in net for net in trusted if net.version == address.version):
        return str(address)
    if len(forwarded_for) > MAX_XFF:
        raise InvalidInput("X-Forwarded-For is too long")
    for hop in reversed([h.strip() for h in forwarded_for.split(",")]):
        try:
            ip = parse_ip(hop)
        except InvalidInput:
            raise InvalidInput("X-Forwarded-For from a trusted proxy holds something that is not an address") \
                from None
        if not any(ip in net for net in trusted if net.version == ip.version):
            return str(ip)
        address = ip
    return str(address)


def client_prefix(ip: str) -> str:
    """Tokens are bound to the client's /24 (IPv4) or /48 (IPv6): NAT pools and privacy addresses move."""
    parsed = parse_ip(ip)
    length = 24 if parsed.version == 4 else 48
    return str(ipaddress.ip_network(f"{parsed}/{length}", strict=False))


@dataclass(frozen=True)
class PlayUrl:
    appliance_id: str
    hls: str
    dash: str | None


def play_urls(keys: tokens.TokenKeys, title: TitleRecord, ranked: Sequence[tuple[str, str]], ip: str,
              ttl_s: float, now: float | None = None) -> list[PlayUrl]:
    """Signed manifest URLs on each ranked ``(appliance id, base URL)``; the path carries the token."""
    out: list[PlayUrl] = []
    prefix = client_prefix(ip)
    for appliance_id, base in ranked:
        token = tokens.sign(keys, path_prefix=f"{title.title_id}/", client_prefix=prefix, ttl_s=ttl_s, now=now)
        root = f"{base.rstrip('/')}/v1/content/{token}/{title.title_id}"
        out.append(PlayUrl(appliance_id, f"{root}/{title.hls}", f"{root}/{title.dash}" if title.dash else None))
    return out
