"""Live view of the appliances from their MQTT status (retained + Last Will) and telemetry heartbeats.

Pure bookkeeping: handlers feed it envelopes, steering and the API read snapshots.  An appliance
counts as online only while its last status says so *and* it has been heard from within the TTL,
so a broker that never delivered the Will cannot keep a dead appliance steerable.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, replace

from shared.messages import ApplianceStatus, Telemetry


@dataclass(frozen=True)
class ApplianceLive:
    id: str
    state: str
    http_url: str
    software: str
    last_seen: float
    status_ts: float
    telemetry_seq: int = 0
    #: The appliance's own load gauge (share of its serving capacity in use), from telemetry.
    load: float = 0.0
    #: When the appliance's process started, by its clock: statuses of one run are ordered by their time.
    started_at: float = 0.0

    def online(self, now: float, ttl_s: float) -> bool:
        return self.state in ("online", "draining") and now - self.last_seen <= ttl_s

    def effective_state(self, now: float, ttl_s: float) -> str:
        if self.state in ("online", "draining") and now - self.last_seen > ttl_s:
            return "stale"
        return self.state


class Fleet:
    def __init__(self, ttl_s: float) -> None:
        self.ttl_s = ttl_s
        self._apps: dict[str, ApplianceLive] = {}
        #: Bumped whenever an appliance's state changes, so snapshots built from the fleet know to rebuild.
        self.version = 0

    def on_status(self, appliance_id: str, status: ApplianceStatus, ts: float, now: float | None = None) -> None:
        now = time.time() if now is None else now
        current = self._apps.get(appliance_id)
        if current is not None and status.started_at == current.started_at and ts < current.status_ts:
            return  # an older status of the same run, delivered late
        # A status of another run is newer whatever its time says: the broker delivers an appliance's
        # statuses in order, and a restarted appliance's clock may be behind its previous run's (skew,
        # a clock stepped back), which would otherwise hide its return until the clock caught up.
        self._apps[appliance_id] = ApplianceLive(
            appliance_id, status.state, status.http_url, status.software,
            last_seen=now if status.state != "offline" else (current.last_seen if current else 0.0),
            status_ts=ts, telemetry_seq=current.telemetry_seq if current else 0,
            load=current.load if current else 0.0, started_at=status.started_at)
        self.version += 1

    def on_telemetry(self, appliance_id: str, sample: Telemetry, now: float | None = None) -> None:
        now = time.time() if now is None else now
        current = self._apps.get(appliance_id)
        if current is None:
            return  # telemetry before any status: wait for the status to know its URL
        load = sample.gauges.get("load", current.load)
        if not math.isfinite(load) or load < 0:
            load = current.load
        self._apps[appliance_id] = replace(current, last_seen=now, telemetry_seq=sample.seq, load=load)

    def snapshot(self) -> list[ApplianceLive]:
        return sorted(self._apps.values(), key=lambda a: a.id)

    def get(self, appliance_id: str) -> ApplianceLive | None:
        return self._apps.get(appliance_id)
