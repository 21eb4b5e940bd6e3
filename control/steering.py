"""Steering: which appliances a client should stream a title from, and why every other one was not chosen.

Pure: the API and CLI build a :class:`SteeringIndex` from the registry's current view of the fleet
(rebuilt when liveness, load or holdings change, reusing the prefix table when announcements did not)
and call :func:`steer`.  The order mirrors how ISP-embedded caches are meant to be used: first the
appliances inside the client's own network (those announcing the client's most specific prefix, then
the rest of the same ASN), then peers at the same site, then everything else by great-circle distance.
Only appliances that are online, not draining, under their load threshold and hold a complete copy of
the title are candidates.  The per-appliance work is vectorised with numpy, so a fleet of thousands
costs well under a millisecond per decision; a full explanation is built only when asked for.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Literal, Protocol

import numpy as np
import numpy.typing as npt

from shared.errors import InvalidInput
from shared.ids import check_id

from .prefixes import IPAddress, PrefixError, PrefixTable, parse_ip, parse_prefix

EARTH_RADIUS_KM = 6371.0088
MAX_APPLIANCES = 100_000
MAX_PREFIXES_PER_APPLIANCE = 200_000
MAX_ANSWERS = 50


@dataclass(frozen=True)
class GeoPoint:
    lat: float
    lon: float

    def __post_init__(self) -> None:
        if not (_finite(self.lat) and -90.0 <= self.lat <= 90.0 and _finite(self.lon) and -180.0 <= self.lon <= 180.0):
            raise InvalidInput(f"location ({self.lat!r}, {self.lon!r}) is not a latitude/longitude in degrees")


class GeoLocator(Protocol):
    """Where a client address is; ``None`` when unknown (the site of the matched prefix is used then)."""

    def locate(self, address: IPAddress) -> GeoPoint | None: ...


class MmdbReader(Protocol):
    def get(self, ip_address: str, /) -> Any: ...


class MmdbLocator:
    """A :class:`GeoLocator` over a MaxMind-format database reader (``maxminddb.open_database(path)``).

    The shell opens the file; this adapter only reads records, and treats records without a usable
    ``location`` (anonymous networks, country-only databases) as unknown rather than as errors.
    """

    def __init__(self, reader: MmdbReader) -> None:
        self._reader = reader

    def locate(self, address: IPAddress) -> GeoPoint | None:
        record = self._reader.get(str(address))
        location = record.get("location") if isinstance(record, Mapping) else None
        if not isinstance(location, Mapping):
            return None
        lat, lon = location.get("latitude"), location.get("longitude")
        if not (isinstance(lat, int | float) and isinstance(lon, int | float)):
            return None
        try:
            return GeoPoint(float(lat), float(lon))
        except InvalidInput:
            return None


def _finite(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


@dataclass(frozen=True)
class ApplianceView:
    """What steering needs to know about one appliance, as the registry sees it now."""

    appliance_id: str
    site: str
    asn: int
    prefixes: tuple[str, ...]
    location: GeoPoint | None
    online: bool
    draining: bool
    load: float
    load_threshold: float
    titles: frozenset[str] = field(default_factory=frozenset)

    def __post_init__(self) -> None:
        check_id(self.appliance_id, "appliance id")
        check_id(self.site, "site")
        if not isinstance(self.asn, int) or isinstance(self.asn, bool) or not 0 <= self.asn < 2**32:
            raise InvalidInput(f"appliance {self.appliance_id}: ASN {self.asn!r} is not in 0..2^32-1")
        if not (_finite(self.load) and self.load >= 0):
            raise InvalidInput(f"appliance {self.appliance_id}: load {self.load!r} must be finite and >= 0")
        if not (_finite(self.load_threshold) and self.load_threshold > 0):
            raise InvalidInput(f"appliance {self.appliance_id}: load threshold {self.load_threshold!r} must be > 0")
        if len(self.prefixes) > MAX_PREFIXES_PER_APPLIANCE:
            raise PrefixError(f"appliance {self.appliance_id} announces {len(self.prefixes)} prefixes; "
                              f"at most {MAX_PREFIXES_PER_APPLIANCE} are allowed")


class Reason(StrEnum):
    EMBEDDED_PREFIX = "embedded_prefix"
    EMBEDDED_NETWORK = "embedded_network"
    SAME_SITE = "same_site"
    NEAREST = "nearest"
    BEYOND_COUNT = "beyond_count"
    OFFLINE = "offline"
    DRAINING = "draining"
    OVERLOADED = "overloaded"
    NO_COPY = "no_copy"


_TIER_REASONS = (Reason.EMBEDDED_PREFIX, Reason.EMBEDDED_NETWORK, Reason.SAME_SITE, Reason.NEAREST)
LocationSource = Literal["given", "geoip", "prefix_site", "none"]


@dataclass(frozen=True)
class Verdict:
    """One appliance's fate in one decision: ``reason`` is the machine code, ``detail`` the sentence."""

    appliance_id: str
    kept: bool
    reason: Reason
    detail: str
    rank: int | None = None
    distance_km: float | None = None


