"""Longest-prefix match: equal to a brute-force ``ipaddress`` scan, and strict about hostile input."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from control.prefixes import AddressError, PrefixError, PrefixTable, client_address, parse_ip, parse_prefix
from shared.errors import InvalidInput


def brute_force(entries: list[tuple[str, int]], address: str) -> tuple[str, tuple[int, ...]] | None:
    ip = parse_ip(address)
    best: ipaddress.IPv4Network | ipaddress.IPv6Network | None = None
    for text, _ in entries:
        net = ipaddress.ip_network(text)
        if net.version == ip.version and ip in net and (best is None or net.prefixlen > best.prefixlen):
            best = net
    if best is None:
        return None
    values: list[int] = []
    for text, value in entries:
        if ipaddress.ip_network(text) == best and value not in values:
            values.append(value)
    return str(best), tuple(values)


def _prefixes(bits: int) -> st.SearchStrategy[str]:
    # Few distinct "top" patterns so that random prefixes nest and overlap often.
    tops = st.integers(0, 7).map(lambda t: t << (bits - 3))
    noise = st.integers(0, (1 << bits) - 1)
    build = ipaddress.IPv4Network if bits == 32 else ipaddress.IPv6Network

    def make(top: int, rest: int, length: int) -> str:
        raw = top | (rest >> 3)
        masked = raw >> (bits - length) << (bits - length) if length else 0
        return str(build((masked, length)))

    return st.builds(make, tops, noise, st.integers(0, bits))


def _addresses(bits: int, prefixes: list[str], draw: st.DrawFn) -> list[str]:
    build = ipaddress.IPv4Address if bits == 32 else ipaddress.IPv6Address
    out = [str(build(draw(st.integers(0, (1 << bits) - 1)))) for _ in range(5)]
    for text in prefixes[:10]:
        net = ipaddress.ip_network(text)
        out.append(str(net.network_address + draw(st.integers(0, net.num_addresses - 1))))
    return out


@st.composite
def scenario(draw: st.DrawFn, bits: int) -> tuple[list[tuple[str, int]], list[str]]:
    prefixes = draw(st.lists(_prefixes(bits), min_size=0, max_size=40))
    entries = [(p, draw(st.integers(0, 5))) for p in prefixes]
    return entries, _addresses(bits, prefixes, draw)


@settings(max_examples=150, deadline=None)
@given(scenario(32))
def test_ipv4_lookup_equals_brute_force(case: tuple[list[tuple[str, int]], list[str]]) -> None:
    entries, addresses = case
    table = PrefixTable(entries)
    for address in addresses:
        hit = table.lookup(address)
        assert (None if hit is None else (str(hit.prefix), hit.values)) == brute_force(entries, address)


@settings(max_examples=150, deadline=None)
@given(scenario(128))
def test_ipv6_lookup_equals_brute_force(case: tuple[list[tuple[str, int]], list[str]]) -> None:
    entries, addresses = case
    table = PrefixTable(entries)
    for address in addresses:
        hit = table.lookup(address)
        assert (None if hit is None else (str(hit.prefix), hit.values)) == brute_force(entries, address)


def test_families_do_not_mix_and_mapped_ipv4_matches_ipv4() -> None:
    table = PrefixTable([("0.0.0.0/0", 1), ("2001:db8::/32", 2), ("192.0.2.0/24", 3)])
    assert table.lookup("::ffff:192.0.2.9") is not None
    hit = table.lookup("::ffff:192.0.2.9")
    assert hit is not None and hit.values == (3,) and str(hit.prefix) == "192.0.2.0/24"
    hit6 = table.lookup("2001:db8::1")
    assert hit6 is not None and hit6.values == (2,)
    assert table.lookup("2001:db9::1") is None
    assert len(table) == 3


def test_same_prefix_twice_keeps_both_owners_once() -> None:
    table = PrefixTable([("10.0.0.0/8", "a"), ("10.0.0.0/8", "b"), ("10.0.0.0/8", "a")])
    hit = table.lookup("10.1.2.3")
    assert hit is not None and hit.values == ("a", "b")
    assert len(table) == 2


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("10.0.0.1/8", "host bits"),
        ("2001:db8::1/32", "host bits"),
        ("10.0.0.0", "no length"),
        ("10.0.0.0/33", "not a valid"),
        ("300.0.0.0/8", "not a valid"),
        ("10.0.0.0/-1", "not a valid"),
        ("fe80::/10\x00", "characters"),
        ("10.0.0.0/8" + " " * 100, "at most"),
        ("\uff11\uff10.0.0.0/8", "characters"),
        (b"10.0.0.0/8", "string"),
        (None, "string"),
    ],
)
def test_bad_prefixes_are_typed_errors(text: object, message: str) -> None:
    with pytest.raises(PrefixError, match=message):
        parse_prefix(text)
    with pytest.raises(PrefixError):
        PrefixTable([(text, 1)])  # type: ignore[list-item]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "not an IPv4"),
        ("1.2.3", "not an IPv4"),
        ("1.2.3.4.5", "not an IPv4"),
        ("fe80::1%eth0", "zone id"),
        ("::g", "not an IPv4"),
        ("1" * 65, "at most"),
        ("10.0.0.1\n", "characters"),
        (12345, "string"),
    ],
)
def test_bad_addresses_are_typed_errors(text: object, message: str) -> None:
    with pytest.raises(AddressError, match=message):
        parse_ip(text)
    with pytest.raises(InvalidInput):
        PrefixTable([("0.0.0.0/0", 1)]).lookup(text)


def test_oversized_tables_are_refused() -> None:
    with pytest.raises(PrefixError, match="more than 100"):
        PrefixTable(((f"10.0.{i // 256}.{i % 256}/32", 1) for i in range(101)), max_entries=100)


def test_client_address_believes_forwarded_for_only_from_trusted_proxies() -> None:
    trusted: PrefixTable[object] = PrefixTable([("10.0.0.0/8", "lb"), ("2001:db8:ffff::/48", "lb6")])
    assert str(client_address("198.51.100.7", "203.0.113.9", trusted)) == "198.51.100.7"  # untrusted peer
    assert str(client_address("10.0.0.5", "203.0.113.9", trusted)) == "203.0.113.9"
    # A client-supplied entry left of the real client is ignored; trusted hops on the right are skipped.
    assert str(client_address("10.0.0.5", "1.2.3.4, 203.0.113.9, 10.0.0.7", trusted)) == "203.0.113.9"
    assert str(client_address("2001:db8:ffff::1", "::ffff:203.0.113.9", trusted)) == "203.0.113.9"
    assert str(client_address("10.0.0.5", "10.0.0.6", trusted)) == "10.0.0.6"  # only proxies: the farthest
    assert str(client_address("10.0.0.5", None, trusted)) == "10.0.0.5"
    assert str(client_address("10.0.0.5", "203.0.113.9", None)) == "10.0.0.5"
    with pytest.raises(AddressError):
        client_address("10.0.0.5", "203.0.113.9, bogus", trusted)
    with pytest.raises(AddressError, match="hops"):
        client_address("10.0.0.5", ",".join(["10.0.0.1"] * 33), trusted)
    with pytest.raises(AddressError, match="longer"):
        client_address("10.0.0.5", "1" * 5000, trusted)
    with pytest.raises(AddressError):
        client_address("not-an-ip", None, trusted)
