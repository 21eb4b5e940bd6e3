"""A profile's homepage rows, as candidates for the edge re-ranker (pure: no I/O, no clock).

Rows, in claim order (a title appears in at most one row of a page — the edge re-orders items inside a
row, so "no duplicate at the head of two rows" only holds if there is no duplicate at all):

1. **Continue Watching** — titles part-way through, most recent first.
2. **Because you watched X** — X the most recent finished (or liked) title; its item neighbours.
3. **Top Picks for You** — the recommender's ranking; a profile it cannot score (new, or nothing it
   watched is known to the model) gets its region's trending titles instead.
4. **Trending Now** — time-decayed plays in the profile's region, rising titles favoured.
5. **Something different** (discovery) — titles outside the profile's usual genres, newly published
   titles first so a title nobody has watched yet still reaches viewers (cold titles are reserved for
   this row before the others claim theirs).  Its slot on the page is
   chosen with epsilon-greedy exploration and the row carries the propensity of that choice, so the
   slot's effect can be evaluated off-policy from impressions.

Finished titles never appear unless the profile shows rewatch signals (see :mod:`control.events`);
disliked ones never do.  Inside a row, :func:`diversify` keeps runs of one genre short.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .events import ProfileState

Scored = Sequence[tuple[str, float]]

TRENDING_TYPES = ("play_start", "complete")
GLOBAL = "*"
_COLD = 1e9  # score offset that puts cold titles ahead in the discovery ordering


@dataclass(frozen=True)
class TitleInfo:
    """A playable title as the rows see it."""

    title_id: str
    name: str
    genres: tuple[str, ...]
    released: float
    artwork: tuple[str, ...] = ()


@dataclass(frozen=True)
class RowsConfig:
    row_size: int = 40
    because_size: int = 20
    discovery_size: int = 12
    new_title_days: float = 30.0
    cold_plays: int = 5  # titles with fewer trending events than this count as cold
    explore_epsilon: float = 0.2
    usual_genre_affinity: float = 0.5  # genres at or above this affinity are the profile's usual ones
    max_genre_run: int = 2


@dataclass(frozen=True)
class RowsInput:
    state: ProfileState
    titles: Mapping[str, TitleInfo]  # published titles only
    trending: Scored  # the profile's region, best first
    plays: Mapping[str, int]  # recent trending events per title (all regions): cold-start detection
    top_picks: Scored | None  # None: the model cannot score this profile
    neighbours: Callable[[str], Scored]
    now: float


def trending_scores(activity: Iterable[tuple[str | None, str, float, int]], now: float, *,
                    half_life_s: float = 86_400.0, baseline_half_life_s: float = 7 * 86_400.0
                    ) -> dict[str, list[tuple[str, float]]]:
    """Region (and :data:`GLOBAL`) → titles by trending score, best first.

    The score is the short-half-life decayed count, boosted by up to 3x when the title's recent rate
    is above its longer-run rate (rising) and damped down to 0.5x when it is fading.
    """
    short: dict[tuple[str, str], float] = {}
    long: dict[tuple[str, str], float] = {}
    for region, title, bucket, count in activity:
        age = max(0.0, now - bucket)
        for r in {region or GLOBAL, GLOBAL}:
            key = (r, title)
            short[key] = short.get(key, 0.0) + count * 0.5 ** (age / half_life_s)
            long[key] = long.get(key, 0.0) + count * 0.5 ** (age / baseline_half_life_s)
    out: dict[str, list[tuple[str, float]]] = {}
    for (region, title), s in short.items():
        rate_short = s / half_life_s
        rate_long = long[(region, title)] / baseline_half_life_s
        trend = math.log2((rate_short + 1e-9) / (rate_long + 1e-9))
        score = s * (1.0 + 0.5 * min(4.0, max(-1.0, trend)))
        out.setdefault(region, []).append((title, score))
    for items in out.values():
        items.sort(key=lambda kv: (-kv[1], kv[0]))
    return out


def diversify(items: Sequence[tuple[str, float]], genres: Mapping[str, Sequence[str]], max_run: int
              ) -> list[tuple[str, float]]:
    """Greedy re-order: no more than ``max_run`` consecutive titles share their main genre, when the
    rest of the row allows it (the best remaining title of another genre moves up)."""
    left = list(items)
    out: list[tuple[str, float]] = []
    while left:
        recent = [_main(genres, t) for t, _ in out[-max_run:]]
        blocked = len(recent) == max_run and len(set(recent)) == 1 and recent[0] is not None
        pick = 0
        if blocked:
            pick = next((i for i, (t, _) in enumerate(left) if _main(genres, t) != recent[0]), 0)
        out.append(left.pop(pick))
    return out


def _main(genres: Mapping[str, Sequence[str]], title: str) -> str | None:
    g = genres.get(title, ())
    return g[0] if g else None


class _Page:
    def __init__(self, inp: RowsInput, config: RowsConfig) -> None:
        self.inp, self.config = inp, config
        self.hidden = inp.state.hidden()
        self.claimed: set[str] = set()
        self.genres = {t: info.genres for t, info in inp.titles.items()}

    def take(self, scored: Iterable[tuple[str, float]], limit: int) -> list[tuple[str, float]]:
        out: list[tuple[str, float]] = []
        for title, score in scored:
            if len(out) >= limit:
                break
            if title in self.inp.titles and title not in self.hidden and title not in self.claimed \
                    and math.isfinite(score):
                out.append((title, float(score)))
                self.claimed.add(title)
        return diversify(out, self.genres, self.config.max_genre_run)

    def row(self, row_id: str, title: str, items: Sequence[tuple[str, float]], **extra: Any) -> dict[str, Any]:
        return {"id": row_id, "title": title, **extra, "items": [
            {"title_id": t, "name": self.inp.titles[t].name, "score": round(s, 6),
             "artwork": list(self.inp.titles[t].artwork)} for t, s in items]}


def build_rows(inp: RowsInput, config: RowsConfig = RowsConfig(), *, rng: random.Random | None = None
               ) -> dict[str, Any]:
    """The candidate document of :mod:`edge.rerank`'s contract for one profile."""
    page = _Page(inp, config)
    state, n = inp.state, config.row_size
    rows: list[dict[str, Any]] = []
    # Continue Watching ignores "finished" (it never holds finished titles) but not "disliked".
    cw = [(a.title_id, 1.0 - rank / (n + 1)) for rank, a in enumerate(state.continue_watching())]
    cw_items = [(t, s) for t, s in cw if t in inp.titles and t not in page.claimed][:n]
    page.claimed.update(t for t, _ in cw_items)
    if cw_items:
        rows.append(page.row("continue-watching", "Continue Watching", cw_items))
    x = state.because_of()
    if x is not None:
        # a small catalogue must leave titles for Top Picks: Because-you-watched takes at most a quarter
        size = min(config.because_size, max(3, len(inp.titles) // 4))
        items = page.take(inp.neighbours(x.title_id), size)
        if items:
            name = inp.titles[x.title_id].name if x.title_id in inp.titles else x.title_id
            rows.append(page.row("because-you-watched", f"Because you watched {name}", items, seed=x.title_id))
    # Cold titles (new, barely watched) are held for the discovery row before the big rows claim them:
    # otherwise a small catalogue's Top Picks and Trending would swallow them and nobody would see them.
    fresh = page.take(((t, s) for t, s in _discovery(inp, config, page) if s >= _COLD), config.discovery_size)
    picks_source = "model" if inp.top_picks is not None else "trending"
    picks = page.take(inp.top_picks if inp.top_picks is not None else inp.trending, n)
    if picks:
        rows.append(page.row("top-picks", "Top Picks for You", picks, source=picks_source))
    trending = page.take(inp.trending, n)
    if trending:
        rows.append(page.row("trending", "Trending Now", trending, region=state.region or GLOBAL))
    discovery = fresh + page.take(_discovery(inp, config, page), config.discovery_size - len(fresh))
    if discovery:
        after_picks = next((i + 1 for i, r in enumerate(rows) if r["id"] == "top-picks"), len(rows))
        slot, propensity = _explore_slot(len(rows), after_picks, config.explore_epsilon, rng or random.Random())
        rows.insert(slot, page.row("discovery", "Something different", discovery, slot=slot,
                                   slot_propensity=round(propensity, 6)))
    return {"profile_id": state.profile_id, "region": state.region or GLOBAL,
            "affinities": state.affinities(page.genres), "rows": rows}


def _discovery(inp: RowsInput, config: RowsConfig, page: _Page) -> list[tuple[str, float]]:
    """Titles outside the usual genres: cold (new, barely watched) ones first, then by trending."""
    affinity = inp.state.affinities(page.genres)
    usual = {g for g, a in affinity.items() if a >= config.usual_genre_affinity}
    trend = dict(inp.trending)
    new_s = config.new_title_days * 86_400.0
    scored = []
    for t, info in inp.titles.items():
        if usual & set(info.genres):
            continue
        cold = inp.plays.get(t, 0) < config.cold_plays and inp.now - info.released <= new_s
        scored.append((t, (_COLD if cold else 0.0) + trend.get(t, 0.0)))
    scored.sort(key=lambda kv: (-kv[1], kv[0]))
    return scored


def _explore_slot(n_rows: int, default: int, epsilon: float, rng: random.Random) -> tuple[int, float]:
    """Epsilon-greedy over insertion slots 0..n_rows: ``default`` (after Top Picks) most of the time."""
    slots = n_rows + 1
    slot = rng.randrange(slots) if rng.random() < epsilon else default
    propensity = epsilon / slots + (1.0 - epsilon if slot == default else 0.0)
    return slot, propensity
