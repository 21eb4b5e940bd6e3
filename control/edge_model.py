"""Training the edge re-ranker on the control plane, and laying out its bundle directory.

The edge ranker re-orders the control plane's candidate rows with what only the appliance knows
(:data:`edge.rerank.EDGE_FEATURES`).  Training therefore needs pages *as the edge saw them*: the
control plane's order and scores, the appliance's recent local demand, what was cached there, hour
and device, and which items were played.  Features are computed by the edge's own
:func:`edge.rerank.features` on those logged pages, so training and serving cannot disagree on a
column's meaning.

Where the pages come from, in order:

* an impression log: JSON lines of :class:`LoggedPage` in ``<state dir>/edge-impressions/*.jsonl``
  (one line per served row, items in the control plane's order, ``played`` joined from the viewing
  events), used when it holds at least :data:`MIN_LOG_PAGES` pages with a play;
* otherwise a seeded synthetic viewing log (:func:`synthetic_log`): a region whose taste differs
  from the global one, caches holding what is locally popular, position bias, device and hour
  effects.  The bundle's metadata says so, with the seed, so nobody mistakes it for a trained model.

Offline metrics compare the ranker with the control plane's own order on held-out pages (NDCG@10);
the tables (titles, artwork variants, genre neighbours) come from the control store's titles.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import xgboost as xgb

from edge.rerank import DEVICES, EDGE_FEATURES, Context, Item, Row, features
from shared import bundle
from shared.errors import InvalidInput
from shared.ids import is_valid_id
from shared.schema import SchemaError, decode

from .recs.metrics import ndcg_at_k
from .store import TitleRecord

F32 = npt.NDArray[np.float32]

FEATURES: tuple[str, ...] = tuple(EDGE_FEATURES)
MODEL_NAME = "ranker.ubj"
TABLES = ("titles.npz", "artwork.npz", "neighbours.npz")
MIN_LOG_PAGES = 200
MAX_LOG_PAGES = 200_000
MAX_LOG_LINE = 64 << 10
NEIGHBOURS = 10
_SYNTHETIC_TITLES = 300
_PAGE_ITEMS = 40


@dataclass(frozen=True)
class LoggedItem:
    title_id: str
    score: float
    local_demand: int = 0
    cached_here: bool = False
    played: bool = False


@dataclass(frozen=True)
class LoggedPage:
    """One row as an appliance served it; ``items`` in the control plane's order (rank = index)."""

    ts: float
    hour: int
    device: str
    demand_total: int
    items: list[LoggedItem]

    def __post_init__(self) -> None:
        if not 0 <= self.hour <= 23 or self.demand_total < 0 or not 0 < len(self.items) <= 200:
            raise InvalidInput("page: hour in 0..23, demand_total >= 0, 1..200 items")
        if any(not is_valid_id(it.title_id) or it.local_demand < 0 for it in self.items):
            raise InvalidInput("page: items need a title id and local_demand >= 0")


@dataclass(frozen=True)
class TrainingLog:
    pages: list[LoggedPage]
    source: str  # "log" or "synthetic"
    notes: str


@dataclass(frozen=True)
class Trained:
    booster: xgb.Booster
    best_iteration: int
    metrics: dict[str, float]


# -- training data -----------------------------------------------------------------------------------
def read_impression_log(directory: Path, max_pages: int = MAX_LOG_PAGES) -> tuple[list[LoggedPage], int]:
    """Pages from ``directory/*.jsonl`` (newest files last) and the number of lines refused."""
    pages: list[LoggedPage] = []
    refused = 0
    for path in sorted(directory.glob("*.jsonl")) if directory.is_dir() else ():
        with open(path, "rb") as fh:
            for line in fh:
                if len(line) > MAX_LOG_LINE:
                    refused += 1
                    continue
                try:
                    pages.append(decode(LoggedPage, json.loads(line), "page"))
                except (ValueError, RecursionError, SchemaError, InvalidInput):
                    refused += 1
    return pages[-max_pages:], refused


