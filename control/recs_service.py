"""The control plane's recommendation service: events in, rows out, training as a background job.

* ``POST /v1/events`` → :meth:`RecsService.add_events`: validated (:mod:`control.events`), stored
  append-only and idempotently; a profile's cached rows are dropped so Continue Watching moves at once.
* ``GET /v1/profiles/{id}/home`` → :meth:`RecsService.home`: the profile's log folded into a
  :class:`~control.events.ProfileState`, the current model's top picks and item neighbours (numpy work
  on a worker thread, never on the loop), trending per region (recomputed at most every
  ``recs.trending_refresh_s``), and :func:`control.rows.build_rows`.  Rows are cached per profile for
  ``recs.rows_ttl_s``; the edge caches them again and re-ranks locally.
* ``POST /v1/recs/train`` → :meth:`RecsService.train`: exports the event log as interactions
  (:func:`control.events.interaction_rows`) plus the catalog, fits the full pipeline in a separate
  process (``python -m control.recs.cli train``: CPU-heavy work never shares the API's process), then
  loads the new bundle on a thread and swaps it in with one assignment.  ``recs/current.json`` names
  the serving version, so a restart serves the same model.

Without a model (or for a profile the model cannot score) rows fall back to trending, so a fresh
install serves sensible pages from its first events.
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
import logging
import os
import random
import shutil
import sys
import time
from collections import OrderedDict
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from shared.errors import Conflict, InvalidInput, NotFound
from shared.files import write_atomic
from shared.ids import new_id
from shared.tasks import TaskGroup

from . import ab
from .catalog import CatalogEntry
from .config import RecsSettings
from .events import Event, ProfileState, interaction_rows, parse_batch
from .experiments import Cell, Experiment, report
from .rows import GLOBAL, TRENDING_TYPES, RowsConfig, RowsInput, Scored, TitleInfo, build_rows, trending_scores
from .store import Store, TitleRecord

log = logging.getLogger(__name__)

PROFILE_EVENTS = 5000
MAX_PROFILES_CACHED = 10_000
_PLAY_TYPES = ("play_start", "progress", "complete", "thumbs", "list_add", "list_remove")
_SCORE_SLOTS = 2


@dataclass
class TrainJob:
    job_id: str
    actor: str
    started: float
    state: str = "running"  # running | done | failed
    stage: str = "export"
    version: str | None = None
    error: str | None = None
    finished: float | None = None
    log: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"job_id": self.job_id, "actor": self.actor, "started": self.started, "state": self.state,
                "stage": self.stage, "version": self.version, "error": self.error, "finished": self.finished,
                "log": self.log[-20:]}


class RecsService:
    def __init__(self, store: Store, settings: RecsSettings, recs_dir: Path, *,
                 clock: Any = time.time) -> None:
        self.store = store
        self.settings = settings
        self.recs_dir = recs_dir
        self.clock = clock
        self.model: Any = None  # control.recs.pipeline.Pipeline once loaded (imported lazily: numpy stack)
        self.model_version: str | None = None
        self.job: TrainJob | None = None
        self._tasks = TaskGroup("recs")
        self._rows: OrderedDict[str, tuple[float, dict[str, Any]]] = OrderedDict()
        self._trending: tuple[float, dict[str, list[tuple[str, float]]], dict[str, int]] | None = None
        self._titles: tuple[float, dict[str, TitleInfo]] | None = None
        self._refresh = asyncio.Lock()
        self._score_slots = asyncio.Semaphore(_SCORE_SLOTS)
        self._rng = random.Random()
        #: Running experiments on the rows, oldest first (the oldest decides a profile's rows).
        self.experiments: list[tuple[Experiment, dict[str, Any]]] = []
        self._exposed: set[tuple[str, str]] = set()
        self._pinned: OrderedDict[str, Any] = OrderedDict()  # version -> loaded pipeline (experiment cells)
        self.rows_config = RowsConfig(row_size=settings.row_size, explore_epsilon=settings.explore_epsilon,
                                      new_title_days=settings.new_title_days)

    # -- lifecycle -------------------------------------------------------------------------------------
    async def start(self) -> None:
        await self.refresh_experiments()
        current = self.recs_dir / "current.json"
        if not current.exists():
            return
        try:
            version = str(json.loads(current.read_text())["version"])
            self.model = await asyncio.to_thread(_load, self.recs_dir / "versions" / version)
            self.model_version = version
            log.info("recommendation model %s loaded", version)
        except Exception as exc:  # a broken model must not stop the control plane; rows fall back
            log.error("recommendation model in %s not loaded: %s", current, str(exc)[:300])

    async def stop(self) -> None:
        await self._tasks.aclose()

    async def refresh_experiments(self) -> None:
        """Reload the running experiments (after one is created or stopped); pages are rebuilt."""
        docs = [d for d in await self.store.list_experiments() if d["state"] == "running"]
        self.experiments = [(ab.experiment(d), d) for d in docs]
        self._rows.clear()

    def versions(self) -> list[str]:
        root = self.recs_dir / "versions"
        return sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []

    async def _model_for(self, cell: Cell | None) -> tuple[Any, str | None]:
        """The recommender a profile's rows come from: its experiment cell's, else the serving one."""
        if cell is None or (cell.policy in (None, "model") and cell.model_version is None):
            return self.model, self.model_version
        if cell.policy == "trending":
            return None, None
        version = str(cell.model_version)
        if version == self.model_version:
            return self.model, version
        if version not in self._pinned:
            self._pinned[version] = await asyncio.to_thread(_load, self.recs_dir / "versions" / version)
            while len(self._pinned) > 2:
                self._pinned.popitem(last=False)
        self._pinned.move_to_end(version)
        return self._pinned[version], version

    async def _expose(self, profile_id: str, now: float) -> tuple[Experiment, Cell] | None:
        if not self.experiments:
            return None
        exp = self.experiments[0][0]
        cell = exp.assign(profile_id)
        key = (exp.id, profile_id)
        if key not in self._exposed:
            await self.store.record_exposures([(exp.id, profile_id, cell.name, now)])
            if len(self._exposed) > 1_000_000:  # only a write-saver: the store ignores repeats anyway
                self._exposed.clear()
            self._exposed.add(key)
        return exp, cell
    def invalidate(self) -> None:
        """Titles or the catalog changed: rebuild the title table and every page on next use."""
        self._titles = None
        self._rows.clear()

    # -- events ----------------------------------------------------------------------------------------
    async def add_events(self, doc: Any) -> dict[str, Any]:
        now = self.clock()
        good, bad = parse_batch(doc, now)
        stored = await self.store.add_events(good, now) if good else 0
        for profile in {e.profile_id for e in good}:
            self._rows.pop(profile, None)
        return {"accepted": stored, "duplicates": len(good) - stored,
                "rejected": [{"index": r.index, "error": r.reason} for r in bad]}

    # -- rows ------------------------------------------------------------------------------------------
    async def home(self, profile_id: str) -> dict[str, Any]:
        now = self.clock()
        cached = self._rows.get(profile_id)
        if cached is not None and now - cached[0] < self.settings.rows_ttl_s:
            return cached[1]
        titles = await self._title_table(now)
        trending, plays = await self._trending_table(now)
        events = await self.store.profile_events(profile_id, limit=PROFILE_EVENTS)
        state = ProfileState.from_events(profile_id, events)
        arm = await self._expose(profile_id, now)
        model, version = await self._model_for(arm[1] if arm else None)
        async with self._score_slots:
            picks, neighbours = await asyncio.to_thread(_model_lists, model, state, titles, 3 * self.settings.row_size)
        region_trend = trending.get(state.region or GLOBAL) or trending.get(GLOBAL, [])
        x = state.because_of()
        inp = RowsInput(state, titles, region_trend, plays, picks,
                        lambda t: neighbours if x is not None and t == x.title_id else [], now)
        doc = build_rows(inp, self.rows_config, rng=self._rng)
        doc["model_version"] = version if picks is not None else None
        if arm is not None:
            doc["experiment"] = {"id": arm[0].id, "cell": arm[1].name}
        self._rows[profile_id] = (now, doc)
        self._rows.move_to_end(profile_id)
        while len(self._rows) > MAX_PROFILES_CACHED:
            self._rows.popitem(last=False)
        return doc

    async def _title_table(self, now: float) -> dict[str, TitleInfo]:
        if self._titles is not None and now - self._titles[0] < self.settings.trending_refresh_s:
            return self._titles[1]
        async with self._refresh:
            if self._titles is None or now - self._titles[0] >= self.settings.trending_refresh_s:
                records = await self.store.list_titles()
                catalog = {c.title_id: c for c in await self.store.list_catalog()}
                self._titles = (now, {t.title_id: _info(t, catalog.get(t.title_id)) for t in records})
            return self._titles[1]

    async def _trending_table(self, now: float) -> tuple[dict[str, list[tuple[str, float]]], dict[str, int]]:
        if self._trending is not None and now - self._trending[0] < self.settings.trending_refresh_s:
            return self._trending[1], self._trending[2]
        async with self._refresh:
            if self._trending is None or now - self._trending[0] >= self.settings.trending_refresh_s:
                since = now - self.settings.trending_window_s
                activity = await self.store.title_activity(since, TRENDING_TYPES, 3600.0)
                plays: dict[str, int] = {}
                for _, title, _, n in activity:
                    plays[title] = plays.get(title, 0) + n
                scores = trending_scores(activity, now, half_life_s=self.settings.trending_half_life_s)
                self._trending = (now, scores, plays)
            return self._trending[1], self._trending[2]

    # -- export and training ---------------------------------------------------------------------------
    async def _log(self, types: tuple[str, ...], *, since: float = 0.0) -> AsyncIterator[Event]:
        """The event log in arrival order, a page at a time (memory stays bounded by the caller)."""
        after = 0
        while True:
            page = await self.store.events_page(after=after, limit=20_000, since=since, types=types)
            if not page:
                return
            for _, event in page:
                yield event
            after = page[-1][0]

    async def export(self) -> tuple[str, str]:
        """``(interactions.csv, catalog.csv)`` of the whole log, in the formats ``model eval`` reads."""
        by_profile: dict[str, list[Event]] = {}
        async for event in self._log(_PLAY_TYPES):
            by_profile.setdefault(event.profile_id, []).append(event)
        # events arrive out of order (offline devices flush late): from_events folds them in time order
        states = [ProfileState.from_events(p, evs) for p, evs in by_profile.items()]
        interactions = io.StringIO()
        w = csv.writer(interactions, lineterminator="\n")
        w.writerow(["user", "item", "rating", "timestamp"])
        for user, item, rating, ts in interaction_rows(states):
            w.writerow([user, item, f"{rating:g}", ts])
        titles = await self.store.list_titles()
        catalog = {c.title_id: c for c in await self.store.list_catalog()}
        out = io.StringIO()
        w = csv.writer(out, lineterminator="\n")
        w.writerow(["item", "title", "genres", "tags"])
        published = {t.title_id: t for t in titles}
        for title_id in sorted(set(catalog) | set(published)):
            c = catalog.get(title_id)
            t = published.get(title_id)
            name = (c.name if c and c.name else t.name if t else title_id)
            if c and c.year and f"({c.year})" not in name:
                name = f"{name} ({c.year})"
            genres = c.genres if c and c.genres else t.genres if t else ()
            w.writerow([title_id, name, "|".join(genres), "|".join(c.tags if c else ())])
        return interactions.getvalue(), out.getvalue()

    async def export_choices(self) -> tuple[str, str]:
        """``(choices.csv, plays.csv)``: every artwork choice shown with its propensity and the viewer's
        context, and every play that names its impression (the inputs of ``model eval --policy``)."""
        titles = await self._title_table(self.clock())
        genres = {t: info.genres for t, info in titles.items()}
        by_profile: dict[str, list[Event]] = {}
        shown: list[Event] = []
        plays: list[Event] = []
        async for e in self._log((*_PLAY_TYPES, "impression")):
            if e.type == "impression":
                if "artwork" in e.data and "impression_id" in e.data:
                    shown.append(e)
                continue
            by_profile.setdefault(e.profile_id, []).append(e)
            if e.type == "play_start" and "impression_id" in e.data:
                plays.append(e)
        affinity = {p: ProfileState.from_events(p, evs).affinities(genres) for p, evs in by_profile.items()}
        out = io.StringIO()
        w = csv.writer(out, lineterminator="\n")
        w.writerow(["impression_id", "title_id", "ts", "artwork", "propensity", "device", "hour", "affinities"])
        for e in shown:
            w.writerow([e.data["impression_id"], e.title_id, e.ts, e.data["artwork"], e.data["propensity"], e.device,
                        time.gmtime(e.ts).tm_hour, json.dumps(affinity.get(e.profile_id, {}), sort_keys=True)])
        played = io.StringIO()
        w = csv.writer(played, lineterminator="\n")
        w.writerow(["impression_id", "title_id", "ts"])
        for e in plays:
            w.writerow([e.data["impression_id"], e.title_id, e.ts])
        return out.getvalue(), played.getvalue()

    def train(self, actor: str) -> TrainJob:
        if self.job is not None and self.job.state == "running":
            raise Conflict(f"training job {self.job.job_id} is still running")
        job = self.job = TrainJob(new_id(), actor, self.clock())
        self._tasks.spawn(self._train(job), name=f"recs-train-{job.job_id}")
        return job

    async def _train(self, job: TrainJob) -> None:
        work = self.recs_dir / "work" / job.job_id
        version = time.strftime("r%Y%m%d-%H%M%S", time.gmtime(self.clock())) + f"-{job.job_id[-4:]}"
        out = self.recs_dir / "versions" / version
        try:
            interactions, catalog = await self.export()
            if interactions.count("\n") < 3:
                raise InvalidInput("too few viewing events to train on")
            await asyncio.to_thread(_write_inputs, work, interactions, catalog)
            job.stage = "fit"
            await self._run_trainer(job, work, out)
            job.stage = "load"
            model = await asyncio.to_thread(_load, out)
            write_atomic(self.recs_dir / "current.json", json.dumps({"version": version}))
            self.model, self.model_version = model, version
            self._rows.clear()
            job.state, job.stage, job.version = "done", "done", version
        except asyncio.CancelledError:
            job.state, job.error = "failed", "cancelled at shutdown"
            raise
        except Exception as exc:
            job.state, job.error = "failed", str(exc)[:500] or type(exc).__name__
            log.warning("training job %s failed: %s", job.job_id, job.error)
        finally:
            job.finished = self.clock()
            await asyncio.to_thread(shutil.rmtree, work, True)

    async def _run_trainer(self, job: TrainJob, work: Path, out: Path) -> None:
        out.parent.mkdir(parents=True, exist_ok=True)
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "control.recs.cli", "train", "--data", str(work), "--out", str(out),
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
            env={**os.environ, "PYTHONUNBUFFERED": "1"})
        assert proc.stderr is not None
        try:
            async with asyncio.timeout(self.settings.train_timeout_s):
                async for raw in proc.stderr:
                    line = raw.decode(errors="replace").strip()
                    if line:
                        job.log.append(line[:300])
                        del job.log[:-50]
                code = await proc.wait()
        except BaseException:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
            raise
        if code != 0:
            raise RuntimeError(job.log[-1] if job.log else f"trainer exited with status {code}")

    def status(self) -> dict[str, Any]:
        return {"model_version": self.model_version, "job": self.job.to_json() if self.job else None,
                "versions": self.versions(), "profiles_cached": len(self._rows),
                "experiments": [e.id for e, _ in self.experiments]}

    async def report(self, experiment_id: str) -> dict[str, Any]:
        docs = {d["id"]: d for d in await self.store.list_experiments()}
        doc = docs.get(experiment_id)
        if doc is None:
            raise NotFound(f"no experiment {experiment_id!r}")
        exp = ab.experiment(doc)
        exposed = await self.store.exposures(experiment_id)
        counts: dict[str, int] = {}
        for _, cell, _ in exposed:
            counts[cell] = counts.get(cell, 0) + 1
        since = min((ts for _, _, ts in exposed), default=float(doc["created"]))
        events = [e async for e in self._log(ab.OUTCOME_TYPES, since=since)]
        result = await asyncio.to_thread(lambda: report(exp, ab.outcomes(exp, exposed, events), counts))
        return ab.report_json(result, doc)


def _info(t: TitleRecord, c: CatalogEntry | None) -> TitleInfo:
    name = c.name if c is not None and c.name else t.name
    genres = c.genres if c is not None and c.genres else t.genres
    return TitleInfo(t.title_id, name, genres, t.released, c.artwork if c is not None else ())


def _write_inputs(work: Path, interactions: str, catalog: str) -> None:
    work.mkdir(parents=True, exist_ok=True)
    (work / "interactions.csv").write_text(interactions)
    (work / "catalog.csv").write_text(catalog)


def _load(directory: Path) -> Any:
    from control.recs.bundle import load_bundle

    return load_bundle(directory)


def _model_lists(model: Any, state: ProfileState, titles: dict[str, TitleInfo], k: int
                 ) -> tuple[Scored | None, Scored]:
    """(top picks or None when the model cannot score this profile, neighbours of "because you watched" X)."""
    x = state.because_of()
    if model is None:
        return None, _content_neighbours(x.title_id, titles) if x is not None else []
    index = {t: i for i, t in enumerate(model.item_ids)}
    positives = [a for a in state.positives() if a.title_id in index]
    picks: Scored | None = None
    if positives:
        cols = [index[a.title_id] for a in positives]
        n = len(model.item_ids)
        history = sp.csr_matrix((np.ones(len(cols), np.float32), ([0] * len(cols), cols)), shape=(1, n))
        times = sp.csr_matrix((np.array([a.last_ts for a in positives]), ([0] * len(cols), cols)), shape=(1, n))
        hidden = [index[t] for t in state.hidden() if t in index]
        exclude = sp.csr_matrix((np.ones(len(hidden), np.float32), ([0] * len(hidden), hidden)), shape=(1, n))
        idx, scores = model.recommend(history, times, min(k, n), exclude=exclude)
        picks = [(model.item_ids[i], float(s)) for i, s in zip(idx[0], scores[0], strict=True) if np.isfinite(s)]
    if x is None:
        return picks, []
    if x.title_id not in index or "item_knn" not in model.generators:
        return picks, _content_neighbours(x.title_id, titles)
    n = len(model.item_ids)
    one = sp.csr_matrix((np.ones(1, np.float32), ([0], [index[x.title_id]])), shape=(1, n))
    sims = model.generators["item_knn"].score(one)[0]
    sims[index[x.title_id]] = -np.inf
    order = np.argsort(-sims, kind="stable")[:k]
    return picks, [(model.item_ids[i], float(sims[i])) for i in order if np.isfinite(sims[i]) and sims[i] > 0]


def _content_neighbours(title_id: str, titles: dict[str, TitleInfo]) -> list[tuple[str, float]]:
    """Genre overlap (Jaccard) with X, for titles the model does not know (or without a model)."""
    if title_id not in titles:
        return []
    g = set(titles[title_id].genres)
    out = []
    for t, info in titles.items():
        other = set(info.genres)
        if t != title_id and g & other:
            out.append((t, len(g & other) / len(g | other)))
    out.sort(key=lambda kv: (-kv[1], kv[0]))
    return out

