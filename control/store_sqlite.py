"""The :class:`~control.store.Store` on SQLite: one writer thread, WAL, versioned migrations (shared.db).

Telemetry is the only hot path: a batch of samples is one transaction that inserts the raw rows and
folds them into 1-minute and 1-hour rollups.  The batch is pre-aggregated in Python first, so a burst
of thousands of samples becomes a few hundred upserts rather than one per metric per sample.
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import sqlite_utils

from shared.db import Database
from shared.errors import Conflict, InvalidInput, NotFound

from .catalog import CatalogEntry
from .events import Event
from .store import (
    ApplianceMeta,
    ApplianceRecord,
    AuditEntry,
    Enrollment,
    FillState,
    Holding,
    OperatorToken,
    Role,
    Rollup,
    TelemetryRow,
    TitleRecord,
)

RESOLUTIONS = (60, 3600)


def _v1(db: sqlite_utils.Database) -> None:
    db.executescript("""
    create table operator_tokens (name text primary key, sha256 text not null unique, role text not null,
                                  created real not null, revoked integer not null default 0);
    create table audit (id integer primary key autoincrement, ts real not null, actor text not null,
                        action text not null, target text not null, detail text not null);
    create table enrollments (token_sha256 text primary key, appliance_id text not null, meta text not null,
                              created real not null, expires real not null, used real);
    create table appliances (appliance_id text primary key, meta text not null, mqtt_hash text not null,
                             enrolled real not null, draining integer not null default 0);
    create table titles (title_id text primary key, name text not null, genres text not null,
                         version text not null, size integer not null, manifest_path text not null,
                         created real not null, live integer not null default 0, released real not null,
                         hls text not null, dash text, encrypted integer not null default 0);
    create table holdings (appliance_id text not null, title_id text not null, version text not null,
                           complete integer not null, bytes_done integer not null, updated real not null,
                           primary key (appliance_id, title_id));
    create table telemetry_raw (appliance_id text not null, ts real not null, seq integer not null,
                                interval_s real not null, counters text not null, gauges text not null,
                                titles text not null);
    create index telemetry_raw_ts on telemetry_raw (ts);
    create table rollups (appliance_id text not null, resolution integer not null, bucket real not null,
                          name text not null, total real not null, peak real not null, samples integer not null,
                          primary key (appliance_id, resolution, bucket, name));
    create index rollups_bucket on rollups (resolution, bucket);
    create table title_demand (appliance_id text not null, bucket real not null, title_id text not null,
                               bytes real not null, requests integer not null,
                               primary key (appliance_id, bucket, title_id));
    create table fill_state (appliance_id text primary key, generation integer not null, published real not null,
                             titles text not null, bytes_planned integer not null, ack_status text not null,
                             progress real, ack_ts real not null, detail text not null);
    create table counters (name text primary key, value integer not null);
    """)


def _v2(db: sqlite_utils.Database) -> None:
    """Viewing events (append-only, idempotent by event id) and catalog metadata."""
    db.executescript("""
    create table events (event_id text primary key, ts real not null, type text not null,
                         profile_id text not null, title_id text, device text not null, region text,
                         data text not null, received real not null);
    create index events_profile on events (profile_id, ts);
    create index events_ts on events (ts);
    create table catalog (title_id text primary key, meta text not null, updated real not null);
    """)


def _v3(db: sqlite_utils.Database) -> None:
    """A/B experiments and each profile's first exposure to one."""
    db.executescript("""
    create table experiments (experiment_id text primary key, doc text not null, state text not null,
                              created real not null, stopped real);
    create table exposures (experiment_id text not null, profile_id text not null, cell text not null,
                            first_ts real not null, primary key (experiment_id, profile_id));
    """)


def _v4(db: sqlite_utils.Database) -> None:
    """Telemetry idempotent by envelope id: a sample redelivered after a broker or edge restart is stored once.

    Rows from before have no id (NULL), which a unique index never counts as equal.
    """
    db.executescript("""
    alter table telemetry_raw add column msg_id text;
    create unique index telemetry_raw_msg on telemetry_raw (appliance_id, msg_id);
    """)


