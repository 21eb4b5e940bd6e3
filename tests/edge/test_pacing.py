"""Token bucket and fill window, with an injected clock (no sleeping)."""

from __future__ import annotations

from datetime import datetime

import pytest

from edge.pacing import FillWindow, TokenBucket
from shared.errors import InvalidInput


class Clock:
    def __init__(self) -> None:
        self.t = 0.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.t

    async def sleep(self, s: float) -> None:
        self.slept.append(s)
        self.t += s


async def test_bucket_long_run_rate_is_exact_for_any_chunk_size() -> None:
    for chunk in (1000, 65_536, 300_000):
        clock = Clock()
        bucket = TokenBucket(100_000, clock=clock, sleep=clock.sleep)
        sent = 0
        while sent < 2_000_000:
            await bucket.take(chunk)
            sent += chunk
        # time to *start* the last chunk: (sent - chunk - burst) / rate
        assert clock.t == pytest.approx((sent - 10_000) / 100_000, rel=0.01)


async def test_bucket_unlimited_and_rate_change() -> None:
    clock = Clock()
    bucket = TokenBucket(0, clock=clock, sleep=clock.sleep)
    await bucket.take(10**9)
    assert clock.slept == []
    bucket.set_rate(1000)
    assert bucket.delay_for(1000) == pytest.approx(1.0)


def test_fill_window() -> None:
    night = FillWindow.parse("22:30-06:00")
    assert night.is_open(datetime(2026, 1, 1, 23, 0)) and night.is_open(datetime(2026, 1, 1, 5, 59))
    assert not night.is_open(datetime(2026, 1, 1, 12, 0))
    assert night.seconds_until_open(datetime(2026, 1, 1, 22, 0)) == 1800
    assert night.seconds_until_open(datetime(2026, 1, 1, 23, 0)) == 0
    day = FillWindow.parse("02:00-04:00")
    assert day.seconds_until_open(datetime(2026, 1, 1, 5, 0)) == 21 * 3600
    assert FillWindow.parse("").always and FillWindow.parse("00:00-24:00").always
    for bad in ("2-4", "25:00-26:00", "02:00-02:00", "02:00", "aa:bb-cc:dd"):
        with pytest.raises(InvalidInput):
            FillWindow.parse(bad)
