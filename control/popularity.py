"""Per-region title popularity: what the fill planner believes each region will watch next.

Demand is counted in *views*: bytes streamed divided by the title's size, so a long film and a short
episode that are each watched once weigh the same, and edge telemetry (bytes per title) and viewing
events (fraction watched) add up in one unit.  Old demand fades exponentially with a half-life so
the forecast follows taste without forgetting it overnight.  A title that has just been (or is about
to be) released has no history yet, so it gets a prior: a share of what the region's reference-rank
title draws, fading with its own half-life, and replaced by observed demand as soon as that is larger.

Pure: no clock is read and nothing is stored outside the object; the telemetry shell feeds samples in
(with its notion of ``now``) and the planner asks for a forecast.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from shared.errors import InvalidInput
from shared.ids import check_id


@dataclass(frozen=True)
class PopularityConfig:
    #: Demand this old counts half as much.
    half_life_s: float = 86_400.0
    #: A new release is forecast at this multiple of the region's reference-rank title (0 disables).
    release_boost: float = 1.0
    #: Rank of the region's title the new-release prior is scaled from (1 = the current top title).
    reference_rank: int = 10
    #: The new-release prior halves every this many seconds after the release.  Short on purpose: a day
    #: after release the title has its own observed demand, and a lingering prior on flops crowds the
    #: disks (in bench/fill_sim.py a 5-day prior cost 1.5 points of offload against a 1-day one).
    release_half_life_s: float = 86_400.0
    #: A title is boosted from this long before its release, so it is in place on release day.
    prefill_s: float = 86_400.0
    #: Samples stamped further than this past ``now`` are refused (clock skew or forgery).
    max_future_s: float = 300.0
    #: Bound on tracked (region, title) pairs; the faintest are forgotten first.
    max_entries: int = 1_000_000

    def __post_init__(self) -> None:
        for name in ("half_life_s", "release_half_life_s"):
            value = getattr(self, name)
            if not (_finite(value) and value > 0):
                raise InvalidInput(f"{name} must be a finite number > 0, not {value!r}")
        for name in ("release_boost", "prefill_s", "max_future_s"):
            value = getattr(self, name)
            if not (_finite(value) and value >= 0):
                raise InvalidInput(f"{name} must be a finite number >= 0, not {value!r}")
        if not (isinstance(self.reference_rank, int) and self.reference_rank >= 1):
            raise InvalidInput(f"reference_rank must be an integer >= 1, not {self.reference_rank!r}")
        if not (isinstance(self.max_entries, int) and self.max_entries >= 1):
            raise InvalidInput(f"max_entries must be an integer >= 1, not {self.max_entries!r}")


@dataclass(frozen=True)
class DemandSample:
    """``views`` of ``title_id`` watched in ``region`` at ``at`` (seconds since the epoch)."""

    region: str
    title_id: str
    views: float
    at: float

    @classmethod
    def from_bytes(cls, region: str, title_id: str, streamed: int, title_size: int, at: float) -> DemandSample:
        """Convert edge telemetry (bytes streamed of a title) into views."""
        if not (isinstance(streamed, int) and not isinstance(streamed, bool) and streamed >= 0):
            raise InvalidInput(f"bytes streamed of {title_id!r} must be an integer >= 0, not {streamed!r}")
        if not (isinstance(title_size, int) and not isinstance(title_size, bool) and title_size > 0):
            raise InvalidInput(f"size of {title_id!r} must be an integer > 0, not {title_size!r}")
        return cls(region, title_id, streamed / title_size, at)

    def __post_init__(self) -> None:
        check_id(self.region, "region")
        check_id(self.title_id, "title id")
        if not (_finite(self.views) and self.views >= 0):
            raise InvalidInput(f"views of {self.title_id!r} must be a finite number >= 0, not {self.views!r}")
        if not _finite(self.at):
            raise InvalidInput(f"sample time {self.at!r} is not a finite number")


def _finite(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


class DemandModel:
    """Exponentially decayed views per (region, title), plus the new-release prior."""

    def __init__(self, config: PopularityConfig | None = None) -> None:
        self.config = config or PopularityConfig()
        # region -> title -> (decayed views as of `stamp`, stamp)
        self._scores: dict[str, dict[str, tuple[float, float]]] = {}
        self._entries = 0

    def __len__(self) -> int:
        return self._entries

    def _decay(self, seconds: float) -> float:
        """Factor for demand ``seconds`` old; never above 1, so a future stamp cannot inflate a score."""
        return 1.0 if seconds <= 0 else 0.5 ** (seconds / self.config.half_life_s)

    def observe(self, samples: Iterable[DemandSample], now: float) -> int:
        """Add a batch of samples; all or nothing, so a rejected batch can be retried whole."""
        if not _finite(now):
            raise InvalidInput(f"now {now!r} is not a finite number")
        batch = list(samples)
        for sample in batch:
            if not isinstance(sample, DemandSample):
                raise InvalidInput(f"expected a DemandSample, got {type(sample).__name__}")
            if sample.at > now + self.config.max_future_s:
                raise InvalidInput(f"sample for {sample.title_id!r} is stamped {sample.at - now:.0f} s in the future")
        for sample in batch:
            titles = self._scores.setdefault(sample.region, {})
            held = titles.get(sample.title_id)
            if held is None:
                titles[sample.title_id] = (sample.views, sample.at)
                self._entries += 1
                continue
            value, stamp = held
            if sample.at >= stamp:
                titles[sample.title_id] = (value * self._decay(sample.at - stamp) + sample.views, sample.at)
            else:
                titles[sample.title_id] = (value + sample.views * self._decay(stamp - sample.at), stamp)
        if self._entries > self.config.max_entries:
            self._forget(now)
        return len(batch)

    def _forget(self, now: float) -> None:
        keep = int(self.config.max_entries * 0.9)
        faint = heapq.nsmallest(self._entries - keep, (
            (value * self._decay(now - stamp), region, title)
            for region, titles in self._scores.items() for title, (value, stamp) in titles.items()))
        for _, region, title in faint:
            del self._scores[region][title]
            if not self._scores[region]:
                del self._scores[region]
        self._entries = keep

    def regions(self) -> list[str]:
        return sorted(self._scores)

    def observed(self, region: str, at: float) -> dict[str, float]:
        """Decayed views per title in ``region`` as of ``at``."""
        titles = self._scores.get(region, {})
        return {t: value * self._decay(at - stamp) for t, (value, stamp) in titles.items()}

    def forecast(self, region: str, at: float, releases: Mapping[str, float] | None = None) -> dict[str, float]:
        """Expected relative views per title in ``region`` around ``at``: observed demand or the release prior.

        ``releases`` maps title ids to release times; titles released long ago get no prior, titles
        not yet released get one from ``prefill_s`` before their release.
        """
        if not _finite(at):
            raise InvalidInput(f"forecast time {at!r} is not a finite number")
        scores = self.observed(region, at)
        cfg = self.config
        if not releases or cfg.release_boost == 0:
            return scores
        ranked = heapq.nlargest(cfg.reference_rank, scores.values())
        reference = ranked[-1] if ranked else 0.0
        for title_id, released in releases.items():
            age = at - released
            if not _finite(released) or age < -cfg.prefill_s:
                continue
            prior = cfg.release_boost * reference * 0.5 ** (max(0.0, age) / cfg.release_half_life_s)
            if prior > scores.get(title_id, 0.0):
                scores[title_id] = prior
        return scores
