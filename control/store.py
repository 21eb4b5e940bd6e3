"""The control plane's state behind one interface, so PostgreSQL can replace SQLite without touching callers.

Callers (API handlers, the MQTT ingest, the fill shell) see only :class:`Store` and the frozen
records below.  Every operator-initiated write takes an ``actor`` and is audited by the store in the
same transaction as the change itself, so an audited action can never be half applied and an
applied one never goes unrecorded.  Machine writes (telemetry, holdings, acks) are not audited:
they are observations, not decisions.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol

if TYPE_CHECKING:
    from .catalog import CatalogEntry
    from .events import Event

Role = Literal["read", "admin"]
ROLES: tuple[Role, ...] = ("read", "admin")


@dataclass(frozen=True)
class OperatorToken:
    name: str
    sha256: str
    role: Role
    created: float
    revoked: bool = False


@dataclass(frozen=True)
class AuditEntry:
    id: int
    ts: float
    actor: str
    action: str
    target: str
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ApplianceMeta:
    """What an operator declares about an appliance at enrollment (and may change later)."""

    site: str
    region: str
    isp: str = ""
    asn: int = 0
    prefixes: tuple[str, ...] = ()
    lat: float | None = None
    lon: float | None = None
    disk_bytes: int = 0
    bandwidth_bps: int = 0
    fill_window: str = ""
    load_threshold: float = 0.85


@dataclass(frozen=True)
class ApplianceRecord:
    appliance_id: str
    meta: ApplianceMeta
    mqtt_hash: str
    enrolled: float
    draining: bool = False
    mqtt_user: str = ""  # the broker user ``mqtt_hash`` belongs to; empty: the appliance id
    mqtt_next_user: str = ""  # while a credential rotation is under way: the user it moves to
    mqtt_next_hash: str = ""

    @property
    def mqtt_username(self) -> str:
        return self.mqtt_user or self.appliance_id

    def broker_users(self) -> dict[str, str]:
        """``user -> hash`` the broker accepts for this appliance (two while a rotation is under way)."""
        users = {self.mqtt_username: self.mqtt_hash}
        if self.mqtt_next_user:
            users[self.mqtt_next_user] = self.mqtt_next_hash
        return users


@dataclass(frozen=True)
class Enrollment:
    """A pending one-time enrollment; only the token's hash is kept."""

    token_sha256: str
    appliance_id: str
    meta: ApplianceMeta
    created: float
    expires: float
    used: float | None = None


@dataclass(frozen=True)
class TitleRecord:
    title_id: str
    name: str
    genres: tuple[str, ...]
    version: str
    size: int
    manifest_path: str
    created: float
    live: bool = False
    released: float = 0.0
    hls: str = "master.m3u8"
    dash: str | None = "manifest.mpd"
    encrypted: bool = False


@dataclass(frozen=True)
class Holding:
    appliance_id: str
    title_id: str
    version: str
    complete: bool
    bytes_done: int = 0
    updated: float = 0.0


@dataclass(frozen=True)
class TelemetryRow:
    """One validated telemetry sample, as stored raw."""

    appliance_id: str
    ts: float
    seq: int
    interval_s: float
    counters: Mapping[str, float]
    gauges: Mapping[str, float]
    #: title id -> (requests, bytes)
    titles: Mapping[str, tuple[int, int]]
    #: the envelope id: a redelivered sample carries the same one and is stored once
    msg_id: str = ""


@dataclass(frozen=True)
class Rollup:
    appliance_id: str
    resolution_s: int
    bucket: float
    name: str
    total: float
    peak: float
    samples: int


@dataclass(frozen=True)
class FillState:
    """The latest desired fill published to an appliance and what it last said about it."""

    appliance_id: str
    generation: int
    published: float
    titles: tuple[str, ...]
    bytes_planned: int
    ack_status: str = ""
    progress: float | None = None
    ack_ts: float = 0.0
    detail: dict[str, Any] = field(default_factory=dict)


