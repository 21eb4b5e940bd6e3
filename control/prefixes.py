"""Longest-prefix match over the prefixes appliances announce (IPv4 and IPv6).

The table keeps one hash map per prefix length, keyed by the network's top bits, and a lookup probes
the lengths present from the longest down.  Real announcement sets use few distinct lengths (a
dozen or two for IPv4, a few dozen for IPv6), so a lookup is a handful of dict probes on Python
ints, which beats walking a bit-by-bit trie in Python by a wide margin and builds in one pass.

Parsing is strict because prefixes and client addresses come from outside: a prefix with host bits
set is a configuration mistake worth reporting, not something to silently widen.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Generic, TypeAlias, TypeVar

from shared.errors import InvalidInput

IPAddress: TypeAlias = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork: TypeAlias = ipaddress.IPv4Network | ipaddress.IPv6Network

V = TypeVar("V")

#: Longest textual form accepted (a full IPv6 address with an embedded IPv4 tail and a prefix length
#: is under 50 characters); anything longer is rejected before it reaches the parser.
MAX_TEXT = 64
#: Upper bound on the size of one table, far above any real announcement set.
MAX_ENTRIES = 2_000_000


class AddressError(InvalidInput):
    """A client address is not a usable IPv4 or IPv6 address."""


class PrefixError(InvalidInput):
    """An announced prefix is malformed, has host bits set, or the set of prefixes is too large."""


def _text(value: object, what: str, error: type[InvalidInput]) -> str:
    if not isinstance(value, str):
        raise error(f"{what} must be a string, not {type(value).__name__}")
    if len(value) > MAX_TEXT:
        raise error(f"{what} is {len(value)} characters long; at most {MAX_TEXT} are allowed")
    if not value.isascii() or not value.isprintable():
        raise error(f"{what} {value!r} contains characters that never appear in an address")
    return value.strip()


def parse_ip(value: object) -> IPAddress:
    """A client address; IPv4-mapped IPv6 (``::ffff:192.0.2.1``) becomes the IPv4 address it carries.

    Dual-stack sockets report IPv4 peers in mapped form, and they must match IPv4 announcements.
    """
    if isinstance(value, ipaddress.IPv4Address | ipaddress.IPv6Address):
        address: IPAddress = value
    else:
        text = _text(value, "client address", AddressError)
        if "%" in text:
            raise AddressError(f"client address {text!r} carries a zone id; link-local peers cannot be steered")
        try:
            address = ipaddress.ip_address(text)
        except ValueError as exc:
            raise AddressError(f"{text!r} is not an IPv4 or IPv6 address") from exc
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def parse_prefix(value: object) -> IPNetwork:
    """An announced prefix in CIDR form; host bits set is an error, not a silent widening."""
    if isinstance(value, ipaddress.IPv4Network | ipaddress.IPv6Network):
        return value
    text = _text(value, "prefix", PrefixError)
    if "/" not in text:
        raise PrefixError(f"prefix {text!r} has no length; write it in CIDR form such as 192.0.2.0/24")
    try:
        return ipaddress.ip_network(text, strict=True)
    except ValueError as exc:
        reason = "has host bits set" if "host bits" in str(exc) else "is not a valid IPv4 or IPv6 prefix"
        raise PrefixError(f"prefix {text!r} {reason}") from exc


@dataclass(frozen=True)
class Match(Generic[V]):
    """The most specific prefix covering an address, and every value announced with it."""

    prefix: IPNetwork
    values: tuple[V, ...]


class _Family(Generic[V]):
    """The per-length maps of one address family."""

    __slots__ = ("bits", "lengths", "maps")

    def __init__(self, bits: int) -> None:
        self.bits = bits
        self.maps: dict[int, dict[int, tuple[V, ...]]] = {}
        self.lengths: tuple[int, ...] = ()

    def add(self, network: int, length: int, value: V) -> bool:
        by_key = self.maps.setdefault(length, {})
        key = network >> (self.bits - length)
        held = by_key.get(key, ())
        if value in held:
            return False
        by_key[key] = (*held, value)
        return True

    def seal(self) -> None:
        self.lengths = tuple(sorted(self.maps, reverse=True))

    def lookup(self, address: int) -> tuple[int, tuple[V, ...]] | None:
        bits = self.bits
        maps = self.maps
        for length in self.lengths:
            hit = maps[length].get(address >> (bits - length))
            if hit is not None:
                return length, hit
        return None


class PrefixTable(Generic[V]):
    """An immutable longest-prefix-match table from announced prefixes to the values announcing them.

    Several values may announce the same prefix (two appliances of one ISP); all of them are
    returned together, in the order they were first added.
    """

    def __init__(self, entries: Iterable[tuple[str | IPNetwork, V]] = (), *, max_entries: int = MAX_ENTRIES) -> None:
        self._v4: _Family[V] = _Family(32)
        self._v6: _Family[V] = _Family(128)
        self._size = 0
        for prefix, value in entries:
            network = parse_prefix(prefix)
            family = self._v4 if network.version == 4 else self._v6
            if family.add(int(network.network_address), network.prefixlen, value):
                self._size += 1
                if self._size > max_entries:
                    raise PrefixError(f"more than {max_entries} prefix announcements; refusing to build the table")
        self._v4.seal()
        self._v6.seal()

    def __len__(self) -> int:
        """The number of distinct (prefix, value) announcements."""
        return self._size

    def lookup(self, address: object) -> Match[V] | None:
        """The longest announced prefix covering ``address``, or ``None`` when nothing covers it."""
        ip = parse_ip(address)
        family = self._v4 if ip.version == 4 else self._v6
        hit = family.lookup(int(ip))
        if hit is None:
            return None
        length, values = hit
        network_int = (int(ip) >> (family.bits - length)) << (family.bits - length) if length else 0
        network: IPNetwork
        if ip.version == 4:
            network = ipaddress.IPv4Network((network_int, length))
        else:
            network = ipaddress.IPv6Network((network_int, length))
        return Match(network, values)


#: Bounds on an ``X-Forwarded-For`` header worth parsing; a longer chain is an attack or a loop.
MAX_FORWARDED_CHARS = 4096
MAX_FORWARDED_HOPS = 32


def client_address(peer: object, forwarded_for: str | None, trusted_proxies: PrefixTable[object] | None) -> IPAddress:
    """The client's address: the socket peer, unless that peer is a trusted proxy.

    Behind trusted proxies the ``X-Forwarded-For`` chain is read from the right (the hop nearest to
    us) and the first address that is not itself a trusted proxy is the client.  Entries to the left
    of it were written by the client and are never believed, so a client cannot steer itself into
    another ISP's network by sending the header.
    """
    address = parse_ip(peer)
    if trusted_proxies is None or trusted_proxies.lookup(address) is None or not forwarded_for:
        return address
    if not isinstance(forwarded_for, str) or len(forwarded_for) > MAX_FORWARDED_CHARS:
        raise AddressError(f"X-Forwarded-For is longer than {MAX_FORWARDED_CHARS} characters")
    hops = [h.strip() for h in forwarded_for.split(",")]
    if len(hops) > MAX_FORWARDED_HOPS:
        raise AddressError(f"X-Forwarded-For has {len(hops)} hops; at most {MAX_FORWARDED_HOPS} are accepted")
    for hop in reversed(hops):
        address = parse_ip(hop)
        if trusted_proxies.lookup(address) is None:
            return address
    return address