def _v5(db: sqlite_utils.Database) -> None:
    """Rotated broker credentials: the appliance's current MQTT user (empty: its id) and the one it is
    moving to while a rotation is under way (both users are valid on the broker until it has moved)."""
    db.executescript("""
    alter table appliances add column mqtt_user text not null default '';
    alter table appliances add column mqtt_next_user text not null default '';
    alter table appliances add column mqtt_next_hash text not null default '';
    """)


MIGRATIONS = [_v1, _v2, _v3, _v4, _v5]


def _audit(db: sqlite_utils.Database, actor: str, action: str, target: str, detail: Mapping[str, Any]) -> None:
    db.execute("insert into audit (ts, actor, action, target, detail) values (?, ?, ?, ?, ?)",
               [time.time(), actor, action, target, json.dumps(detail, sort_keys=True, default=str)])


def _meta_json(meta: ApplianceMeta) -> str:
    return json.dumps(asdict(meta), sort_keys=True)


def _meta(text: str) -> ApplianceMeta:
    d = json.loads(text)
    d["prefixes"] = tuple(d.get("prefixes", ()))
    return ApplianceMeta(**d)


def _appliance(row: Sequence[Any]) -> ApplianceRecord:
    return ApplianceRecord(row[0], _meta(row[1]), row[2], row[3], bool(row[4]), row[5], row[6], row[7])


def _title(row: Sequence[Any]) -> TitleRecord:
    return TitleRecord(row[0], row[1], tuple(json.loads(row[2])), row[3], row[4], row[5], row[6], bool(row[7]),
                       row[8], row[9], row[10], bool(row[11]))


def _token(row: Sequence[Any]) -> OperatorToken:
    return OperatorToken(row[0], row[1], row[2], row[3], bool(row[4]))


def _fill(row: Sequence[Any]) -> FillState:
    return FillState(row[0], row[1], row[2], tuple(json.loads(row[3])), row[4], row[5], row[6], row[7],
                     json.loads(row[8]))


_APPLIANCE_COLS = "appliance_id, meta, mqtt_hash, enrolled, draining"
_APPLIANCE_SELECT = _APPLIANCE_COLS + ", mqtt_user, mqtt_next_user, mqtt_next_hash"
_TITLE_COLS = ("title_id, name, genres, version, size, manifest_path, created, live, released, hls, dash, "
               "encrypted")
_FILL_COLS = "appliance_id, generation, published, titles, bytes_planned, ack_status, progress, ack_ts, detail"


def _aggregate(rows: Sequence[TelemetryRow]) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    """Rollup and title-demand upserts for a batch, pre-aggregated: a burst becomes a few hundred upserts."""
    # (appliance, resolution, bucket, name) -> [total, peak, samples]
    agg: dict[tuple[str, int, float, str], list[float]] = defaultdict(lambda: [0.0, float("-inf"), 0])
    demand: dict[tuple[str, float, str], list[float]] = defaultdict(lambda: [0.0, 0])
    for r in rows:
        for res in RESOLUTIONS:
            bucket = r.ts - r.ts % res
            for name, value in (*r.counters.items(), *r.gauges.items()):
                cell = agg[(r.appliance_id, res, bucket, name)]
                cell[0] += value
                cell[1] = max(cell[1], value)
                cell[2] += 1
        hour = r.ts - r.ts % 3600
        for title_id, (requests, nbytes) in r.titles.items():
            d = demand[(r.appliance_id, hour, title_id)]
            d[0] += nbytes
            d[1] += requests
    return ([(*k, v[0], v[1], int(v[2])) for k, v in agg.items()],
            [(*k, v[0], int(v[1])) for k, v in demand.items()])