@dataclass(frozen=True)
class SteeringDecision:
    client_ip: str
    title_id: str
    matched_prefix: str | None
    client_location: GeoPoint | None
    location_source: LocationSource
    ranked: tuple[Verdict, ...]
    #: Every appliance not in ``ranked``; empty when the decision was made with ``explain=False``.
    dropped: tuple[Verdict, ...] = ()

    @property
    def appliance_ids(self) -> list[str]:
        return [v.appliance_id for v in self.ranked]

    def explain_lines(self) -> list[str]:
        """The operator's view: the answer first, then every appliance left out and why."""
        head = f"client {self.client_ip} title {self.title_id}: prefix {self.matched_prefix or 'none matched'}"
        where = (f"location {self.client_location.lat:.3f},{self.client_location.lon:.3f} ({self.location_source})"
                 if self.client_location else "location unknown")
        lines = [f"{head}; {where}"]
        lines += [f"  #{v.rank} {v.appliance_id}: {v.reason.value} - {v.detail}" for v in self.ranked]
        lines += [f"  -- {v.appliance_id}: {v.reason.value} - {v.detail}" for v in self.dropped]
        return lines


def great_circle_km(a: GeoPoint, b: GeoPoint) -> float:
    lat1, lon1, lat2, lon2 = map(math.radians, (a.lat, a.lon, b.lat, b.lon))
    h = math.sin((lat2 - lat1) / 2) ** 2 + math.cos(lat1) * math.cos(lat2) * math.sin((lon2 - lon1) / 2) ** 2
    return 2 * EARTH_RADIUS_KM * math.asin(min(1.0, math.sqrt(h)))


