"""The registry's in-memory view: enrolled appliances, what they hold, and the steering snapshot.

The store is the truth; this mirror is refreshed after every write so that a play request never
touches SQLite.  The steering index is rebuilt lazily when something it depends on changed (a drain,
a status, holdings, metadata) or when it is older than the refresh limit (load moves continuously).
"""

from __future__ import annotations

import time
from collections.abc import Iterable

from .fleet import Fleet
from .steering import ApplianceView, GeoPoint, SteeringIndex
from .store import ApplianceRecord, Holding, Store


class RegistryView:
    def __init__(self, fleet: Fleet, *, refresh_s: float = 2.0) -> None:
        self.fleet = fleet
        self.refresh_s = refresh_s
        self.appliances: dict[str, ApplianceRecord] = {}
        self.holdings: dict[str, dict[str, Holding]] = {}
        self.title_versions: dict[str, str] = {}
        self.title_sizes: dict[str, int] = {}
        self._version = 0
        self._index: SteeringIndex | None = None
        self._built: tuple[int, int, float] = (-1, -1, 0.0)

    async def reload(self, store: Store) -> None:
        self.appliances = {a.appliance_id: a for a in await store.list_appliances()}
        held: dict[str, dict[str, Holding]] = {}
        for h in await store.list_holdings():
            held.setdefault(h.appliance_id, {})[h.title_id] = h
        self.holdings = held
        titles = await store.list_titles()
        self.title_versions = {t.title_id: t.version for t in titles}
        self.title_sizes = {t.title_id: t.size for t in titles}
        self._version += 1

    def put(self, record: ApplianceRecord) -> None:
        self.appliances[record.appliance_id] = record
        self._version += 1

    def drop(self, appliance_id: str) -> None:
        self.appliances.pop(appliance_id, None)
        self.holdings.pop(appliance_id, None)
        self._version += 1

    def set_holdings(self, appliance_id: str, items: Iterable[Holding]) -> None:
        self.holdings[appliance_id] = {h.title_id: h for h in items}
        self._version += 1

    def set_title(self, title_id: str, version: str, size: int) -> None:
        self.title_versions[title_id] = version
        self.title_sizes[title_id] = size
        self._version += 1

    def complete_titles(self, appliance_id: str) -> frozenset[str]:
        """Titles held complete *in their current version*: a stale copy is not a copy."""
        return frozenset(t for t, h in self.holdings.get(appliance_id, {}).items()
                         if h.complete and self.title_versions.get(t) == h.version)

    def views(self, now: float) -> list[ApplianceView]:
        out = []
        for aid, rec in sorted(self.appliances.items()):
            live = self.fleet.get(aid)
            m = rec.meta
            online = live is not None and live.online(now, self.fleet.ttl_s)
            draining = rec.draining or (live is not None and live.state == "draining")
            location = GeoPoint(m.lat, m.lon) if m.lat is not None and m.lon is not None else None
            out.append(ApplianceView(aid, m.site, m.asn, m.prefixes, location, online, draining,
                                     live.load if live else 0.0, m.load_threshold, self.complete_titles(aid)))
        return out

    def index(self, now: float | None = None) -> SteeringIndex:
        now = time.time() if now is None else now
        version, fleet_version, built = self._built
        if (self._index is None or version != self._version or fleet_version != self.fleet.version
                or now - built > self.refresh_s):
            views = self.views(now)
            self._index = self._index.updated(views) if self._index is not None else SteeringIndex(views)
            self._built = (self._version, self.fleet.version, now)
        return self._index

    def http_url(self, appliance_id: str) -> str:
        live = self.fleet.get(appliance_id)
        return live.http_url if live else ""
