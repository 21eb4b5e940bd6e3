"""Our pipeline: candidate generators -> union of their top lists -> XGBoost ranker.

The ranker has to learn from data it was not fitted on, so ``fit`` carves a validation split out of
training (same protocol as the evaluation, one level down), fits the generators on the rest, labels
their candidates with the carved-out titles and trains the ranker; then it refits the generators on all
of training for serving. The ranker therefore sees generator scores that are slightly "weaker" than at
serving time; rank features make that shift harmless.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp

from control.recs.data import Interactions
from control.recs.dataset import TrainData, restrict, to_interactions
from control.recs.errors import ModelError
from control.recs.features import ItemStats, Profiles, feature_names, pair_features, ranks_of
from control.recs.metrics import top_k
from control.recs.models.als import ALS
from control.recs.models.base import Recommender
from control.recs.models.content import ContentBased
from control.recs.models.ease import EASE
from control.recs.models.knn import ItemKNN, RP3Beta
from control.recs.models.popularity import MostPopular, Trending
from control.recs.ranker import Ranker, RankerParams
from control.recs.splits import Protocol, folds

F32 = npt.NDArray[np.float32]
Progress = Callable[[str], None]

#: Generators whose top lists form the candidate set; the others only contribute features.
CANDIDATE_SOURCES = ("ease", "als", "rp3beta", "item_knn")
_CHUNK = 1024


@dataclass
class PipelineConfig:
    candidates: int = 100  # per candidate source
    folds: int = 5  # validation folds carved from training to label the ranker's lists
    ease: dict[str, Any] = field(default_factory=lambda: {"lam": 100.0})
    als: dict[str, Any] = field(default_factory=lambda: {"factors": 128, "reg": 20.0, "alpha": 5.0})
    item_knn: dict[str, Any] = field(default_factory=lambda: {"neighbours": 100, "shrink": 10.0})
    rp3beta: dict[str, Any] = field(default_factory=lambda: {"neighbours": 200, "alpha": 1.0, "beta": 0.5})
    content: dict[str, Any] = field(default_factory=dict)
    trending: dict[str, Any] = field(default_factory=dict)
    ranker: RankerParams = field(default_factory=RankerParams)
    seed: int = 0

    def make_generators(self) -> dict[str, Recommender]:
        return {
            "ease": EASE(**self.ease), "als": ALS(**{**self.als, "seed": self.seed}),
            "item_knn": ItemKNN(**self.item_knn), "rp3beta": RP3Beta(**self.rp3beta),
            "content": ContentBased(**self.content), "most_popular": MostPopular(),
            "trending": Trending(**self.trending),
        }  # fmt: skip


@dataclass(frozen=True)
class Candidates:
    rows: npt.NDArray[np.intp]  # profile row within the batch
    items: npt.NDArray[np.intp]
    features: F32


def generate(generators: dict[str, Recommender], stats: ItemStats, history: sp.csr_matrix,
             times: sp.csr_matrix | None, per_source: int) -> Candidates:
    """Union of each source's top ``per_source`` (history excluded) with the features of every pair."""
    h = sp.csr_matrix(history, dtype=np.float32)
    hist_rows = np.repeat(np.arange(h.shape[0]), np.diff(h.indptr))
    scores: list[F32] = []
    ranks: list[F32] = []
    pool = np.zeros((h.shape[0], h.shape[1]), bool)
    for name, model in generators.items():
        s = model.score(h)
        s[hist_rows, h.indices] = -np.inf
        scores.append(s)
        ranks.append(ranks_of(s))
        if name in CANDIDATE_SOURCES:
            np.put_along_axis(pool, top_k(s, per_source), True, axis=1)
    pool[hist_rows, h.indices] = False
    rows, items = np.nonzero(pool)
    prof = Profiles.from_history(h, times, stats)
    x = pair_features(stats, prof, rows, items, scores, ranks)
    return Candidates(rows.astype(np.intp), items.astype(np.intp), x)