class SteeringIndex:
    """An immutable snapshot of the fleet prepared for fast decisions."""

    def __init__(self, appliances: Sequence[ApplianceView], *, prefixes: PrefixTable[int] | None = None) -> None:
        if len(appliances) > MAX_APPLIANCES:
            raise InvalidInput(f"{len(appliances)} appliances; at most {MAX_APPLIANCES} are allowed")
        self.views = tuple(appliances)
        self._position: dict[str, int] = {}
        for i, view in enumerate(self.views):
            if not isinstance(view, ApplianceView):
                raise InvalidInput(f"appliance #{i} is a {type(view).__name__}, not an ApplianceView")
            if view.appliance_id in self._position:
                raise InvalidInput(f"appliance id {view.appliance_id!r} appears twice")
            self._position[view.appliance_id] = i
        self._announcements = tuple(v.prefixes for v in self.views)
        self.prefixes = prefixes if prefixes is not None else PrefixTable(
            (p, i) for i, v in enumerate(self.views) for p in v.prefixes)
        n = len(self.views)
        site_codes: dict[str, int] = {}
        self._site = np.array([site_codes.setdefault(v.site, len(site_codes)) for v in self.views], dtype=np.int64)
        self._site_codes = site_codes
        asn_codes: dict[int, int] = {0: 0}
        self._asn_code = np.array([asn_codes.setdefault(v.asn, len(asn_codes)) for v in self.views], dtype=np.int64)
        self._asn_count = len(asn_codes)
        self._asn_zero = 0
        self._lat = np.radians(np.array([v.location.lat if v.location else np.nan for v in self.views], dtype=float))
        self._lon = np.radians(np.array([v.location.lon if v.location else np.nan for v in self.views], dtype=float))
        self._cos_lat = np.cos(self._lat)
        self._load_ratio = np.array([v.load / v.load_threshold for v in self.views], dtype=float)
        self._healthy = np.array([_static_drop(v) is None for v in self.views], dtype=bool)
        order = sorted(range(n), key=lambda i: self.views[i].appliance_id)
        self._id_rank = np.empty(n, dtype=np.int64)
        self._id_rank[order] = np.arange(n)
        holders: dict[str, list[int]] = {}
        for i, view in enumerate(self.views):
            for title in view.titles:
                holders.setdefault(title, []).append(i)
        self._holders = {t: np.array(ix, dtype=np.int64) for t, ix in holders.items()}
        self._static_drop = [_static_drop(v) for v in self.views]

    def updated(self, appliances: Sequence[ApplianceView]) -> SteeringIndex:
        """A new snapshot; the prefix table is reused when nobody's announcements changed."""
        same = len(appliances) == len(self.views) and all(
            a.appliance_id == b.appliance_id and a.prefixes == p
            for a, b, p in zip(appliances, self.views, self._announcements, strict=True))
        return SteeringIndex(appliances, prefixes=self.prefixes if same else None)

    def _client_location(self, ip: IPAddress, owners: tuple[int, ...], given: GeoPoint | None,
                         locator: GeoLocator | None) -> tuple[GeoPoint | None, LocationSource]:
        if given is not None:
            return given, "given"
        if locator is not None:
            found = locator.locate(ip)
            if found is not None:
                return found, "geoip"
        for i in owners:
            site_location = self.views[i].location
            if site_location is not None:
                return site_location, "prefix_site"
        return None, "none"

    def _distances(self, where: GeoPoint | None, ix: npt.NDArray[np.int64]) -> npt.NDArray[np.float64]:
        if where is None:
            return np.full(len(ix), np.inf)
        lat, lon = math.radians(where.lat), math.radians(where.lon)
        lats, lons = self._lat[ix], self._lon[ix]
        h = np.sin((lats - lat) / 2) ** 2 + math.cos(lat) * self._cos_lat[ix] * np.sin((lons - lon) / 2) ** 2
        d: npt.NDArray[np.float64] = 2 * EARTH_RADIUS_KM * np.arcsin(np.sqrt(np.minimum(1.0, h)))
        return np.where(np.isnan(d), np.inf, d)

    def steer(self, client_ip: object, title_id: str | None, *, count: int = 3,
              client_location: GeoPoint | None = None, locator: GeoLocator | None = None,
              explain: bool = True) -> SteeringDecision:
        """Rank the appliances for ``client_ip`` and ``title_id``; see the module docstring for the order.

        ``title_id=None`` ranks every healthy appliance whatever it holds: the edge a client should ask for
        things that are not titles (its homepage rows).
        """
        ip = parse_ip(client_ip)
        if title_id is not None:
            check_id(title_id, "title id")
        if not isinstance(count, int) or isinstance(count, bool) or not 1 <= count <= MAX_ANSWERS:
            raise InvalidInput(f"count must be an integer in 1..{MAX_ANSWERS}, not {count!r}")
        match = self.prefixes.lookup(ip)
        owners: tuple[int, ...] = match.values if match else ()
        where, source = self._client_location(ip, owners, client_location, locator)
        # Only healthy holders are ranked, so the per-request work scales with them, not the fleet.
        held_by = self._holders.get(title_id) if title_id is not None else np.arange(len(self.views), dtype=np.int64)
        if held_by is None:
            held_by = np.zeros(0, dtype=np.int64)
        candidates = held_by[self._healthy[held_by]]
        tier = np.full(len(candidates), 3, dtype=np.int64)
        if owners and len(candidates):
            # Boolean lookup tables indexed by code are much cheaper than np.isin per request.
            owner_ix = np.array(owners, dtype=np.int64)
            site_hit = np.zeros(len(self._site_codes), dtype=bool)
            site_hit[self._site[owner_ix]] = True
            tier[site_hit[self._site[candidates]]] = 2
            asn_hit = np.zeros(self._asn_count, dtype=bool)
            asn_hit[self._asn_code[owner_ix]] = True
            asn_hit[self._asn_zero] = False  # ASN 0 means "unknown", never "the same network"
            tier[asn_hit[self._asn_code[candidates]]] = 1
            owner_hit = np.zeros(len(self.views), dtype=bool)
            owner_hit[owner_ix] = True
            tier[owner_hit[candidates]] = 0
        distance = self._distances(where, candidates)
        order = np.lexsort((self._id_rank[candidates], self._load_ratio[candidates], distance, tier))
        prefix = match_text(match)
        ranked = tuple(self._kept(int(candidates[j]), r + 1, _TIER_REASONS[tier[j]], float(distance[j]), prefix)
                       for r, j in enumerate(order[:count].tolist()))
        dropped: tuple[Verdict, ...] = ()
        if explain:
            surplus = [Verdict(self.views[candidates[j]].appliance_id, False, Reason.BEYOND_COUNT,
                               f"eligible ({_TIER_REASONS[tier[j]].value}, rank {r + count + 1}) but only {count} "
                               "answers were asked for", None, _km(distance[j]))
                       for r, j in enumerate(order[count:].tolist())]
            eligible = set(candidates.tolist())
            no_copy = f"holds no complete copy of {title_id}"
            others = [self._static_drop[i] or Verdict(v.appliance_id, False, Reason.NO_COPY, no_copy)
                      for i, v in enumerate(self.views) if i not in eligible]
            dropped = (*surplus, *others)
        return SteeringDecision(str(ip), title_id or "*", prefix, where, source, ranked, dropped)

    def _kept(self, i: int, rank: int, reason: Reason, distance: float, prefix: str | None) -> Verdict:
        view = self.views[i]
        km = _km(distance)
        far = f"{km:.0f} km away" if km is not None else "distance unknown"
        detail = {
            Reason.EMBEDDED_PREFIX: f"announces {prefix}, the client's most specific prefix; {far}",
            Reason.EMBEDDED_NETWORK: f"inside the client's network AS{view.asn}; {far}",
            Reason.SAME_SITE: f"at site {view.site}, where the client's network is served; {far}",
            Reason.NEAREST: far,
        }[reason]
        load = f"load {self._load_ratio[i]:.0%} of threshold"
        return Verdict(view.appliance_id, True, reason, f"{detail}; {load}", rank, km)


