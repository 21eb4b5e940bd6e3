"""The re-ranker's pure core: candidate rows + local context → feature matrix → ordered rows.

No I/O and no clock here: the handler (:mod:`edge.home`) fetches candidates, reads the clock and the
cache, and calls these functions; tests feed them plain data.

Contract assumed of the control plane (``GET {control.api_url}/v1/profiles/{profile_id}/home``)::

    {"profile_id": "p1",
     "affinities": {"drama": 0.7, ...},            # optional: genre → [0, 1], the bandit's context
     "rows": [{"id": "because-you-watched", "title": "Because you watched X",
               "items": [{"title_id": "t1", "name": "Title", "score": 0.93, "artwork": ["a1", "a2"]}, ...]},
              ...]}

Rows keep the control plane's order; only the items inside a row are re-ordered.  Anything outside
the bounds below is refused as a whole (:class:`CandidateError`) rather than half-used.

The edge ranker sees only what the appliance knows better than the control plane — the control plane's
own score and rank, demand at this appliance in the last minutes, whether the title is fully cached here,
hour and device — so its feature spec names columns from :data:`EDGE_FEATURES` and nothing else.
A bundle whose spec asks for anything else is refused at load: silently mis-scoring is worse than
keeping the previous model.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from shared.errors import InvalidInput
from shared.ids import is_valid_id

F32 = npt.NDArray[np.float32]

DEVICES = ("tv", "mobile", "web", "tablet")
#: Every feature the edge can compute, in no particular order (the spec decides the column order).
EDGE_FEATURES = (
    "cp_score", "cp_log_rank", "local_log_demand", "local_demand_share", "cached_here",
    "hour_sin", "hour_cos", *(f"device_{d}" for d in DEVICES), "device_other",
)  # fmt: skip
MAX_ROWS = 50
MAX_ITEMS = 200
MAX_ARTWORK = 32
MAX_AFFINITIES = 256


class CandidateError(InvalidInput):
    """The control plane's candidate document breaks the contract (or a feature spec is unusable)."""


@dataclass(frozen=True)
class Item:
    title_id: str
    score: float
    artwork: tuple[str, ...] = ()
    name: str = ""  # display name, passed through to the page


@dataclass(frozen=True)
class Row:
    id: str
    title: str
    items: tuple[Item, ...]


@dataclass(frozen=True)
class Candidates:
    profile_id: str
    rows: tuple[Row, ...]
    affinities: Mapping[str, float]


@dataclass(frozen=True)
class Context:
    """What the appliance knows locally at request time."""

    demand: Mapping[str, int]  # requests per title in the recent window
    cached: Callable[[str], bool]  # title fully cached here
    hour: float
    device: str