class Pipeline:
    def __init__(self, config: PipelineConfig | None = None) -> None:
        self.config = config or PipelineConfig()
        self.generators: dict[str, Recommender] = {}
        self.stats: ItemStats | None = None
        self.ranker: Ranker | None = None
        self.item_ids: tuple[str, ...] = ()

    @property
    def feature_names(self) -> tuple[str, ...]:
        return feature_names(tuple(self.config.make_generators()))

    def fit(self, data: TrainData, protocol: Protocol = Protocol.RANDOM, progress: Progress | None = None) -> Pipeline:
        say = progress or (lambda _msg: None)
        xs: list[F32] = []
        ys: list[F32] = []
        gs: list[npt.NDArray[np.int64]] = []
        inner_splits = folds(to_interactions(data), protocol, self.config.folds, seed=self.config.seed)
        for f, inner in enumerate(inner_splits):
            say(f"fold {f + 1}/{len(inner_splits)}: fitting generators on {len(inner.train)} positives")
            x, y, g = self._labelled_lists(data, inner.train, inner.test)
            xs.append(x)
            ys.append(y)
            gs.append(g + f * data.n_users)
        x, y, g = np.concatenate(xs), np.concatenate(ys), np.concatenate(gs)
        if len(np.unique(g)) < 2:
            raise ModelError("pipeline: too little data to train the ranker (fewer than two labelled profiles)")
        say(f"training the ranker on {len(y)} pairs in {len(np.unique(g))} lists")
        self.ranker = Ranker(self.feature_names, self.config.ranker).fit(x, y, g)
        say("refitting generators on all training data")
        self.generators = {name: m.fit(data) for name, m in self.config.make_generators().items()}
        self.stats = ItemStats.from_data(data)
        self.item_ids = data.item_ids
        return self

    def _labelled_lists(self, data: TrainData, train: Interactions, test: dict[str, tuple[str, ...]]
                        ) -> tuple[F32, F32, npt.NDArray[np.int64]]:
        """Candidate features and 0/1 labels for every profile that has a held-out title among its candidates."""
        inner_data = restrict(data, train)
        gens = {name: m.fit(inner_data) for name, m in self.config.make_generators().items()}
        stats = ItemStats.from_data(inner_data)
        u_idx = data.user_index()
        i_idx = data.item_index()
        users = np.array(sorted(u_idx[u] for u in test), dtype=np.intp)
        xs: list[F32] = []
        ys: list[F32] = []
        gs: list[npt.NDArray[np.int64]] = []
        for start in range(0, len(users), _CHUNK):
            batch = users[start : start + _CHUNK]
            cand = generate(gens, stats, inner_data.matrix[batch], inner_data.times[batch], self.config.candidates)
            t_rows = [r for r, u in enumerate(batch) for _ in test[data.user_ids[u]]]
            t_cols = [i_idx[i] for u in batch for i in test[data.user_ids[u]]]
            truth = sp.csr_matrix((np.ones(len(t_rows), np.float32), (t_rows, t_cols)),
                                  shape=(len(batch), data.n_items))
            label = np.asarray(truth[cand.rows, cand.items]).ravel().astype(np.float32)
            keep = (np.bincount(cand.rows, label, len(batch)) > 0)[cand.rows]
            xs.append(cand.features[keep])
            ys.append(label[keep])
            gs.append(batch[cand.rows[keep]].astype(np.int64))
        if not xs:  # nobody in this fold has a held-out title (short histories carved to nothing)
            return (np.zeros((0, len(self.feature_names)), np.float32), np.zeros(0, np.float32),
                    np.zeros(0, np.int64))
        return np.concatenate(xs), np.concatenate(ys), np.concatenate(gs)

    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    def recommend(self, history: sp.csr_matrix, times: sp.csr_matrix | None, k: int,
                  exclude: sp.csr_matrix | None = None) -> tuple[npt.NDArray[np.intp], F32]:
        """Top-k titles per history, never one in the history or in ``exclude`` (e.g. watched but disliked)."""
        if self.ranker is None or self.stats is None:
            raise ModelError("pipeline: recommend() called before fit()")
        h = sp.csr_matrix(history, dtype=np.float32)
        out_idx = np.zeros((h.shape[0], k), np.intp)
        out_score = np.zeros((h.shape[0], k), np.float32)
        for start in range(0, h.shape[0], _CHUNK):
            hb = h[start : start + _CHUNK]
            tb = None if times is None else sp.csr_matrix(times)[start : start + _CHUNK]
            full = self._full_scores(hb, tb)
            for mask in (hb, None if exclude is None else sp.csr_matrix(exclude)[start : start + _CHUNK]):
                if mask is not None:
                    full[np.repeat(np.arange(mask.shape[0]), np.diff(mask.indptr)), mask.indices] = -np.inf
            idx = top_k(full, k)
            out_idx[start : start + hb.shape[0]] = idx
            out_score[start : start + hb.shape[0]] = np.take_along_axis(full, idx, axis=1)
        return out_idx, out_score

    def _full_scores(self, history: sp.csr_matrix, times: sp.csr_matrix | None) -> F32:
        """Ranker scores for candidates; everything else below them, in popularity order."""
        assert self.ranker is not None and self.stats is not None
        cand = generate(self.generators, self.stats, history, times, self.config.candidates)
        pred = self.ranker.predict(cand.features)
        floor = float(pred.min()) - 1.0 if len(pred) else 0.0
        pop = self.stats.log_pop / max(float(self.stats.log_pop.max()), 1.0)
        full = np.tile((floor - 1.0 + pop).astype(np.float32), (history.shape[0], 1))
        full[cand.rows, cand.items] = pred
        return full

    def score(self, history: sp.csr_matrix, times: sp.csr_matrix | None = None) -> F32:
        if self.ranker is None:
            raise ModelError("pipeline: score() called before fit()")
        return np.vstack([self._full_scores(history[s : s + _CHUNK], None if times is None else times[s : s + _CHUNK])
                          for s in range(0, history.shape[0], _CHUNK)])