def _static_drop(view: ApplianceView) -> Verdict | None:
    """The request-independent reason an appliance is out, worked out once per snapshot."""
    if not view.online:
        return Verdict(view.appliance_id, False, Reason.OFFLINE, "offline (status, last will or TTL)")
    if view.draining:
        return Verdict(view.appliance_id, False, Reason.DRAINING, "draining on operator request")
    if view.load >= view.load_threshold:
        return Verdict(view.appliance_id, False, Reason.OVERLOADED,
                       f"load {view.load:g} at or above its threshold {view.load_threshold:g}")
    return None


def match_text(match: object) -> str | None:
    prefix = getattr(match, "prefix", None)
    return str(prefix) if prefix is not None else None


def _km(value: float) -> float | None:
    return None if math.isinf(value) else round(float(value), 1)


def validate_prefixes(prefixes: Iterable[object]) -> tuple[str, ...]:
    """Normalise an appliance's announced prefixes at enrollment, so bad ones are refused there."""
    out: list[str] = []
    for i, p in enumerate(prefixes):
        if i >= MAX_PREFIXES_PER_APPLIANCE:
            raise PrefixError(f"more than {MAX_PREFIXES_PER_APPLIANCE} prefixes announced")
        out.append(str(parse_prefix(p)))
    return tuple(out)