def _finite(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise CandidateError(f"{what} must be a finite number")
    return float(value)


def _item(doc: Any, where: str) -> Item:
    if not isinstance(doc, dict):
        raise CandidateError(f"{where}: an item must be an object")
    title_id = doc.get("title_id")
    if not is_valid_id(title_id):
        raise CandidateError(f"{where}: title_id must be an id")
    artwork = doc.get("artwork", [])
    if not isinstance(artwork, list) or len(artwork) > MAX_ARTWORK or not all(is_valid_id(a) for a in artwork):
        raise CandidateError(f"{where}: artwork must be a list of at most {MAX_ARTWORK} ids")
    if len(set(artwork)) != len(artwork):
        raise CandidateError(f"{where}: artwork variants must be unique")
    name = doc.get("name", "")
    if not isinstance(name, str):
        raise CandidateError(f"{where}: name must be a string")
    return Item(str(title_id), _finite(doc.get("score", 0.0), f"{where}: score"), tuple(artwork), name[:200])


def parse_candidates(doc: Any, profile_id: str) -> Candidates:
    """Validate the control plane's answer against the contract above."""
    if not isinstance(doc, dict) or not isinstance(doc.get("rows"), list):
        raise CandidateError("candidates must be an object with a list of rows")
    if doc.get("profile_id", profile_id) != profile_id:
        raise CandidateError("candidates are for another profile")
    if len(doc["rows"]) > MAX_ROWS:
        raise CandidateError(f"{len(doc['rows'])} rows; at most {MAX_ROWS}")
    rows = []
    for i, r in enumerate(doc["rows"]):
        if not isinstance(r, dict) or not is_valid_id(r.get("id")) or not isinstance(r.get("title", ""), str):
            raise CandidateError(f"row {i}: needs an id and a string title")
        items = r.get("items")
        if not isinstance(items, list) or len(items) > MAX_ITEMS:
            raise CandidateError(f"row {i}: items must be a list of at most {MAX_ITEMS}")
        parsed = tuple(_item(it, f"row {i} item {j}") for j, it in enumerate(items))
        if len({it.title_id for it in parsed}) != len(parsed):
            raise CandidateError(f"row {i}: a title appears twice")
        rows.append(Row(str(r["id"]), str(r.get("title", ""))[:200], parsed))
    aff = doc.get("affinities", {})
    if not isinstance(aff, dict) or len(aff) > MAX_AFFINITIES:
        raise CandidateError(f"affinities must be an object of at most {MAX_AFFINITIES} genres")
    affinities = {str(k): _finite(v, f"affinity {str(k)[:40]!r}") for k, v in aff.items()}
    return Candidates(profile_id, tuple(rows), affinities)


def check_spec(doc: Any) -> tuple[str, ...]:
    """The feature columns a bundle's ``feature_spec.json`` asks for, if the edge can compute them all."""
    if not isinstance(doc, dict) or not isinstance(doc.get("features"), list) or not doc["features"]:
        raise CandidateError("feature spec must be an object with a non-empty list of features")
    names = doc["features"]
    unknown = [str(n)[:40] for n in names if n not in EDGE_FEATURES]
    if unknown:
        raise CandidateError(f"feature spec asks for features the edge cannot compute: {', '.join(unknown)}")
    if len(set(names)) != len(names):
        raise CandidateError("feature spec names a feature twice")
    return tuple(str(n) for n in names)


def features(spec: Sequence[str], rows: Sequence[Row], ctx: Context) -> F32:
    """One matrix for the whole page (rows stacked), so the model is called once per request."""
    items = [(rank, it) for row in rows for rank, it in enumerate(row.items)]
    total = max(1, sum(ctx.demand.values()))
    angle = 2 * math.pi * ctx.hour / 24
    device = ctx.device if ctx.device in DEVICES else "other"
    constant = {"hour_sin": math.sin(angle), "hour_cos": math.cos(angle),
                **{f"device_{d}": float(d == device) for d in (*DEVICES, "other")}}
    x = np.empty((len(items), len(spec)), dtype=np.float32)
    for col, name in enumerate(spec):
        if name in constant:
            x[:, col] = constant[name]
        elif name == "cp_score":
            x[:, col] = [it.score for _, it in items]
        elif name == "cp_log_rank":
            x[:, col] = [math.log1p(rank) for rank, _ in items]
        elif name == "local_log_demand":
            x[:, col] = [math.log1p(ctx.demand.get(it.title_id, 0)) for _, it in items]
        elif name == "local_demand_share":
            x[:, col] = [ctx.demand.get(it.title_id, 0) / total for _, it in items]
        elif name == "cached_here":
            x[:, col] = [float(ctx.cached(it.title_id)) for _, it in items]
        else:
            raise CandidateError(f"unknown feature {name!r}")
    return x


def order_rows(rows: Sequence[Row], scores: F32) -> list[list[tuple[Item, float]]]:
    """Each row's items by descending model score (stable: ties keep the control plane's order)."""
    n = sum(len(r.items) for r in rows)
    if scores.shape != (n,):
        raise CandidateError(f"model returned {scores.shape} scores for {n} items")
    if not np.all(np.isfinite(scores)):
        raise CandidateError("model returned non-finite scores")
    out, start = [], 0
    for row in rows:
        s = scores[start:start + len(row.items)]
        order = np.argsort(-s, kind="stable")
        out.append([(row.items[i], float(s[i])) for i in order.tolist()])
        start += len(row.items)
    return out


def trending_row(demand: Mapping[str, int], limit: int = 40) -> Row:
    """The last resort: this appliance's own most requested titles (ties by id, for stable pages)."""
    top = sorted(demand.items(), key=lambda kv: (-kv[1], kv[0]))[:limit]
    return Row("local-trending", "Popular near you", tuple(Item(t, float(n)) for t, n in top if n > 0))


class RecentDemand:
    """Requests per title over a sliding window, in coarse buckets so memory and cost stay bounded.

    Time is passed in (no clock here).  Titles beyond ``max_titles`` in one bucket are dropped: a flood
    of distinct ids must not grow memory.
    """

    def __init__(self, window_s: float = 900.0, bucket_s: float = 60.0, max_titles: int = 10_000) -> None:
        if not (window_s > 0 and bucket_s > 0):
            raise InvalidInput("window and bucket must be > 0")
        self.window_s, self.bucket_s, self.max_titles = window_s, bucket_s, max_titles
        self._buckets: deque[tuple[int, dict[str, int]]] = deque()
        self._total: dict[str, int] = {}  # kept in step with the buckets: reading is O(1)

    def add(self, title_id: str, now: float) -> None:
        key = int(now // self.bucket_s)
        if not self._buckets or self._buckets[-1][0] != key:
            self._buckets.append((key, {}))
            self._expire(now)
        counts = self._buckets[-1][1]
        if title_id in counts or len(counts) < self.max_titles:
            counts[title_id] = counts.get(title_id, 0) + 1
            self._total[title_id] = self._total.get(title_id, 0) + 1

    def _expire(self, now: float) -> None:
        oldest = int((now - self.window_s) // self.bucket_s)
        while self._buckets and self._buckets[0][0] <= oldest:
            for title, n in self._buckets.popleft()[1].items():
                left = self._total[title] - n
                if left:
                    self._total[title] = left
                else:
                    del self._total[title]

    def counts(self, now: float) -> Mapping[str, int]:
        """A read-only view, valid until the next :meth:`add`."""
        self._expire(now)
        return self._total
