"""Popularity generators: the all-time baseline and time-decayed trending that favours rising titles.

Both ignore the history (everyone gets the same list before masking); they are the cold-start answer
for new profiles and the bar every personalised model has to clear.
"""

from __future__ import annotations

from typing import Any, Self

import numpy as np
import scipy.sparse as sp

from control.recs.dataset import TrainData
from control.recs.models.base import F32, Arrays, Recommender, item_counts

_DAY = 86_400.0


class MostPopular(Recommender):
    kind = "most_popular"

    def __init__(self) -> None:
        super().__init__()
        self.counts = np.zeros(0, np.float32)

    def fit(self, data: TrainData) -> Self:
        self.counts = item_counts(data).astype(np.float32)
        self.n_items = data.n_items
        return self

    def _score(self, history: sp.csr_matrix) -> F32:
        return np.tile(self.counts, (history.shape[0], 1))

    def params(self) -> dict[str, Any]:
        return {}

    def _arrays(self) -> Arrays:
        return {"counts": self.counts}

    def _restore(self, arrays: Arrays) -> None:
        self.counts = arrays["counts"].astype(np.float32)


class Trending(Recommender):
    """Exponentially decayed play counts, boosted when the short-term rate outgrows the long-term one.

    ``score = short * (short / long) ** rise`` with ``short``/``long`` the counts decayed with the two
    half-lives (the long one rescaled to the short one's mass), so a title climbing now beats one that is
    merely big.
    """

    kind = "trending"

    def __init__(self, half_life_days: float = 14.0, long_half_life_days: float = 90.0, rise: float = 0.5) -> None:
        super().__init__()
        self.half_life_days = half_life_days
        self.long_half_life_days = long_half_life_days
        self.rise = rise
        self.scores = np.zeros(0, np.float32)

    def fit(self, data: TrainData) -> Self:
        times = sp.csr_matrix(data.times)
        age_days = np.maximum(data.now - times.data, 0.0) / _DAY
        cols = times.indices
        short = np.bincount(cols, np.exp2(-age_days / self.half_life_days), minlength=data.n_items)
        long = np.bincount(cols, np.exp2(-age_days / self.long_half_life_days), minlength=data.n_items)
        long_scaled = long * (self.half_life_days / self.long_half_life_days)
        ratio = (short + 1e-3) / (long_scaled + 1e-3)
        self.scores = (short * ratio**self.rise).astype(np.float32)
        self.n_items = data.n_items
        return self

    def _score(self, history: sp.csr_matrix) -> F32:
        return np.tile(self.scores, (history.shape[0], 1))

    def params(self) -> dict[str, Any]:
        return {"half_life_days": self.half_life_days, "long_half_life_days": self.long_half_life_days,
                "rise": self.rise}

    def _arrays(self) -> Arrays:
        return {"scores": self.scores}

    def _restore(self, arrays: Arrays) -> None:
        self.scores = arrays["scores"].astype(np.float32)
