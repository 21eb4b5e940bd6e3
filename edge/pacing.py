"""When and how fast fills may run: a token bucket for bytes and a local-hours fill window.

Both are pure apart from the clock, which is injected, so their rules are tested without sleeping.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from shared.errors import InvalidInput

_WINDOW_RE = re.compile(r"([01]\d|2[0-3]):([0-5]\d)-([01]\d|2[0-4]):([0-5]\d)")


class TokenBucket:
    """Bytes per second with a small burst; ``take`` may go into debt and then sleeps it off.

    Going into debt (rather than waiting for the full amount first) keeps the long-run rate exact for
    any chunk size, which is what the rate limit promises the ISP.
    """

    def __init__(self, rate_bytes_s: float, *, burst_s: float = 0.1,
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> None:
        self._clock = clock
        self._sleep = sleep
        self.burst_s = burst_s
        self.rate = 0.0
        self._tokens = 0.0
        self._last = clock()
        self.set_rate(rate_bytes_s)

    def set_rate(self, rate_bytes_s: float) -> None:
        self.rate = max(0.0, float(rate_bytes_s))
        self._tokens = min(self._tokens, self.rate * self.burst_s)

    def _refill(self) -> None:
        now = self._clock()
        self._tokens = min(self.rate * self.burst_s, self._tokens + (now - self._last) * self.rate)
        self._last = now

    def delay_for(self, nbytes: int) -> float:
        """Account for ``nbytes`` and return how long to wait before sending more (0 if unlimited)."""
        if self.rate <= 0:
            return 0.0
        self._refill()
        self._tokens -= nbytes
        return 0.0 if self._tokens >= 0 else -self._tokens / self.rate

    async def take(self, nbytes: int) -> None:
        delay = self.delay_for(nbytes)
        if delay > 0:
            await self._sleep(delay)


@dataclass(frozen=True)
class FillWindow:
    """Local hours during which fills run, e.g. ``"02:00-06:00"``; may wrap midnight; empty is always."""

    start_min: int = 0
    end_min: int = 24 * 60

    @classmethod
    def parse(cls, text: str) -> FillWindow:
        text = text.strip()
        if not text:
            return cls()
        m = _WINDOW_RE.fullmatch(text.replace(" ", ""))
        if m is None:
            raise InvalidInput(f"fill window {text[:40]!r} is not HH:MM-HH:MM")
        start = int(m.group(1)) * 60 + int(m.group(2))
        end = int(m.group(3)) * 60 + int(m.group(4))
        if end > 24 * 60 or start == end:
            raise InvalidInput(f"fill window {text[:40]!r} is empty or past 24:00")
        return cls(start, end)

    @property
    def always(self) -> bool:
        return self.start_min == 0 and self.end_min == 24 * 60

    def is_open(self, local: datetime) -> bool:
        minute = local.hour * 60 + local.minute
        if self.start_min < self.end_min:
            return self.start_min <= minute < self.end_min
        return minute >= self.start_min or minute < self.end_min

    def seconds_until_open(self, local: datetime) -> float:
        if self.always or self.is_open(local):
            return 0.0
        opening = local.replace(hour=self.start_min // 60, minute=self.start_min % 60, second=0, microsecond=0)
        if opening <= local:
            opening += timedelta(days=1)
        return (opening - local).total_seconds()


def bits_to_bytes(rate_bps: int) -> float:
    """Desired state carries the limit in bits per second, as network people say it."""
    return rate_bps / 8.0