class SqliteStore:
    """See :mod:`control.store` for the contract."""

    def __init__(self, path: Path) -> None:
        self.db = Database(path, MIGRATIONS)

    async def open(self) -> None:
        await self.db.open()

    async def close(self) -> None:
        await self.db.close()

    # -- operator tokens and audit -------------------------------------------------------------------
    async def add_token(self, name: str, sha256: str, role: Role, *, actor: str) -> OperatorToken:
        token = OperatorToken(name, sha256, role, time.time())

        def write(db: sqlite_utils.Database) -> None:
            if db.execute("select 1 from operator_tokens where name = ?", [name]).fetchone():
                raise Conflict(f"an operator token named {name!r} exists")
            db.execute("insert into operator_tokens values (?, ?, ?, ?, 0)", [name, sha256, role, token.created])
            _audit(db, actor, "token.create", name, {"role": role})

        await self.db.write(write)
        return token

    async def import_tokens(self, tokens: Sequence[OperatorToken]) -> int:
        def write(db: sqlite_utils.Database) -> int:
            added = 0
            for t in tokens:
                if db.execute("select 1 from operator_tokens where name = ? or sha256 = ?",
                              [t.name, t.sha256]).fetchone():
                    continue
                db.execute("insert into operator_tokens values (?, ?, ?, ?, 0)", [t.name, t.sha256, t.role, t.created])
                _audit(db, "bootstrap-file", "token.import", t.name, {"role": t.role})
                added += 1
            return added

        return await self.db.write(write)

    async def find_token(self, sha256: str) -> OperatorToken | None:
        rows = await self.db.read(lambda db: db.execute(
            "select * from operator_tokens where sha256 = ? and revoked = 0", [sha256]).fetchall())
        return _token(rows[0]) if rows else None

    async def list_tokens(self) -> list[OperatorToken]:
        rows = await self.db.read(lambda db: db.execute("select * from operator_tokens order by name").fetchall())
        return [_token(r) for r in rows]

    async def revoke_token(self, name: str, *, actor: str) -> None:
        def write(db: sqlite_utils.Database) -> None:
            if db.execute("update operator_tokens set revoked = 1 where name = ?", [name]).rowcount == 0:
                raise NotFound(f"no operator token named {name!r}")
            _audit(db, actor, "token.revoke", name, {})

        await self.db.write(write)

    async def record_audit(self, actor: str, action: str, target: str, detail: Mapping[str, Any]) -> None:
        """For operator actions that change no stored state (a command sent over MQTT)."""
        await self.db.write(lambda db: _audit(db, actor, action, target, detail))

    async def audit_log(self, *, limit: int = 100, before_id: int | None = None) -> list[AuditEntry]:
        def read(db: sqlite_utils.Database) -> list[Any]:
            return db.execute("select id, ts, actor, action, target, detail from audit where id < ? "
                              "order by id desc limit ?", [before_id or 2**62, limit]).fetchall()

        return [AuditEntry(r[0], r[1], r[2], r[3], r[4], json.loads(r[5])) for r in await self.db.read(read)]

    # -- appliances ------------------------------------------------------------------------------------
    async def create_enrollment(self, enrollment: Enrollment, *, actor: str) -> None:
        e = enrollment

        def write(db: sqlite_utils.Database) -> None:
            if db.execute("select 1 from appliances where appliance_id = ?", [e.appliance_id]).fetchone():
                raise Conflict(f"appliance {e.appliance_id!r} is already enrolled")
            db.execute("delete from enrollments where appliance_id = ? and used is null", [e.appliance_id])
            db.execute("insert into enrollments values (?, ?, ?, ?, ?, null)",
                       [e.token_sha256, e.appliance_id, _meta_json(e.meta), e.created, e.expires])
            _audit(db, actor, "appliance.enrollment", e.appliance_id,
                   {"expires": e.expires, **asdict(e.meta)})

        await self.db.write(write)

    async def redeem_enrollment(self, token_sha256: str, mqtt_hash: str, now: float) -> ApplianceRecord:
        def write(db: sqlite_utils.Database) -> ApplianceRecord:
            row = db.execute("select appliance_id, meta, expires, used from enrollments where token_sha256 = ?",
                             [token_sha256]).fetchone()
            if row is None or row[3] is not None or row[2] < now:
                # One message for all three so a caller cannot probe which tokens ever existed.
                raise InvalidInput("enrollment token is unknown, used or expired")
            if db.execute("select 1 from appliances where appliance_id = ?", [row[0]]).fetchone():
                raise Conflict(f"appliance {row[0]!r} is already enrolled")
            db.execute("update enrollments set used = ? where token_sha256 = ?", [now, token_sha256])
            db.execute(f"insert into appliances ({_APPLIANCE_COLS}) values (?, ?, ?, ?, 0)",
                       [row[0], row[1], mqtt_hash, now])
            _audit(db, f"appliance:{row[0]}", "appliance.enroll", row[0], {})
            return ApplianceRecord(row[0], _meta(row[1]), mqtt_hash, now)

        return await self.db.write(write)

    async def list_appliances(self) -> list[ApplianceRecord]:
        rows = await self.db.read(lambda db: db.execute(
            f"select {_APPLIANCE_SELECT} from appliances order by appliance_id").fetchall())
        return [_appliance(r) for r in rows]

    async def get_appliance(self, appliance_id: str) -> ApplianceRecord:
        rows = await self.db.read(lambda db: db.execute(
            f"select {_APPLIANCE_SELECT} from appliances where appliance_id = ?", [appliance_id]).fetchall())
        if not rows:
            raise NotFound(f"no appliance {appliance_id!r}")
        return _appliance(rows[0])

    async def _change(self, appliance_id: str, sql: str, args: list[Any], actor: str, action: str,
                      detail: Mapping[str, Any]) -> ApplianceRecord:
        def write(db: sqlite_utils.Database) -> ApplianceRecord:
            if db.execute(sql, [*args, appliance_id]).rowcount == 0:
                raise NotFound(f"no appliance {appliance_id!r}")
            _audit(db, actor, action, appliance_id, detail)
            row = db.execute(f"select {_APPLIANCE_SELECT} from appliances where appliance_id = ?",
                             [appliance_id]).fetchone()
            return _appliance(row)

        return await self.db.write(write)

    async def update_appliance(self, appliance_id: str, meta: ApplianceMeta, *, actor: str) -> ApplianceRecord:
        return await self._change(appliance_id, "update appliances set meta = ? where appliance_id = ?",
                                  [_meta_json(meta)], actor, "appliance.update", asdict(meta))

    async def set_draining(self, appliance_id: str, draining: bool, *, actor: str) -> ApplianceRecord:
        return await self._change(appliance_id, "update appliances set draining = ? where appliance_id = ?",
                                  [int(draining)], actor, "appliance.drain" if draining else "appliance.undrain", {})

    async def begin_mqtt_rotation(self, appliance_id: str, next_user: str, next_hash: str, *, actor: str,
                                  detail: Mapping[str, Any]) -> ApplianceRecord:
        return await self._change(
            appliance_id, "update appliances set mqtt_next_user = ?, mqtt_next_hash = ? where appliance_id = ?",
            [next_user, next_hash], actor, "appliance.mqtt_rotate", {"next_user": next_user, **detail})

    async def finish_mqtt_rotation(self, appliance_id: str, user: str, *, actor: str) -> ApplianceRecord | None:
        def write(db: sqlite_utils.Database) -> ApplianceRecord | None:
            changed = db.execute(
                "update appliances set mqtt_user = mqtt_next_user, mqtt_hash = mqtt_next_hash, mqtt_next_user = '', "
                "mqtt_next_hash = '' where appliance_id = ? and mqtt_next_user = ? and mqtt_next_user != ''",
                [appliance_id, user]).rowcount
            if not changed:
                return None
            _audit(db, actor, "appliance.mqtt_rotated", appliance_id, {"user": user})
            row = db.execute(f"select {_APPLIANCE_SELECT} from appliances where appliance_id = ?",
                             [appliance_id]).fetchone()
            return _appliance(row)

        return await self.db.write(write)

    async def remove_appliance(self, appliance_id: str, *, actor: str) -> None:
        def write(db: sqlite_utils.Database) -> None:
            if db.execute("delete from appliances where appliance_id = ?", [appliance_id]).rowcount == 0:
                raise NotFound(f"no appliance {appliance_id!r}")
            db.execute("delete from holdings where appliance_id = ?", [appliance_id])
            db.execute("delete from fill_state where appliance_id = ?", [appliance_id])
            _audit(db, actor, "appliance.remove", appliance_id, {})

        await self.db.write(write)

    # -- titles and holdings ---------------------------------------------------------------------------
    async def put_title(self, title: TitleRecord, *, actor: str) -> TitleRecord:
        t = title

        def write(db: sqlite_utils.Database) -> None:
            db.execute(f"insert or replace into titles ({_TITLE_COLS}) values (?,?,?,?,?,?,?,?,?,?,?,?)",
                       [t.title_id, t.name, json.dumps(list(t.genres)), t.version, t.size, t.manifest_path,
                        t.created, int(t.live), t.released, t.hls, t.dash, int(t.encrypted)])
            _audit(db, actor, "title.register", t.title_id, {"version": t.version, "size": t.size})

        await self.db.write(write)
        return title

    async def list_titles(self) -> list[TitleRecord]:
        rows = await self.db.read(lambda db: db.execute(f"select {_TITLE_COLS} from titles order by title_id")
                                  .fetchall())
        return [_title(r) for r in rows]

    async def get_title(self, title_id: str) -> TitleRecord:
        rows = await self.db.read(lambda db: db.execute(f"select {_TITLE_COLS} from titles where title_id = ?",
                                                        [title_id]).fetchall())
        if not rows:
            raise NotFound(f"no title {title_id!r}")
        return _title(rows[0])

    async def set_live(self, live: Mapping[str, bool]) -> None:
        items = [(int(v), k) for k, v in live.items()]
        await self.db.write(lambda db: db.conn.executemany("update titles set live = ? where title_id = ?", items))

    async def replace_holdings(self, appliance_id: str, holdings: Sequence[Holding]) -> None:
        rows = [(appliance_id, h.title_id, h.version, int(h.complete), h.bytes_done, h.updated) for h in holdings]

        def write(db: sqlite_utils.Database) -> None:
            db.execute("delete from holdings where appliance_id = ?", [appliance_id])
            db.conn.executemany("insert or replace into holdings values (?, ?, ?, ?, ?, ?)", rows)

        await self.db.write(write)

    async def list_holdings(self) -> list[Holding]:
        rows = await self.db.read(lambda db: db.execute("select * from holdings").fetchall())
        return [Holding(r[0], r[1], r[2], bool(r[3]), r[4], r[5]) for r in rows]

    # -- telemetry -------------------------------------------------------------------------------------
    async def ingest_telemetry(self, rows: Sequence[TelemetryRow]) -> int:
        # Prepared off the writer thread, for the common case that every sample is new: one executemany
        # and the batch's own pre-aggregated rollups.  A redelivered sample (after a broker or control
        # restart) makes the insert count fall short; only then is the batch redone row by row.
        raw = [(r.appliance_id, r.ts, r.seq, r.interval_s, json.dumps(r.counters), json.dumps(r.gauges),
                json.dumps({t: list(v) for t, v in r.titles.items()}), r.msg_id or None) for r in rows]
        up, dem = _aggregate(rows)

        def write(db: sqlite_utils.Database) -> int:
            nonlocal up, dem
            before = db.conn.total_changes
            db.execute("SAVEPOINT telemetry")
            db.conn.executemany("insert or ignore into telemetry_raw values (?, ?, ?, ?, ?, ?, ?, ?)", raw)
            fresh: Sequence[TelemetryRow] = rows
            if db.conn.total_changes - before != len(rows):
                db.execute("ROLLBACK TO SAVEPOINT telemetry")
                fresh = []
                for r, values in zip(rows, raw, strict=True):  # its rowcount says whether the sample is new
                    if db.conn.execute("insert or ignore into telemetry_raw values (?, ?, ?, ?, ?, ?, ?, ?)",
                                       values).rowcount == 1:
                        fresh.append(r)
                up, dem = _aggregate(fresh)
            db.execute("RELEASE SAVEPOINT telemetry")
            db.conn.executemany(
                "insert into rollups values (?, ?, ?, ?, ?, ?, ?) on conflict do update set "
                "total = total + excluded.total, peak = max(peak, excluded.peak), "
                "samples = samples + excluded.samples", up)
            db.conn.executemany(
                "insert into title_demand values (?, ?, ?, ?, ?) on conflict do update set "
                "bytes = bytes + excluded.bytes, requests = requests + excluded.requests", dem)
            return len(fresh)

        return await self.db.write(write)

    async def rollups(self, *, resolution_s: int, since: float, appliance_id: str | None = None,
                      names: Sequence[str] = ()) -> list[Rollup]:
        sql = "select * from rollups where resolution = ? and bucket >= ?"
        args: list[Any] = [resolution_s, since]
        if appliance_id is not None:
            sql += " and appliance_id = ?"
            args.append(appliance_id)
        if names:
            sql += f" and name in ({', '.join('?' for _ in names)})"
            args += list(names)
        rows = await self.db.read(lambda db: db.execute(sql + " order by bucket", args).fetchall())
        return [Rollup(*r) for r in rows]

    async def title_demand(self, since: float) -> list[tuple[str, str, float, int]]:
        """(appliance id, title id, bytes, hour bucket) since ``since``."""
        rows = await self.db.read(lambda db: db.execute(
            "select appliance_id, title_id, bytes, bucket from title_demand where bucket >= ?", [since]).fetchall())
        return [(r[0], r[1], r[2], int(r[3])) for r in rows]

    async def prune_telemetry(self, now: float, *, raw_s: float, minute_s: float, hour_s: float) -> int:
        def write(db: sqlite_utils.Database) -> int:
            n = db.execute("delete from telemetry_raw where ts < ?", [now - raw_s]).rowcount
            n += db.execute("delete from rollups where resolution = 60 and bucket < ?", [now - minute_s]).rowcount
            n += db.execute("delete from rollups where resolution = 3600 and bucket < ?", [now - hour_s]).rowcount
            n += db.execute("delete from title_demand where bucket < ?", [now - hour_s]).rowcount
            return int(n)

        return await self.db.write(write)

    async def count_raw(self) -> int:
        return int(await self.db.read(lambda db: db.execute("select count(*) from telemetry_raw").fetchone()[0]))

    # -- fill ------------------------------------------------------------------------------------------
    async def next_fill_generation(self) -> int:
        def write(db: sqlite_utils.Database) -> int:
            db.execute("insert into counters values ('fill_generation', 1) on conflict do update "
                       "set value = value + 1")
            return int(db.execute("select value from counters where name = 'fill_generation'").fetchone()[0])

        return await self.db.write(write)

    async def record_fill(self, states: Sequence[FillState], *, actor: str) -> None:
        rows = [(s.appliance_id, s.generation, s.published, json.dumps(list(s.titles)), s.bytes_planned,
                 "published", None, 0.0, "{}") for s in states]

        def write(db: sqlite_utils.Database) -> None:
            db.conn.executemany(f"insert or replace into fill_state ({_FILL_COLS}) values (?,?,?,?,?,?,?,?,?)", rows)
            _audit(db, actor, "fill.publish", ",".join(s.appliance_id for s in states)[:500],
                   {"generations": sorted({s.generation for s in states})})

        await self.db.write(write)

    async def fill_states(self) -> list[FillState]:
        rows = await self.db.read(lambda db: db.execute(
            f"select {_FILL_COLS} from fill_state order by appliance_id").fetchall())
        return [_fill(r) for r in rows]

    async def record_fill_ack(self, appliance_id: str, generation: int, status: str, progress: float | None,
                              detail: Mapping[str, Any], ts: float) -> None:
        text = json.dumps(dict(detail), default=str)[:20_000]
        await self.db.write(lambda db: db.execute(
            "update fill_state set ack_status = ?, progress = ?, ack_ts = ?, detail = ? "
            "where appliance_id = ? and generation = ?",
            [status, progress, ts, text, appliance_id, generation]))

    # -- viewing events --------------------------------------------------------------------------------
    async def add_events(self, events: Sequence[Event], received: float) -> int:
        rows = [(e.event_id, e.ts, e.type, e.profile_id, e.title_id, e.device, e.region,
                 json.dumps(dict(e.data), sort_keys=True), received) for e in events]

        def write(db: sqlite_utils.Database) -> int:
            before = db.conn.total_changes
            db.conn.executemany("insert or ignore into events (event_id, ts, type, profile_id, title_id, device, "
                                "region, data, received) values (?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
            return int(db.conn.total_changes - before)

        return await self.db.write(write)

    async def profile_events(self, profile_id: str, *, limit: int = 5000) -> list[Event]:
        rows = await self.db.read(lambda db: db.execute(
            f"select {_EVENT_COLS} from events where profile_id = ? order by ts desc limit ?",
            [profile_id, limit]).fetchall())
        return [_event(r) for r in rows]

    async def events_page(self, *, after: int = 0, limit: int = 10_000, since: float = 0.0,
                          types: Sequence[str] = ()) -> list[tuple[int, Event]]:
        type_sql = f" and type in ({','.join('?' * len(types))})" if types else ""

        def read(db: sqlite_utils.Database) -> list[Any]:
            return db.execute(f"select rowid, {_EVENT_COLS} from events where rowid > ? and ts >= ?{type_sql} "
                              "order by rowid limit ?", [after, since, *types, limit]).fetchall()

        return [(int(r[0]), _event(r[1:])) for r in await self.db.read(read)]

    async def title_activity(self, since: float, types: Sequence[str], bucket_s: float
                             ) -> list[tuple[str | None, str, float, int]]:
        """``(region, title_id, bucket start, events)`` for trending."""
        marks = ",".join("?" * len(types))

        def read(db: sqlite_utils.Database) -> list[Any]:
            return db.execute(f"select region, title_id, cast(ts / ? as integer) * ?, count(*) from events "
                              f"where ts >= ? and title_id is not null and type in ({marks}) "
                              "group by 1, 2, 3", [bucket_s, bucket_s, since, *types]).fetchall()

        return [(r[0], r[1], float(r[2]), int(r[3])) for r in await self.db.read(read)]

    async def count_events(self) -> int:
        return int((await self.db.read(lambda db: db.execute("select count(*) from events").fetchone()))[0])

    # -- catalog ---------------------------------------------------------------------------------------
    async def put_catalog(self, entries: Sequence[tuple[str, Mapping[str, Any]]], *, actor: str,
                          only_missing: bool = False) -> int:
        """Merge fields into entries (creating them); ``only_missing`` fills fields that are still empty."""
        now = time.time()

        def write(db: sqlite_utils.Database) -> int:
            changed = 0
            for title_id, fields in entries:
                row = db.execute("select meta from catalog where title_id = ?", [title_id]).fetchone()
                current = _catalog(title_id, row[0]) if row else CatalogEntry(title_id)
                wanted = {k: v for k, v in fields.items() if not (only_missing and getattr(current, k))}
                merged = current.merged(wanted)
                if row is None or merged != current:
                    db.execute("insert or replace into catalog (title_id, meta, updated) values (?, ?, ?)",
                               [title_id, json.dumps(merged.to_json(), sort_keys=True), now])
                    changed += 1
            if actor != "system":
                _audit(db, actor, "catalog.put", f"{len(entries)} title(s)", {"changed": changed})
            return changed

        return await self.db.write(write)

    async def list_catalog(self) -> list[CatalogEntry]:
        rows = await self.db.read(lambda db: db.execute("select title_id, meta from catalog order by title_id")
                                  .fetchall())
        return [_catalog(r[0], r[1]) for r in rows]

    async def get_catalog(self, title_id: str) -> CatalogEntry:
        rows = await self.db.read(lambda db: db.execute("select title_id, meta from catalog where title_id = ?",
                                                        [title_id]).fetchall())
        if not rows:
            raise NotFound(f"no catalog entry for {title_id!r}")
        return _catalog(rows[0][0], rows[0][1])


    # -- experiments -----------------------------------------------------------------------------------
    async def create_experiment(self, experiment_id: str, doc: Mapping[str, Any], *, actor: str) -> None:
        def write(db: sqlite_utils.Database) -> None:
            if db.execute("select 1 from experiments where experiment_id = ?", [experiment_id]).fetchone():
                raise Conflict(f"experiment {experiment_id!r} already exists (ids are never reused)")
            db.execute("insert into experiments (experiment_id, doc, state, created) values (?, ?, 'running', ?)",
                       [experiment_id, json.dumps(doc, sort_keys=True), time.time()])
            _audit(db, actor, "experiment.create", experiment_id, {"cells": doc.get("cells")})

        await self.db.write(write)

    async def list_experiments(self) -> list[dict[str, Any]]:
        rows = await self.db.read(lambda db: db.execute(
            "select experiment_id, doc, state, created, stopped from experiments order by created").fetchall())
        return [{**json.loads(r[1]), "id": r[0], "state": r[2], "created": r[3], "stopped": r[4]} for r in rows]

    async def stop_experiment(self, experiment_id: str, *, actor: str) -> None:
        def write(db: sqlite_utils.Database) -> None:
            cur = db.execute("update experiments set state = 'stopped', stopped = ? where experiment_id = ? "
                             "and state = 'running'", [time.time(), experiment_id])
            if cur.rowcount == 0:
                if not db.execute("select 1 from experiments where experiment_id = ?", [experiment_id]).fetchone():
                    raise NotFound(f"no experiment {experiment_id!r}")
                raise Conflict(f"experiment {experiment_id!r} is already stopped")
            _audit(db, actor, "experiment.stop", experiment_id, {})

        await self.db.write(write)

    async def record_exposures(self, rows: Sequence[tuple[str, str, str, float]]) -> int:
        def write(db: sqlite_utils.Database) -> int:
            before = db.conn.total_changes
            db.conn.executemany("insert or ignore into exposures (experiment_id, profile_id, cell, first_ts) "
                                "values (?, ?, ?, ?)", rows)
            return int(db.conn.total_changes - before)

        return await self.db.write(write)

    async def exposures(self, experiment_id: str) -> list[tuple[str, str, float]]:
        rows = await self.db.read(lambda db: db.execute(
            "select profile_id, cell, first_ts from exposures where experiment_id = ?", [experiment_id]).fetchall())
        return [(r[0], r[1], float(r[2])) for r in rows]


_EVENT_COLS = "event_id, ts, type, profile_id, title_id, device, region, data"


def _event(row: Sequence[Any]) -> Event:
    return Event(row[0], row[2], row[3], float(row[1]), row[5], row[6], row[4], json.loads(row[7]))


def _catalog(title_id: str, text: str) -> CatalogEntry:
    d: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in json.loads(text).items()}
    d["title_id"] = title_id
    return CatalogEntry(**d)