class Store(Protocol):
    """Everything the control plane persists.  All methods are safe to call from the event loop."""

    async def open(self) -> None: ...
    async def close(self) -> None: ...

    # operator tokens and audit
    async def add_token(self, name: str, sha256: str, role: Role, *, actor: str) -> OperatorToken: ...
    async def import_tokens(self, tokens: Sequence[OperatorToken]) -> int: ...
    async def find_token(self, sha256: str) -> OperatorToken | None: ...
    async def list_tokens(self) -> list[OperatorToken]: ...
    async def revoke_token(self, name: str, *, actor: str) -> None: ...
    async def record_audit(self, actor: str, action: str, target: str, detail: Mapping[str, Any]) -> None: ...
    async def audit_log(self, *, limit: int = 100, before_id: int | None = None) -> list[AuditEntry]: ...

    # appliances
    async def create_enrollment(self, enrollment: Enrollment, *, actor: str) -> None: ...
    async def redeem_enrollment(self, token_sha256: str, mqtt_hash: str, now: float) -> ApplianceRecord: ...
    async def list_appliances(self) -> list[ApplianceRecord]: ...
    async def get_appliance(self, appliance_id: str) -> ApplianceRecord: ...
    async def update_appliance(self, appliance_id: str, meta: ApplianceMeta, *, actor: str) -> ApplianceRecord: ...
    async def set_draining(self, appliance_id: str, draining: bool, *, actor: str) -> ApplianceRecord: ...
    async def remove_appliance(self, appliance_id: str, *, actor: str) -> None: ...
    async def begin_mqtt_rotation(self, appliance_id: str, next_user: str, next_hash: str, *, actor: str,
                                  detail: Mapping[str, Any]) -> ApplianceRecord: ...
    async def finish_mqtt_rotation(self, appliance_id: str, user: str, *, actor: str) -> ApplianceRecord | None:
        """Make ``user`` (the pending one) current and forget the old; None when no such rotation is pending."""
        ...

    # titles and holdings
    async def put_title(self, title: TitleRecord, *, actor: str) -> TitleRecord: ...
    async def list_titles(self) -> list[TitleRecord]: ...
    async def get_title(self, title_id: str) -> TitleRecord: ...
    async def set_live(self, live: Mapping[str, bool]) -> None: ...
    async def replace_holdings(self, appliance_id: str, holdings: Sequence[Holding]) -> None: ...
    async def list_holdings(self) -> list[Holding]: ...

    # telemetry
    async def ingest_telemetry(self, rows: Sequence[TelemetryRow]) -> int:
        """Store the rows and fold them into rollups; returns how many were new (a row whose
        ``(appliance_id, msg_id)`` is already stored is a redelivery and ignored)."""
        ...
    async def rollups(self, *, resolution_s: int, since: float, appliance_id: str | None = None,
                      names: Sequence[str] = ()) -> list[Rollup]: ...
    async def title_demand(self, since: float) -> list[tuple[str, str, float, int]]: ...
    async def prune_telemetry(self, now: float, *, raw_s: float, minute_s: float, hour_s: float) -> int: ...
    async def count_raw(self) -> int: ...

    # fill
    async def record_fill(self, states: Sequence[FillState], *, actor: str) -> None: ...
    async def fill_states(self) -> list[FillState]: ...
    async def record_fill_ack(self, appliance_id: str, generation: int, status: str, progress: float | None,
                              detail: Mapping[str, Any], ts: float) -> None: ...
    async def next_fill_generation(self) -> int: ...

    # viewing events (append-only; ``add_events`` returns how many were new, duplicates are ignored)
    async def add_events(self, events: Sequence[Event], received: float) -> int: ...
    async def profile_events(self, profile_id: str, *, limit: int = 5000) -> list[Event]: ...
    async def events_page(self, *, after: int = 0, limit: int = 10_000, since: float = 0.0,
                          types: Sequence[str] = ()) -> list[tuple[int, Event]]: ...
    async def title_activity(self, since: float, types: Sequence[str], bucket_s: float
                             ) -> list[tuple[str | None, str, float, int]]: ...
    async def count_events(self) -> int: ...

    # catalog metadata
    async def put_catalog(self, entries: Sequence[tuple[str, Mapping[str, Any]]], *, actor: str,
                          only_missing: bool = False) -> int: ...
    async def list_catalog(self) -> list[CatalogEntry]: ...
    async def get_catalog(self, title_id: str) -> CatalogEntry: ...

    # experiments and first exposures (``record_exposures`` ignores profiles already exposed)
    async def create_experiment(self, experiment_id: str, doc: Mapping[str, Any], *, actor: str) -> None: ...
    async def list_experiments(self) -> list[dict[str, Any]]: ...
    async def stop_experiment(self, experiment_id: str, *, actor: str) -> None: ...
    async def record_exposures(self, rows: Sequence[tuple[str, str, str, float]]) -> int: ...
    async def exposures(self, experiment_id: str) -> list[tuple[str, str, float]]: ...
