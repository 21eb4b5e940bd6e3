"""Steering ranking rules, reasons for every appliance, client location sources and hostile input."""

from __future__ import annotations

import dataclasses
import ipaddress
from pathlib import Path
from typing import Any

import maxminddb
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from mmdb_writer import MMDBWriter
from netaddr import IPSet  # type: ignore[import-untyped]

from control.prefixes import AddressError, PrefixError
from control.steering import (
    ApplianceView,
    GeoPoint,
    MmdbLocator,
    Reason,
    SteeringIndex,
    great_circle_km,
    validate_prefixes,
)
from shared.errors import InvalidInput

BERLIN = GeoPoint(52.52, 13.40)
FRANKFURT = GeoPoint(50.11, 8.68)
PARIS = GeoPoint(48.86, 2.35)
MADRID = GeoPoint(40.42, -3.70)
NEW_YORK = GeoPoint(40.71, -74.0)


def view(appliance_id: str, *, site: str = "s1", asn: int = 0, prefixes: tuple[str, ...] = (),
         location: GeoPoint | None = None, online: bool = True, draining: bool = False, load: float = 0.1,
         threshold: float = 1.0, titles: frozenset[str] = frozenset({"t1"})) -> ApplianceView:
    return ApplianceView(appliance_id, site, asn, prefixes, location, online, draining, load, threshold, titles)


def fleet() -> list[ApplianceView]:
    return [
        # ISP A (AS64500) in Berlin: one appliance announces the client's /24, one only the covering /16.
        view("a-narrow", site="ber", asn=64500, prefixes=("198.51.100.0/24",), location=BERLIN),
        view("a-wide", site="fra", asn=64500, prefixes=("198.51.0.0/16", "2001:db8:a::/48"), location=FRANKFURT),
        # Another ISP sharing the Berlin site.
        view("b-ber", site="ber", asn=64501, prefixes=("203.0.113.0/24",), location=BERLIN),
        # Far-away appliances of other networks.
        view("c-par", site="par", asn=64502, prefixes=("192.0.2.0/24",), location=PARIS),
        view("c-mad", site="mad", asn=64503, prefixes=(), location=MADRID),
        view("c-nyc", site="nyc", asn=64504, prefixes=(), location=NEW_YORK),
    ]


def test_embedded_then_network_then_site_then_distance() -> None:
    decision = SteeringIndex(fleet()).steer("198.51.100.7", "t1", count=6)
    assert decision.matched_prefix == "198.51.100.0/24"
    assert decision.appliance_ids == ["a-narrow", "a-wide", "b-ber", "c-par", "c-mad", "c-nyc"]
    assert [v.reason for v in decision.ranked] == [
        Reason.EMBEDDED_PREFIX, Reason.EMBEDDED_NETWORK, Reason.SAME_SITE, Reason.NEAREST, Reason.NEAREST,
        Reason.NEAREST]
    assert decision.location_source == "prefix_site" and decision.client_location == BERLIN
    assert decision.dropped == ()
    assert [v.rank for v in decision.ranked] == [1, 2, 3, 4, 5, 6]


def test_default_count_is_three_and_the_rest_are_explained() -> None:
    decision = SteeringIndex(fleet()).steer("198.51.100.7", "t1")
    assert len(decision.ranked) == 3
    assert {v.appliance_id for v in decision.dropped} == {"c-par", "c-mad", "c-nyc"}
    assert all(v.reason is Reason.BEYOND_COUNT and not v.kept for v in decision.dropped)
    lines = decision.explain_lines()
    assert len(lines) == 1 + 6 and "198.51.100.0/24" in lines[0]


def test_every_drop_reason() -> None:
    appliances = fleet()
    appliances[0] = dataclasses.replace(appliances[0], online=False)
    appliances[1] = dataclasses.replace(appliances[1], draining=True)
    appliances[2] = dataclasses.replace(appliances[2], load=0.95, load_threshold=0.9)
    appliances[3] = dataclasses.replace(appliances[3], titles=frozenset({"other"}))
    decision = SteeringIndex(appliances).steer("198.51.100.7", "t1")
    assert decision.appliance_ids == ["c-mad", "c-nyc"]
    reasons = {v.appliance_id: v.reason for v in decision.dropped}
    assert reasons == {"a-narrow": Reason.OFFLINE, "a-wide": Reason.DRAINING, "b-ber": Reason.OVERLOADED,
                       "c-par": Reason.NO_COPY}
    assert len(decision.ranked) + len(decision.dropped) == len(appliances)
    assert all(v.detail for v in decision.dropped)


def test_load_exactly_at_threshold_is_overloaded_and_load_breaks_ties() -> None:
    appliances = [view("x", load=1.0, threshold=1.0, location=BERLIN),
                  view("y", load=0.5, location=BERLIN), view("z", load=0.2, location=BERLIN)]
    decision = SteeringIndex(appliances).steer("10.0.0.1", "t1")
    assert decision.appliance_ids == ["z", "y"]
    assert decision.dropped[0].reason is Reason.OVERLOADED