def synthetic_log(seed: int, title_ids: Sequence[str], pages: int = 600, now: float | None = None) -> list[LoggedPage]:
    """A seeded viewing log of one region whose taste the control plane does not fully know."""
    rng = np.random.default_rng(seed)
    now = time.time() if now is None else now
    ids = list(dict.fromkeys(t for t in title_ids if is_valid_id(t)))
    ids += [f"syn-{i:04d}" for i in range(max(0, _SYNTHETIC_TITLES - len(ids)))]
    n = len(ids)
    glob = rng.normal(0, 1, n)  # what the control plane's models see
    local = rng.normal(0, 1, n)  # this region's own taste: only local demand reveals it
    demand = rng.poisson(np.exp(0.6 * glob + 1.0 * local) * 3)
    cached = (glob + local + rng.normal(0, 0.5, n)) > np.quantile(glob + local, 0.6)
    weights = np.exp(glob) / np.exp(glob).sum()
    total = int(demand.sum())
    out = []
    for _ in range(pages):
        hour = int(rng.integers(0, 24))
        device = str(rng.choice([*DEVICES, "other"], p=[0.4, 0.3, 0.15, 0.1, 0.05]))
        pick = rng.choice(n, size=min(_PAGE_ITEMS, n), replace=False, p=weights)
        cp = 1 / (1 + np.exp(-(glob[pick] + rng.normal(0, 0.6, len(pick)))))
        order = pick[np.argsort(-cp, kind="stable")]
        cp = np.sort(cp)[::-1]
        evening_tv = 0.4 if device == "tv" and hour >= 18 else 0.0
        utility = (1.0 * glob[order] + 1.1 * local[order] + (0.5 + evening_tv) * cached[order]
                   - 0.3 * np.log1p(np.arange(len(order))) - 3.5)
        played = rng.random(len(order)) < 1 / (1 + np.exp(-utility))
        out.append(LoggedPage(now - float(rng.uniform(0, 7 * 86400)), hour, device, total, [
            LoggedItem(ids[t], float(s), int(demand[t]), bool(cached[t]), bool(p))
            for t, s, p in zip(order, cp, played, strict=True)]))
    return out


def training_log(log_dir: Path, seed: int, title_ids: Sequence[str], *, source: str = "auto",
                 synthetic_pages: int = 600) -> TrainingLog:
    """The logged pages when there are enough (``source`` auto or log), else the synthetic log."""
    if source not in ("auto", "log", "synthetic"):
        raise InvalidInput("source must be auto, log or synthetic")
    why = "asked for"
    if source != "synthetic":
        pages, refused = read_impression_log(log_dir)
        useful = sum(1 for p in pages if any(it.played for it in p.items))
        if useful >= MIN_LOG_PAGES:
            return TrainingLog(pages, "log", f"trained on the impression log in {log_dir.name}/: {len(pages)} "
                                             f"pages ({useful} with a play), {refused} lines refused")
        if source == "log":
            raise InvalidInput(f"impression log has {useful} pages with a play; at least {MIN_LOG_PAGES} needed")
        why = f"the impression log has {useful} pages with a play (< {MIN_LOG_PAGES})"
    pages = synthetic_log(seed, title_ids, synthetic_pages)
    return TrainingLog(pages, "synthetic", f"SYNTHETIC: trained on a seeded synthetic viewing log (seed {seed}, "
                                           f"{len(pages)} pages) because {why}; not evidence about real viewers")


def page_matrix(page: LoggedPage) -> F32:
    """The page's feature matrix, computed exactly as the edge computes it at serving time."""
    row = Row("row", "", tuple(Item(it.title_id, it.score) for it in page.items))
    demand = {it.title_id: it.local_demand for it in page.items}
    rest = page.demand_total - sum(demand.values())
    if rest > 0:
        demand[""] = rest  # the rest of the appliance's demand: only its total matters
    cached = {it.title_id for it in page.items if it.cached_here}
    return features(FEATURES, [row], Context(demand, cached.__contains__, page.hour, page.device))


