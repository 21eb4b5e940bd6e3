"""The SQLite store on a real file: migrations, tokens, audit in the same transaction, registry, telemetry."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import pytest

from control.store import ApplianceMeta, Enrollment, FillState, Holding, TelemetryRow, TitleRecord
from control.store_sqlite import MIGRATIONS, SqliteStore
from shared.errors import Conflict, InvalidInput, NotFound


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    s = SqliteStore(tmp_path / "control.db")
    await s.open()
    yield s
    await s.close()


async def test_schema_is_versioned_and_wal(store: SqliteStore, tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / "control.db")
    assert conn.execute("pragma user_version").fetchone()[0] == len(MIGRATIONS)
    assert conn.execute("pragma journal_mode").fetchone()[0] == "wal"
    conn.close()


async def test_reopening_keeps_data_and_does_not_remigrate(tmp_path: Path) -> None:
    s = SqliteStore(tmp_path / "c.db")
    await s.open()
    await s.add_token("ops", "a" * 64, "admin", actor="test")
    await s.close()
    s2 = SqliteStore(tmp_path / "c.db")
    await s2.open()
    assert [t.name for t in await s2.list_tokens()] == ["ops"]
    await s2.close()


async def test_tokens_and_every_write_audited(store: SqliteStore) -> None:
    await store.add_token("alice", "1" * 64, "admin", actor="operator:root")
    with pytest.raises(Conflict):
        await store.add_token("alice", "2" * 64, "read", actor="operator:root")
    assert (await store.find_token("1" * 64)) is not None
    await store.revoke_token("alice", actor="operator:root")
    assert await store.find_token("1" * 64) is None
    with pytest.raises(NotFound):
        await store.revoke_token("bob", actor="x")
    log = await store.audit_log()
    # The failed writes left no audit entry: audit and change commit together or not at all.
    assert [(e.action, e.target) for e in log] == [("token.revoke", "alice"), ("token.create", "alice")]
    assert log[1].actor == "operator:root" and log[1].detail == {"role": "admin"}


async def test_import_tokens_is_idempotent(store: SqliteStore) -> None:
    from control.store import OperatorToken

    tok = OperatorToken("demo", "f" * 64, "admin", 1.0)
    assert await store.import_tokens([tok]) == 1
    assert await store.import_tokens([tok]) == 0


async def test_enrollment_token_is_single_use_and_expires(store: SqliteStore) -> None:
    meta = ApplianceMeta(site="s1", region="r1", prefixes=("10.0.0.0/8",), asn=64500)
    now = time.time()
    await store.create_enrollment(Enrollment("e" * 64, "edge-a", meta, now, now + 60), actor="op")
    await store.create_enrollment(Enrollment("d" * 64, "edge-b", meta, now, now - 1), actor="op")
    rec = await store.redeem_enrollment("e" * 64, "$7$hash", now)
    assert rec.appliance_id == "edge-a" and rec.meta.prefixes == ("10.0.0.0/8",)
    with pytest.raises(InvalidInput):
        await store.redeem_enrollment("e" * 64, "$7$hash", now)
    with pytest.raises(InvalidInput):
        await store.redeem_enrollment("d" * 64, "$7$hash", now)
    with pytest.raises(InvalidInput):
        await store.redeem_enrollment("0" * 64, "$7$hash", now)
    with pytest.raises(Conflict):
        await store.create_enrollment(Enrollment("c" * 64, "edge-a", meta, now, now + 60), actor="op")
    drained = await store.set_draining("edge-a", True, actor="op")
    assert drained.draining
    assert [a.appliance_id for a in await store.list_appliances()] == ["edge-a"]
    assert {e.action for e in await store.audit_log()} >= {"appliance.enroll", "appliance.drain",
                                                            "appliance.enrollment"}


async def test_titles_holdings_and_fill_state(store: SqliteStore) -> None:
    await store.put_title(TitleRecord("t1", "One", ("drama",), "v1", 1000, "/x", 1.0), actor="op")
    assert (await store.get_title("t1")).genres == ("drama",)
    with pytest.raises(NotFound):
        await store.get_title("t2")
    await store.set_live({"t1": True})
    assert (await store.get_title("t1")).live
    await store.replace_holdings("edge-a", [Holding("edge-a", "t1", "v1", True, 1000, 1.0)])
    await store.replace_holdings("edge-a", [Holding("edge-a", "t1", "v1", False, 10, 2.0)])
    held = await store.list_holdings()
    assert len(held) == 1 and not held[0].complete
    g1, g2 = await store.next_fill_generation(), await store.next_fill_generation()
    assert g2 == g1 + 1
    await store.record_fill([FillState("edge-a", g2, 5.0, ("t1@v1",), 1000)], actor="op")
    await store.record_fill_ack("edge-a", g2, "progress", 0.5, {"x": 1}, 6.0)
    await store.record_fill_ack("edge-a", g1, "done", 1.0, {}, 7.0)  # an older generation: ignored
    (state,) = await store.fill_states()
    assert state.ack_status == "progress" and state.progress == 0.5 and state.detail == {"x": 1}


async def test_telemetry_rollups_and_retention(store: SqliteStore) -> None:
    base = 1_800_000_000.0 - 1_800_000_000.0 % 3600
    rows = [TelemetryRow("edge-a", base + i * 10, i, 10.0, {"bytes": 100.0, "miss.not_held": 1.0},
                         {"load": i / 10}, {"t1": (1, 500)}) for i in range(12)]
    assert await store.ingest_telemetry(rows[:6]) == 6
    assert await store.ingest_telemetry(rows[6:]) == 6
    minute = await store.rollups(resolution_s=60, since=0, names=["bytes"])
    assert [(r.bucket - base, r.total, r.samples) for r in minute] == [(0, 600.0, 6), (60, 600.0, 6)]
    (hour,) = await store.rollups(resolution_s=3600, since=0, names=["load"])
    assert hour.samples == 12 and hour.peak == pytest.approx(1.1)
    assert await store.title_demand(0) == [("edge-a", "t1", 6000.0, int(base))]
    assert await store.count_raw() == 12
    removed = await store.prune_telemetry(base + 3 * 86400, raw_s=86400, minute_s=86400, hour_s=30 * 86400)
    assert removed == 12 + 6  # raw rows and the minute rollups (two buckets x three metrics)
    assert await store.count_raw() == 0
    assert len(await store.rollups(resolution_s=3600, since=0)) == 3


async def test_redelivered_telemetry_is_stored_and_rolled_up_once(store: SqliteStore) -> None:
    base = 1_800_000_000.0 - 1_800_000_000.0 % 3600
    rows = [TelemetryRow("edge-a", base + i, i, 1.0, {"bytes": 100.0}, {}, {"t1": (1, 10)}, f"id{i}")
            for i in range(1, 6)]
    assert await store.ingest_telemetry(rows[:3]) == 3
    # the appliance's spool resends 2 and 3 (acknowledged by the broker, cursor not yet written), then 4, 5
    assert await store.ingest_telemetry([rows[1], rows[2], rows[3], rows[3], rows[4]]) == 2
    assert await store.ingest_telemetry([replace(rows[0], appliance_id="edge-b")]) == 1  # ids are per appliance
    seqs = await store.db.read(lambda db: db.execute(
        "select seq from telemetry_raw where appliance_id = 'edge-a' order by seq").fetchall())
    assert [s for (s,) in seqs] == [1, 2, 3, 4, 5]
    (minute,) = await store.rollups(resolution_s=60, since=0, appliance_id="edge-a", names=["bytes"])
    assert (minute.total, minute.samples) == (500.0, 5)
    assert sorted(await store.title_demand(0)) == [("edge-a", "t1", 50.0, int(base)),
                                                   ("edge-b", "t1", 10.0, int(base))]
    unnamed = [TelemetryRow("edge-c", base, 1, 1.0, {}, {}, {})] * 2  # no id (older senders): not deduplicated
    assert await store.ingest_telemetry(unnamed) == 2
