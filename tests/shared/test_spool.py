from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shared.spool import Spool


async def _all(spool: Spool) -> list[bytes]:
    got: list[bytes] = []

    async def deliver(p: bytes) -> None:
        got.append(p)

    await spool.drain(deliver)
    return got


async def test_append_deliver_ack_and_resume_after_restart(tmp_path: Path) -> None:
    s = Spool(tmp_path, segment_bytes=100)
    await s.open()
    await s.append(*[f"m{i}".encode() for i in range(30)])
    first = await s.pending(10)
    await s.ack(first[-1])
    await s.close()
    again = Spool(tmp_path, segment_bytes=100)  # a restart: resumes after the acknowledged record
    await again.open()
    assert await _all(again) == [f"m{i}".encode() for i in range(10, 30)]
    assert await _all(again) == []
    assert len(list(tmp_path.glob("*.seg"))) <= 1  # delivered segments are deleted
    await again.close()


async def test_delivery_failure_keeps_the_rest(tmp_path: Path) -> None:
    s = Spool(tmp_path)
    await s.open()
    await s.append(b"a", b"b", b"c")
    sent: list[bytes] = []

    async def flaky(p: bytes) -> None:
        if p == b"b":
            raise ConnectionError("broker gone")
        sent.append(p)

    with pytest.raises(ConnectionError):
        await s.drain(flaky)
    assert sent == [b"a"]
    assert await _all(s) == [b"b", b"c"]
    await s.close()


async def test_a_torn_tail_is_cut_off(tmp_path: Path) -> None:
    s = Spool(tmp_path)
    await s.open()
    await s.append(b"whole-1", b"whole-2")
    await s.close()
    seg = next(tmp_path.glob("*.seg"))
    with open(seg, "ab") as fh:
        fh.write(b"\x00\x00\x00\x10\xde\xad")  # a crash mid-append
    s = Spool(tmp_path)
    await s.open()
    await s.append(b"after")
    assert await _all(s) == [b"whole-1", b"whole-2", b"after"]
    await s.close()


async def test_the_budget_drops_the_oldest_and_counts(tmp_path: Path) -> None:
    s = Spool(tmp_path, max_bytes=2000, segment_bytes=500)
    await s.open()
    for i in range(100):
        await s.append(f"{i:04d}".encode() * 10)
    assert await s.size() <= 2000 + 500
    got = await _all(s)
    assert s.dropped_records > 0 and len(got) + s.dropped_records == 100
    assert got == sorted(got) and got[-1] == b"0099" * 10  # the newest survive, in order
    await s.close()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(st.sampled_from(["append", "deliver", "restart"]), st.integers(1, 5)), max_size=25))
async def test_random_histories_deliver_everything_once_in_order(tmp_path: Path, ops: list[tuple[str, int]]) -> None:
    import tempfile

    d = Path(tempfile.mkdtemp(dir=tmp_path))
    s = Spool(d, segment_bytes=64)
    await s.open()
    appended: list[bytes] = []
    delivered: list[bytes] = []
    for op, n in ops:
        if op == "append":
            batch = [f"r{len(appended) + i}".encode() for i in range(n)]
            appended += batch
            await s.append(*batch)
        elif op == "deliver":
            for rec in await s.pending(n):
                delivered.append(rec.payload)
                await s.ack(rec)
        else:
            await s.close()
            s = Spool(d, segment_bytes=64)
            await s.open()
    delivered += await _all(s)
    await s.close()
    assert delivered == appended


async def test_backlog_counts_only_unacknowledged_bytes(tmp_path: Path) -> None:
    s = Spool(tmp_path, segment_bytes=100)
    await s.open()
    assert await s.backlog() == 0
    await s.append(*[b"x" * 10 for _ in range(20)])  # 18 bytes a record with its header
    assert await s.backlog() == await s.size() == 20 * 18
    await s.ack((await s.pending(15))[-1])
    assert await s.backlog() == 5 * 18 < await s.size()
    await s.ack((await s.pending(5))[-1])
    assert await s.backlog() == 0
    await s.close()
