"""ABR decision rules, pure: given what the player has seen, which rendition to fetch next.

- :class:`ThroughputRule`: dual exponentially-weighted moving averages of measured throughput (a
  fast and a slow half-life, the lower estimate wins, as dash.js does), times a safety factor.
- :class:`BolaRule`: BOLA-BASIC (Spiteri, Urgaonkar, Sitaraman, "BOLA: Near-Optimal Bitrate
  Adaptation for Online Videos", 2016), a Lyapunov-optimisation rule on the buffer level alone, with
  the parameterisation dash.js uses (minimum buffer 10 s, buffer target growing with the ladder).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Protocol


@dataclass(frozen=True)
class Observation:
    """What the player knows when it picks the next segment."""

    buffer_s: float
    segment_duration_s: float
    last_quality: int | None


class AbrRule(Protocol):
    name: str

    def choose(self, bitrates: list[int], obs: Observation) -> int: ...

    def record_download(self, nbytes: int, seconds: float) -> None: ...


@dataclass
class Ewma:
    half_life_s: float
    _estimate: float = 0.0
    _weight: float = 0.0

    def add(self, value: float, duration_s: float) -> None:
        alpha = math.pow(0.5, duration_s / self.half_life_s)
        self._estimate = alpha * self._estimate + (1 - alpha) * value
        self._weight = alpha * self._weight + (1 - alpha)

    @property
    def value(self) -> float | None:
        return self._estimate / self._weight if self._weight > 0 else None


@dataclass
class ThroughputRule:
    safety: float = 0.9
    fast: Ewma = field(default_factory=lambda: Ewma(3.0))
    slow: Ewma = field(default_factory=lambda: Ewma(8.0))
    name: str = "throughput"

    def record_download(self, nbytes: int, seconds: float) -> None:
        if seconds <= 0 or nbytes <= 0:
            return
        bps = nbytes * 8 / seconds
        self.fast.add(bps, seconds)
        self.slow.add(bps, seconds)

    def estimate_bps(self) -> float | None:
        values = [v for v in (self.fast.value, self.slow.value) if v is not None]
        return min(values) if values else None

    def choose(self, bitrates: list[int], obs: Observation) -> int:
        est = self.estimate_bps()
        if est is None:
            return 0
        budget = est * self.safety
        best = 0
        for i, rate in enumerate(bitrates):
            if rate <= budget:
                best = i
        return best


@dataclass
class BolaRule:
    """BOLA with dash.js's start-up handling.

    Pure BOLA starts every session on the lowest rung because its buffer is empty.  As dash.js does,
    the first choice comes from throughput, and a *placeholder* buffer is credited so BOLA agrees with
    it; BOLA-O's guard then stops BOLA from jumping above both the throughput-safe rung and the last
    rung at once.  The placeholder never lets the effective buffer exceed BOLA's target.
    """

    minimum_buffer_s: float = 10.0
    buffer_per_level_s: float = 2.0
    stable_buffer_s: float = 12.0
    throughput: ThroughputRule = field(default_factory=ThroughputRule)
    name: str = "bola"
    placeholder_s: float = 0.0
    startup: bool = True

    def record_download(self, nbytes: int, seconds: float) -> None:
        self.throughput.record_download(nbytes, seconds)

    def buffer_target_s(self, levels: int) -> float:
        return max(self.stable_buffer_s, self.minimum_buffer_s + self.buffer_per_level_s * levels)

    def _bola(self, bitrates: list[int], buffer_s: float) -> int:
        utilities = [math.log(b / bitrates[0]) + 1 for b in bitrates]
        target = self.buffer_target_s(len(bitrates))
        gp = (utilities[-1] - 1) / (target / self.minimum_buffer_s - 1)
        vp = self.minimum_buffer_s / gp
        scores = [(vp * (u + gp) - buffer_s) / b for u, b in zip(utilities, bitrates, strict=True)]
        return max(range(len(bitrates)), key=lambda i: scores[i])

    def min_buffer_for(self, bitrates: list[int], quality: int) -> float:
        """The smallest buffer level (0.1 s steps) at which BOLA picks ``quality`` or better."""
        target = self.buffer_target_s(len(bitrates))
        steps = int(target * 10) + 1
        for i in range(steps):
            if self._bola(bitrates, i / 10) >= quality:
                return i / 10
        return target

    def choose(self, bitrates: list[int], obs: Observation) -> int:
        if len(bitrates) == 1:
            return 0
        safe = self.throughput.choose(bitrates, obs)
        if self.startup or obs.last_quality is None:
            self.placeholder_s = max(0.0, self.min_buffer_for(bitrates, safe) - obs.buffer_s)
            if self.throughput.estimate_bps() is not None and obs.buffer_s >= obs.segment_duration_s:
                self.startup = False
            return safe
        target = self.buffer_target_s(len(bitrates))
        self.placeholder_s = min(self.placeholder_s, max(0.0, target - obs.buffer_s))
        quality = self._bola(bitrates, obs.buffer_s + self.placeholder_s)
        if quality > obs.last_quality and quality > safe:
            quality = max(safe, obs.last_quality)  # BOLA-O: no jump past what throughput supports
        return quality


def make_rule(name: str) -> ThroughputRule | BolaRule:
    if name == "throughput":
        return ThroughputRule()
    if name == "bola":
        return BolaRule()
    raise ValueError(f"unknown ABR rule {name!r} (throughput or bola)")
