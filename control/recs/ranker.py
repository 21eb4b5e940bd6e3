"""XGBoost learning-to-rank (``rank:ndcg``) over candidate lists, saved in XGBoost's own format.

A thin wrapper: it owns the parameters, early stopping on held-out groups, and the guarantee that the
model file never goes through pickle.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import xgboost as xgb

from control.recs.errors import ModelError

F32 = npt.NDArray[np.float32]


@dataclass
class RankerParams:
    rounds: int = 600
    eta: float = 0.05
    max_depth: int = 4
    min_child_weight: float = 5.0
    subsample: float = 0.8
    colsample_bytree: float = 0.8
    early_stopping: int = 50
    threads: int = 2
    seed: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def booster_params(self) -> dict[str, Any]:
        return {
            "objective": "rank:ndcg", "eval_metric": "ndcg@10", "eta": self.eta, "max_depth": self.max_depth,
            "min_child_weight": self.min_child_weight, "subsample": self.subsample,
            "colsample_bytree": self.colsample_bytree, "tree_method": "hist", "nthread": self.threads,
            "seed": self.seed, "lambdarank_pair_method": "topk", "lambdarank_num_pair_per_sample": 16,
            **self.extra,
        }  # fmt: skip


class Ranker:
    def __init__(self, feature_names: tuple[str, ...], params: RankerParams | None = None) -> None:
        self.feature_names = feature_names
        self.params = params or RankerParams()
        self.booster: xgb.Booster | None = None
        self.best_iteration: int | None = None

    def fit(self, x: F32, y: F32, groups: npt.NDArray[np.int64], *, valid_share: float = 0.2) -> Ranker:
        """Train on rows grouped by profile (``groups`` sorted); a seeded share of groups stops early."""
        if x.shape[1] != len(self.feature_names):
            raise ModelError(f"ranker: {x.shape[1]} feature columns, spec has {len(self.feature_names)}")
        ids = np.unique(groups)
        rng = np.random.default_rng(self.params.seed)
        valid_ids = rng.choice(ids, size=max(1, int(len(ids) * valid_share)), replace=False)
        valid = np.isin(groups, valid_ids)
        names = list(self.feature_names)
        dtrain = xgb.DMatrix(x[~valid], label=y[~valid], qid=groups[~valid], feature_names=names)
        dvalid = xgb.DMatrix(x[valid], label=y[valid], qid=groups[valid], feature_names=names)
        self.booster = xgb.train(self.params.booster_params(), dtrain, num_boost_round=self.params.rounds,
                                 evals=[(dvalid, "valid")], early_stopping_rounds=self.params.early_stopping,
                                 verbose_eval=False)
        self.best_iteration = int(self.booster.best_iteration)
        return self

    def predict(self, x: F32) -> F32:
        if self.booster is None:
            raise ModelError("ranker: predict() called before fit()")
        dm = xgb.DMatrix(x, feature_names=list(self.feature_names))
        rounds = (0, self.best_iteration + 1) if self.best_iteration is not None else (0, 0)
        return np.asarray(self.booster.predict(dm, iteration_range=rounds), dtype=np.float32)

    def save(self, directory: Path) -> None:
        if self.booster is None:
            raise ModelError("ranker: nothing to save before fit()")
        self.booster.save_model(directory / "ranker.ubj")
        spec = {"features": list(self.feature_names), "best_iteration": self.best_iteration}
        (directory / "ranker.json").write_text(json.dumps(spec))

    @classmethod
    def load(cls, directory: Path) -> Ranker:
        try:
            spec = json.loads((directory / "ranker.json").read_text())
            ranker = cls(tuple(spec["features"]))
            best = spec["best_iteration"]
            ranker.best_iteration = None if best is None else int(best)
            booster = xgb.Booster()
            booster.load_model(directory / "ranker.ubj")
        except (OSError, ValueError, KeyError, xgb.core.XGBoostError) as exc:
            raise ModelError(f"{directory}: cannot load ranker ({exc})") from None
        ranker.booster = booster
        return ranker