def test_drain_ranks_an_embedded_appliance_out() -> None:
    index = SteeringIndex(fleet())
    assert index.steer("198.51.100.7", "t1").appliance_ids[0] == "a-narrow"
    drained = index.updated([dataclasses.replace(v, draining=v.appliance_id == "a-narrow") for v in fleet()])
    assert drained.prefixes is index.prefixes  # announcements unchanged: the table is reused
    assert drained.steer("198.51.100.7", "t1").appliance_ids[0] == "a-wide"


def test_prefix_changes_rebuild_the_table() -> None:
    index = SteeringIndex(fleet())
    moved = [dataclasses.replace(v, prefixes=("198.51.100.0/25",)) if v.appliance_id == "c-nyc" else v
             for v in fleet()]
    rebuilt = index.updated(moved)
    assert rebuilt.prefixes is not index.prefixes
    assert rebuilt.steer("198.51.100.7", "t1").appliance_ids[0] == "c-nyc"


def test_ipv6_and_mapped_clients() -> None:
    index = SteeringIndex(fleet())
    decision = index.steer("2001:db8:a::42", "t1")
    assert decision.matched_prefix == "2001:db8:a::/48" and decision.appliance_ids[:2] == ["a-wide", "a-narrow"]
    assert index.steer("::ffff:198.51.100.7", "t1").appliance_ids[0] == "a-narrow"


def test_unknown_client_without_location_orders_by_load_then_id() -> None:
    appliances = [view("b", load=0.3), view("a", load=0.3), view("c", load=0.1)]
    decision = SteeringIndex(appliances).steer("10.9.9.9", "t1")
    assert decision.matched_prefix is None and decision.location_source == "none"
    assert decision.appliance_ids == ["c", "a", "b"]
    assert all(v.distance_km is None for v in decision.ranked)


def _real_mmdb(path: Path) -> Path:
    """A real MaxMind-format database, written with mmdb-writer, shaped like GeoLite2-City."""
    writer = MMDBWriter(ip_version=6, database_type="GeoLite2-City", ipv4_compatible=True)
    writer.insert_network(IPSet(["10.0.0.0/31"]), {"location": {"latitude": MADRID.lat, "longitude": MADRID.lon}})
    writer.insert_network(IPSet(["10.0.0.2/32"]), {"country": {"iso_code": "ES"}})
    writer.insert_network(IPSet(["10.0.0.3/32"]), {"location": {"latitude": 999, "longitude": 0}})
    writer.insert_network(IPSet(["2001:db8:ff::/48"]), {"location": {"latitude": NEW_YORK.lat,
                                                                      "longitude": NEW_YORK.lon}})
    out = path / "city.mmdb"
    writer.to_db_file(str(out))
    return out


def test_geo_locator_beats_the_prefix_site_and_given_location_beats_both(tmp_path: Path) -> None:
    with maxminddb.open_database(str(_real_mmdb(tmp_path))) as reader:
        locator = MmdbLocator(reader)
        index = SteeringIndex(fleet())
        decision = index.steer("10.0.0.1", "t1", locator=locator)
        assert decision.location_source == "geoip" and decision.appliance_ids[0] == "c-mad"
        assert decision.client_location == MADRID
        assert index.steer("2001:db8:ff::1", "t1", locator=locator).appliance_ids[0] == "c-nyc"
        # Records without a usable location, and addresses not in the database, fall back.
        assert index.steer("10.0.0.2", "t1", locator=locator).location_source == "none"
        assert index.steer("10.0.0.3", "t1", locator=locator).location_source == "none"
        fallback = index.steer("198.51.100.7", "t1", locator=locator)
        assert fallback.location_source == "prefix_site" and fallback.client_location == BERLIN
        given_ = index.steer("10.0.0.1", "t1", locator=locator, client_location=NEW_YORK)
        assert given_.location_source == "given" and given_.appliance_ids[0] == "c-nyc"


def test_great_circle_distance() -> None:
    assert great_circle_km(BERLIN, PARIS) == pytest.approx(878, rel=0.01)
    assert great_circle_km(BERLIN, BERLIN) == 0.0
    assert great_circle_km(GeoPoint(0, 0), GeoPoint(0, 180)) == pytest.approx(20015, rel=0.001)