# -- training ----------------------------------------------------------------------------------------
def train(pages: Sequence[LoggedPage], *, seed: int = 0, rounds: int = 200) -> Trained:
    """XGBoost rank:ndcg on 80 % of the pages; metrics on the other 20 % against the control plane's order."""
    useful = [p for p in pages if any(it.played for it in p.items)]
    if len(useful) < 20:
        raise InvalidInput(f"{len(useful)} pages with a play: too few to train a ranker")
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(useful))
    cut = max(1, int(len(useful) * 0.8))
    train_pages, test_pages = [useful[i] for i in order[:cut]], [useful[i] for i in order[cut:]]
    n_valid = max(1, len(train_pages) // 8)
    fit, valid = train_pages[n_valid:], train_pages[:n_valid]
    params = {"objective": "rank:ndcg", "eval_metric": "ndcg@10", "eta": 0.1, "max_depth": 4,
              "min_child_weight": 2.0, "subsample": 0.8, "colsample_bytree": 0.9, "tree_method": "hist",
              "nthread": 1, "seed": seed, "lambdarank_pair_method": "topk"}
    booster = xgb.train(params, _dmatrix(fit), num_boost_round=rounds, evals=[(_dmatrix(valid), "valid")],
                        early_stopping_rounds=25, verbose_eval=False)
    best = int(booster.best_iteration)
    model_ndcg, base_ndcg = [], []
    for page in test_pages or valid:
        held = [i for i, it in enumerate(page.items) if it.played]
        scores = booster.inplace_predict(page_matrix(page), iteration_range=(0, best + 1))
        ranked = np.argsort(-np.asarray(scores), kind="stable").astype(np.intp)
        model_ndcg.append(ndcg_at_k(ranked, held, 10))
        base_ndcg.append(ndcg_at_k(np.arange(len(page.items), dtype=np.intp), held, 10))
    model, base = float(np.mean(model_ndcg)), float(np.mean(base_ndcg))
    metrics = {"ndcg@10": model, "ndcg@10_control_order": base, "ndcg@10_lift": model / base if base else 0.0,
               "test_pages": float(len(model_ndcg)), "train_pages": float(len(fit)),
               "rounds": float(best + 1)}
    return Trained(booster, best, metrics)


def _dmatrix(pages: Sequence[LoggedPage]) -> xgb.DMatrix:
    x = np.concatenate([page_matrix(p) for p in pages])
    y = np.array([float(it.played) for p in pages for it in p.items], dtype=np.float32)
    qid = np.repeat(np.arange(len(pages)), [len(p.items) for p in pages])
    return xgb.DMatrix(x, label=y, qid=qid, feature_names=list(FEATURES))


# -- tables ------------------------------------------------------------------------------------------
def _unicode(values: Iterable[str]) -> npt.NDArray[np.str_]:
    """Fixed-width unicode (never object) arrays, so the edge can load them with allow_pickle=False."""
    return np.array(list(values), dtype=np.str_)


def write_tables(out: Path, titles: Sequence[TitleRecord], origin_dir: Path) -> None:
    """Title metadata, artwork variants (the encoder's candidates) and genre neighbours (Jaccard)."""
    titles = sorted(titles, key=lambda t: t.title_id)
    np.savez(out / "titles.npz", title_id=_unicode(t.title_id for t in titles),
             name=_unicode(t.name[:200] for t in titles), genres=_unicode("|".join(t.genres) for t in titles),
             version=_unicode(t.version for t in titles))
    art = [(t.title_id, p.stem) for t in titles
           for p in sorted((origin_dir / t.title_id / "artwork").glob("*.jpg")) if is_valid_id(p.stem)]
    np.savez(out / "artwork.npz", title_id=_unicode(a for a, _ in art), artwork_id=_unicode(b for _, b in art))
    genres = [set(t.genres) for t in titles]
    pairs: list[tuple[str, str, float]] = []
    for i, t in enumerate(titles):
        sims = [(len(genres[i] & genres[j]) / len(genres[i] | genres[j]), titles[j].title_id)
                for j in range(len(titles)) if j != i and genres[i] & genres[j]]
        sims.sort(key=lambda s: (-s[0], s[1]))
        pairs += [(t.title_id, other, sim) for sim, other in sims[:NEIGHBOURS]]
    np.savez(out / "neighbours.npz", title_id=_unicode(p[0] for p in pairs),
             neighbour_id=_unicode(p[1] for p in pairs), score=np.array([p[2] for p in pairs], dtype=np.float32))


def write_bundle_dir(out: Path, version: str, trained: Trained, log: TrainingLog, titles: Sequence[TitleRecord],
                     origin_dir: Path, artwork_logs: Path | None = None) -> None:
    """Everything :func:`shared.bundle.pack` and the edge's ``load_model`` expect, in ``out``.

    With ``artwork_logs`` (a ``choices.csv`` + ``plays.csv`` export), the artwork bandit fitted on them
    ships as ``bandit.npz``: every edge starts from what all edges learned instead of from nothing.
    """
    out.mkdir(parents=True)
    notes = log.notes
    if artwork_logs is not None:
        from .policy_eval import fit_artwork_bandit

        bandit, n = fit_artwork_bandit(artwork_logs)
        if bandit is not None:
            bandit.save(out / BANDIT_NAME)
            notes = f"{notes}; artwork bandit fitted on {n} logged choices"
        else:
            notes = f"{notes}; artwork bandit not shipped ({n} logged choices, too few)"
    trained.booster.save_model(out / MODEL_NAME)
    spec = {"format": 1, "features": list(FEATURES), "best_iteration": trained.best_iteration,
            "objective": "rank:ndcg", "source": log.source}
    (out / bundle.FEATURE_SPEC_NAME).write_text(json.dumps(spec, indent=1))
    write_tables(out, titles, origin_dir)
    stamps = [p.ts for p in log.pages]
    window = bundle.TrainingWindow(_iso(min(stamps)), _iso(max(stamps)))
    metrics = {k: v for k, v in trained.metrics.items() if math.isfinite(v)}
    meta = bundle.BundleMetadata(format=bundle.FORMAT, version=version, model=MODEL_NAME, training_window=window,
                                 offline_metrics=metrics, tables=list(TABLES), notes=notes[:1000])
    (out / bundle.METADATA_NAME).write_bytes(meta.to_json())


#: The shipped artwork bandit (:meth:`shared.bandits.LinearBandit.save` format), optional in a bundle.
BANDIT_NAME = "bandit.npz"


def _iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))

