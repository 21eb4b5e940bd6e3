"""The registry's in-memory view: enrolled appliances, what they hold, and the steering snapshot.

The store is the truth; this mirror is refreshed after every write so that a play request never
touches SQLite.  The steering index is rebuilt at once when something decisive changed (a drain, a
status, holdings, metadata), so a drained or dead appliance is never handed out again.  Load moves
continuously, so it is folded in by :meth:`RegistryView.refresh` every ``refresh_s`` on a worker
thread, from a snapshot taken on the event loop: with thousands of appliances a rebuild costs a
noticeable fraction of a second, and play requests keep using the previous index meanwhile.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from .fleet import ApplianceLive, Fleet
from .steering import ApplianceView, GeoPoint, SteeringIndex
from .store import ApplianceRecord, Holding, Store


@dataclass(frozen=True)
class _Snapshot:
    appliances: list[tuple[str, ApplianceRecord]]
    holdings: Mapping[str, Mapping[str, Holding]]
    live: Mapping[str, ApplianceLive]
    title_versions: Mapping[str, str]
    ttl_s: float

    def views(self, now: float) -> list[ApplianceView]:
        out = []
        for aid, rec in self.appliances:
            live = self.live.get(aid)
            m = rec.meta
            online = live is not None and live.online(now, self.ttl_s)
            draining = rec.draining or (live is not None and live.state == "draining")
            location = GeoPoint(m.lat, m.lon) if m.lat is not None and m.lon is not None else None
            held = frozenset(t for t, h in self.holdings.get(aid, {}).items()
                             if h.complete and self.title_versions.get(t) == h.version)
            out.append(ApplianceView(aid, m.site, m.asn, m.prefixes, location, online, draining,
                                     live.load if live else 0.0, m.load_threshold, held))
        return out


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

    def _snapshot(self) -> _Snapshot:
        """Shallow copies: the inner holdings dicts and fleet entries are replaced, never mutated in place."""
        return _Snapshot(sorted(self.appliances.items()), dict(self.holdings),
                         {a.id: a for a in self.fleet.snapshot()}, dict(self.title_versions), self.fleet.ttl_s)

    def views(self, now: float) -> list[ApplianceView]:
        return self._snapshot().views(now)

    def _build(self, snap: _Snapshot, now: float, previous: SteeringIndex | None) -> SteeringIndex:
        views = snap.views(now)
        return previous.updated(views) if previous is not None else SteeringIndex(views)

    def index(self, now: float | None = None) -> SteeringIndex:
        """The current index; rebuilt here only when something decisive changed since the last build."""
        now = time.time() if now is None else now
        version, fleet_version, _ = self._built
        if self._index is None or version != self._version or fleet_version != self.fleet.version:
            self._built = (self._version, self.fleet.version, now)
            self._index = self._build(self._snapshot(), now, self._index)
        return self._index

    async def refresh(self) -> None:
        """Fold in load and TTL expiry off the event loop; a decisive change meanwhile wins."""
        now = time.time()
        if self._index is not None and now - self._built[2] < self.refresh_s:
            return
        marks = (self._version, self.fleet.version, now)
        snap = self._snapshot()
        built = await asyncio.get_running_loop().run_in_executor(None, self._build, snap, now, self._index)
        if (self._version, self.fleet.version) == marks[:2]:
            self._index, self._built = built, marks

    async def refresh_loop(self) -> None:
        while True:
            await self.refresh()
            await asyncio.sleep(self.refresh_s / 2)

    def http_url(self, appliance_id: str) -> str:
        live = self.fleet.get(appliance_id)
        return live.http_url if live else ""