@settings(max_examples=80, deadline=None)
@given(st.data())
def test_ranked_answers_satisfy_the_rules(data: st.DataObject) -> None:
    n = data.draw(st.integers(1, 12))
    appliances = []
    for i in range(n):
        lat = data.draw(st.floats(-60, 60))
        lon = data.draw(st.floats(-179, 179))
        appliances.append(view(
            f"a{i}", site=f"s{data.draw(st.integers(0, 3))}", asn=data.draw(st.integers(0, 3)),
            prefixes=(f"10.{data.draw(st.integers(0, 3))}.0.0/16",) if data.draw(st.booleans()) else (),
            location=GeoPoint(lat, lon), online=data.draw(st.booleans()), draining=data.draw(st.booleans()),
            load=data.draw(st.floats(0, 2)), titles=frozenset(data.draw(st.sets(st.sampled_from(["t1", "t2"]))))))
    client = str(ipaddress.IPv4Address(0x0A000000 + data.draw(st.integers(0, 4 * 65536 - 1))))
    count = data.draw(st.integers(1, 5))
    decision = SteeringIndex(appliances).steer(client, "t1", count=count)
    by_id = {v.appliance_id: v for v in appliances}
    assert len(decision.ranked) + len(decision.dropped) == n
    assert len({v.appliance_id for v in (*decision.ranked, *decision.dropped)}) == n
    eligible = [v for v in appliances if v.online and not v.draining and v.load < v.load_threshold and "t1" in v.titles]
    assert len(decision.ranked) == min(count, len(eligible))
    for verdict in decision.ranked:
        chosen = by_id[verdict.appliance_id]
        assert chosen in eligible
    # Reference: the rules written out plainly over every appliance.
    ip = ipaddress.ip_address(client)
    covering = [(ipaddress.ip_network(p).prefixlen, v) for v in appliances for p in v.prefixes
                if ip in ipaddress.ip_network(p)]
    longest = max((length for length, _ in covering), default=None)
    owners = [v for length, v in covering if length == longest]
    where = next((o.location for o in owners if o.location), None)
    asns = {o.asn for o in owners} - {0}
    sites = {o.site for o in owners}

    def tier(v: ApplianceView) -> int:
        return 0 if v in owners else 1 if v.asn in asns else 2 if v.site in sites else 3

    def km(v: ApplianceView) -> float:
        return round(great_circle_km(where, v.location), 3) if where and v.location else float("inf")

    want = sorted((tier(v), km(v), v.load / v.load_threshold) for v in eligible)[:count]
    got = [(list(Reason).index(r.reason), km(by_id[r.appliance_id]),
            by_id[r.appliance_id].load / by_id[r.appliance_id].load_threshold) for r in decision.ranked]
    assert [(t, d) for t, d, _ in got] == [(t, d) for t, d, _ in want]


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"appliance_id": "../x"}, InvalidInput, "appliance id"),
        ({"site": "a/b"}, InvalidInput, "site"),
        ({"asn": -1}, InvalidInput, "ASN"),
        ({"asn": 2**32}, InvalidInput, "ASN"),
        ({"load": float("nan")}, InvalidInput, "load"),
        ({"load": -1.0}, InvalidInput, "load"),
        ({"load_threshold": 0.0}, InvalidInput, "threshold"),
        ({"prefixes": ("10.0.0.0/8",) * 200_001}, PrefixError, "at most"),
    ],
)
def test_bad_appliance_views_are_typed_errors(kwargs: dict[str, Any], error: type[Exception], message: str) -> None:
    base = dataclasses.asdict(view("ok"))
    base["titles"] = frozenset(base["titles"])
    base.update(kwargs)
    with pytest.raises(error, match=message):
        ApplianceView(**base)


def test_bad_fleet_and_request_inputs_are_typed_errors() -> None:
    with pytest.raises(PrefixError, match="host bits"):
        SteeringIndex([view("a", prefixes=("10.0.0.1/8",))])
    with pytest.raises(InvalidInput, match="twice"):
        SteeringIndex([view("a"), view("a")])
    with pytest.raises(InvalidInput, match="latitude"):
        GeoPoint(91.0, 0.0)
    with pytest.raises(InvalidInput, match="latitude"):
        GeoPoint(float("inf"), 0.0)
    index = SteeringIndex(fleet())
    with pytest.raises(AddressError):
        index.steer("999.1.1.1", "t1")
    with pytest.raises(AddressError):
        index.steer("x" * 10_000, "t1")
    with pytest.raises(InvalidInput, match="title id"):
        index.steer("10.0.0.1", "../../etc/passwd")
    with pytest.raises(InvalidInput, match="count"):
        index.steer("10.0.0.1", "t1", count=0)
    with pytest.raises(InvalidInput, match="count"):
        index.steer("10.0.0.1", "t1", count=10**9)
    assert validate_prefixes(["10.0.0.0/8", "2001:db8::/32"]) == ("10.0.0.0/8", "2001:db8::/32")
    with pytest.raises(PrefixError):
        validate_prefixes(["10.0.0.0/8", "bogus"])


def test_explain_false_returns_the_same_answer_without_the_explanation() -> None:
    index = SteeringIndex(fleet())
    full = index.steer("198.51.100.7", "t1")
    fast = index.steer("198.51.100.7", "t1", explain=False)
    assert fast.ranked == full.ranked and fast.dropped == ()
