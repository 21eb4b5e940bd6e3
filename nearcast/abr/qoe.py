"""Quality of experience, as the ABR literature scores it.

The linear QoE of Pensieve (Mao et al., 2017): per segment, the bitrate in Mbps, minus 4.3 x the
rebuffering seconds it caused, minus the absolute bitrate change from the previous segment.
"""

from __future__ import annotations

from dataclasses import dataclass, field

REBUFFER_PENALTY = 4.3


@dataclass
class QoeLog:
    startup_delay_s: float | None = None
    bitrates_bps: list[int] = field(default_factory=list)
    rebuffers_s: list[float] = field(default_factory=list)
    played_s: float = 0.0
    switches: int = 0
    failovers: int = 0
    errors: int = 0
    bytes: int = 0

    def segment(self, bitrate_bps: int, rebuffer_s: float) -> None:
        if self.bitrates_bps and self.bitrates_bps[-1] != bitrate_bps:
            self.switches += 1
        self.bitrates_bps.append(bitrate_bps)
        self.rebuffers_s.append(rebuffer_s)

    @property
    def rebuffer_s(self) -> float:
        return sum(self.rebuffers_s)

    @property
    def rebuffer_ratio(self) -> float:
        total = self.played_s + self.rebuffer_s
        return self.rebuffer_s / total if total > 0 else 0.0

    @property
    def average_bitrate_bps(self) -> float:
        return sum(self.bitrates_bps) / len(self.bitrates_bps) if self.bitrates_bps else 0.0

    def score(self) -> float:
        """Pensieve's linear QoE summed over segments (bitrate in Mbps)."""
        mbps = [b / 1e6 for b in self.bitrates_bps]
        smooth = sum(abs(a - b) for a, b in zip(mbps[1:], mbps[:-1], strict=True))
        return sum(mbps) - REBUFFER_PENALTY * self.rebuffer_s - smooth

    def summary(self) -> dict[str, float | int | None]:
        n = len(self.bitrates_bps)
        return {
            "segments": n,
            "startup_delay_s": None if self.startup_delay_s is None else round(self.startup_delay_s, 3),
            "rebuffer_s": round(self.rebuffer_s, 3),
            "rebuffer_ratio": round(self.rebuffer_ratio, 4),
            "average_bitrate_kbps": round(self.average_bitrate_bps / 1000, 1),
            "switches": self.switches,
            "failovers": self.failovers,
            "errors": self.errors,
            "bytes": self.bytes,
            "qoe": round(self.score(), 3),
            "qoe_per_segment": round(self.score() / n, 3) if n else None,
        }
