"""``GET /v1/home/{profile_id}?device=tv&hour=21``: the profile's rows, re-ranked for this appliance.

Where the rows come from, best first (the ``source`` field of the answer says which):

* ``control`` — the control plane's candidate rows (contract in :mod:`edge.rerank`), cached per
  profile for ``rerank.candidates_ttl_s``;
* ``stale`` — the last rows the control plane gave, up to ``rerank.stale_max_s`` old, while it is
  unreachable (after a failure it is left alone for ``rerank.control_backoff_s``, so an outage costs
  one timeout, not one per page);
* ``trending`` — one row of this appliance's own most requested titles, when there is nothing else.

Every item carries the artwork variant the bandit chose, an impression id (page id + row + position:
unique, and enough to join a later play back to what was shown) and the propensity of that choice, so
the logs support off-policy evaluation.  The discovery row's first tile is an exploration slot: a
second contextual bandit over that row's titles picks who fills it (the row says which, with the
propensity), and that tile's propensity is the product of both choices.  Scoring a 10 x 40 page is
one ``inplace_predict`` call of about a millisecond, so it runs on the loop; a thread hop would cost
more than it saves.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import aiohttp
import numpy as np
from aiohttp import web

from shared.bandits import ContextEncoder, FloatArray, LinearBandit, LinUCB
from shared.errors import InvalidInput
from shared.ids import check_id

from .catalog import Catalog
from .config import RerankSettings
from .metrics import EdgeMetrics
from .models import LoadedModel, ModelManager
from .rerank import (
    DEVICES,
    F32,
    CandidateError,
    Candidates,
    Context,
    Item,
    RecentDemand,
    Row,
    features,
    order_rows,
    parse_candidates,
    trending_row,
)

log = logging.getLogger(__name__)

MAX_CANDIDATE_BYTES = 4 << 20
#: The control plane's discovery row (control.rows): its first slot is explored by a bandit here.
DISCOVERY_ROW = "discovery"
MAX_EXPLORE_ARMS = 12
_QUERY_KEYS = frozenset({"device", "hour"})


def parse_query(query: Any, now: float) -> tuple[str, int]:
    """(device, hour) from the query string; anything unexpected is a 400, not a guess."""
    keys = [k for k, _ in query.items()]
    if len(keys) != len(set(keys)) or not set(keys) <= _QUERY_KEYS:
        raise InvalidInput(f"query may hold device and hour, once each; got {', '.join(sorted(set(keys)))[:200]}")
    device = query.get("device", "other")
    if device not in (*DEVICES, "other"):
        raise InvalidInput(f"device must be one of {', '.join((*DEVICES, 'other'))}")
    raw = query.get("hour")
    if raw is None:
        return device, time.gmtime(now).tm_hour
    if not (raw.isascii() and raw.isdigit() and len(raw) <= 2 and int(raw) < 24):
        raise InvalidInput("hour must be an integer in 0..23")
    return device, int(raw)


class HomeService:
    def __init__(self, settings: RerankSettings, api_url: str, models: ModelManager, catalog: Catalog,
                 metrics: EdgeMetrics, demand: RecentDemand, *, clock: Callable[[], float] = time.time,
                 seed: int | None = None) -> None:
        self.settings = settings
        self.api_url = api_url.rstrip("/")
        self.models = models
        self.catalog = catalog
        self.metrics = metrics
        self.demand = demand
        self.clock = clock
        self.encoder = ContextEncoder(settings.bandit_genres, DEVICES)
        eps = settings.bandit_epsilon
        self.bandit = LinUCB(self.encoder.dim, epsilon=eps, min_epsilon=eps,
                             seed=seed if seed is not None else uuid.uuid4().int & 0xFFFFFFFF)
        #: Fills the discovery row's exploration slot (arms are that row's titles).
        self.discovery_bandit = LinUCB(self.encoder.dim, epsilon=max(eps, 0.2), min_epsilon=max(eps, 0.2),
                                       seed=(seed + 1) if seed is not None else uuid.uuid4().int & 0xFFFFFFFF)
        self._cache: OrderedDict[str, tuple[float, Candidates]] = OrderedDict()
        self._down_until = 0.0
        self._http: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        timeout = aiohttp.ClientTimeout(total=self.settings.control_timeout_s)
        self._http = aiohttp.ClientSession(timeout=timeout)

    async def stop(self) -> None:
        if self._http is not None:
            await self._http.close()

    # -- candidates --------------------------------------------------------------------------------
    async def candidates(self, profile_id: str, now: float) -> tuple[Candidates | None, str]:
        cached = self._cache.get(profile_id)
        if cached is not None and now - cached[0] < self.settings.candidates_ttl_s:
            return cached[1], "control"
        if now >= self._down_until:
            try:
                fresh = await self._fetch(profile_id)
            except (aiohttp.ClientError, TimeoutError, CandidateError) as exc:
                log.warning("candidates for %s: %s", profile_id, str(exc)[:200])
                self._down_until = now + self.settings.control_backoff_s
            else:
                if fresh is not None:
                    self._remember(profile_id, now, fresh)
                    return fresh, "control"
                return None, "trending"  # the control plane does not know this profile
        if cached is not None and now - cached[0] <= self.settings.stale_max_s:
            return cached[1], "stale"
        return None, "trending"

    def _remember(self, profile_id: str, now: float, cands: Candidates) -> None:
        self._cache[profile_id] = (now, cands)
        self._cache.move_to_end(profile_id)
        while len(self._cache) > self.settings.max_profiles:
            self._cache.popitem(last=False)

    async def _fetch(self, profile_id: str) -> Candidates | None:
        assert self._http is not None, "start() first"
        async with self._http.get(f"{self.api_url}/v1/profiles/{profile_id}/home") as resp:
            if resp.status == 404:
                return None
            if resp.status != 200:
                raise CandidateError(f"control plane answered HTTP {resp.status}")
            body = await resp.content.read(MAX_CANDIDATE_BYTES + 1)
        if len(body) > MAX_CANDIDATE_BYTES:
            raise CandidateError(f"candidate rows exceed {MAX_CANDIDATE_BYTES} bytes")
        try:
            doc = json.loads(body)
        except (ValueError, RecursionError):
            raise CandidateError("candidate rows are not JSON") from None
        return parse_candidates(doc, profile_id)

    # -- the page ----------------------------------------------------------------------------------
    def page(self, profile_id: str, cands: Candidates | None, source: str, device: str, hour: int,
             now: float) -> dict[str, Any]:
        """Re-rank, choose artwork, and lay out the answer (pure apart from the bandit's RNG)."""
        counts = self.demand.counts(now)
        rows: tuple[Row, ...] = cands.rows if cands is not None else ()
        if cands is None:
            trend = trending_row(counts)
            rows = (trend,) if trend.items else ()
        model = self.models.current
        fallback = source != "control" or model is None
        scores = np.array([it.score for row in rows for it in row.items], dtype=np.float32)
        if model is not None and len(scores):
            ctx = Context(counts, lambda t: self.catalog.get(t) is not None, hour, device)
            try:
                scores = _checked(model.score(features(model.features, rows, ctx)), len(scores))
            except Exception as exc:  # a bad model must cost a re-rank, never the page
                log.warning("re-rank with model %s failed: %s", model.version, str(exc)[:200])
                self.metrics.rerank_errors.inc()
                fallback = True
                scores = np.array([it.score for row in rows for it in row.items], dtype=np.float32)
        if fallback:
            self.metrics.rerank_fallbacks.inc()
        ordered = order_rows(rows, scores)
        x = self.encoder.encode(cands.affinities if cands else {}, device, hour)
        explore = self._explore(rows, ordered, x)
        groups = [it.artwork for row in ordered for it, _ in row if it.artwork]
        picks = iter(self._bandit(model).choose_many(x, groups) if groups else [])
        page_id = uuid.uuid4().hex[:20]
        out_rows = []
        for r, (row, items) in enumerate(zip(rows, ordered, strict=True)):
            out_items = []
            for i, (it, score) in enumerate(items):
                artwork, prop = next(picks) if it.artwork else (None, 1.0)
                if r in explore and i == 0:
                    prop *= explore[r][1]  # the tile's propensity: this title in the slot, then this artwork
                out_items.append({"title_id": it.title_id, "name": it.name, "score": score, "artwork": artwork,
                                  "propensity": prop, "impression_id": f"{page_id}-{r}-{i}"})
            out_row: dict[str, Any] = {"id": row.id, "title": row.title, "items": out_items}
            if r in explore:
                out_row["explore"] = {"title_id": explore[r][0], "propensity": explore[r][1]}
            out_rows.append(out_row)
        return {"profile_id": profile_id, "page_id": page_id, "source": source,
                "model_version": model.version if model else None, "device": device, "hour": hour,
                "rows": out_rows}

    def _explore(self, rows: tuple[Row, ...], ordered: list[list[tuple[Item, float]]], x: FloatArray
                 ) -> dict[int, tuple[str, float]]:
        """The discovery row's first slot is an exploration slot: a contextual bandit over the row's titles
        picks who fills it (moved to the front, in place); returns {row index: (title, propensity)}."""
        out: dict[int, tuple[str, float]] = {}
        for r, row in enumerate(rows):
            items = ordered[r]
            if row.id != DISCOVERY_ROW or len(items) < 2:
                continue
            arms = [it.title_id for it, _ in items[:MAX_EXPLORE_ARMS]]
            title, prop = self.discovery_bandit.choose(x, arms)
            k = arms.index(title)
            items.insert(0, items.pop(k))
            out[r] = (title, prop)
        return out

    def _bandit(self, model: LoadedModel | None) -> LinearBandit:
        """The artwork bandit the current model ships (what every edge learned), else this edge's own.

        A shipped bandit keeps this edge's exploration floor, and one trained on another context layout
        (an edge configured with other genres) is not used: its scores would be meaningless here.
        """
        shipped = model.bandit if model is not None else None
        if shipped is None or shipped.dim != self.encoder.dim:
            return self.bandit
        if shipped.min_epsilon != self.settings.bandit_epsilon:
            shipped.epsilon0 = shipped.min_epsilon = self.settings.bandit_epsilon
        return shipped

    async def handle(self, request: web.Request) -> web.Response:
        started = time.perf_counter()
        now = self.clock()
        profile_id = check_id(request.match_info["profile_id"], "profile id")
        device, hour = parse_query(request.query, now)
        self.metrics.rerank_requests.inc()
        cands, source = await self.candidates(profile_id, now)
        body = self.page(profile_id, cands, source, device, hour, now)
        self.metrics.rerank_latency.add(time.perf_counter() - started)
        # Pages are served by the control plane and ask the steered edge for their rows: allow any origin
        # (the answer holds no secret, and a simple GET needs no preflight).
        return web.json_response(body, headers={"Cache-Control": "no-store", "Access-Control-Allow-Origin": "*"})


def _checked(scores: F32, n: int) -> F32:
    if scores.shape != (n,) or not np.all(np.isfinite(scores)):
        raise CandidateError(f"model gave {scores.shape} scores (some non-finite?) for {n} items")
    return scores
