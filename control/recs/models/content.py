"""Content-based generator: TF-IDF over genres and tags, user profile = sum of watched titles' vectors.

The only generator that can score a title nobody has watched yet, which is how new titles reach the
discovery row; in the blend it also tells the ranker how "on-profile" a candidate is.
"""

from __future__ import annotations

from typing import Any, Self

import numpy as np
import scipy.sparse as sp

from control.recs.dataset import TrainData
from control.recs.models.base import F32, Arrays, Recommender, load_csr, save_csr


def tfidf(counts: sp.csr_matrix) -> sp.csr_matrix:
    """Row-L2-normalised TF-IDF with smoothed IDF, so rare descriptors weigh more than common ones."""
    counts = sp.csr_matrix(counts, dtype=np.float32)
    df = np.asarray((counts > 0).sum(axis=0)).ravel()
    idf = np.log((1.0 + counts.shape[0]) / (1.0 + df)) + 1.0
    weighted = sp.csr_matrix(counts @ sp.diags(idf.astype(np.float32)))
    norms = np.sqrt(np.asarray(weighted.multiply(weighted).sum(axis=1)).ravel())
    return sp.csr_matrix(sp.diags(1.0 / np.maximum(norms, 1e-12)) @ weighted, dtype=np.float32)


class ContentBased(Recommender):
    kind = "content"

    def __init__(self, tag_weight: float = 0.5) -> None:
        super().__init__()
        self.tag_weight = tag_weight
        self.vectors = sp.csr_matrix((0, 0), dtype=np.float32)

    def fit(self, data: TrainData) -> Self:
        side = data.side
        features = sp.hstack([side.genres, self.tag_weight * sp.csr_matrix(side.tags > 0, dtype=np.float32)])
        self.vectors = tfidf(sp.csr_matrix(features))
        self.n_items = data.n_items
        return self

    def _score(self, history: sp.csr_matrix) -> F32:
        profile = history @ self.vectors
        counts = np.maximum(np.asarray(history.sum(axis=1)).ravel(), 1.0)
        profile = sp.diags(1.0 / counts) @ profile
        return np.asarray((profile @ self.vectors.T).toarray(), dtype=np.float32)

    def params(self) -> dict[str, Any]:
        return {"tag_weight": self.tag_weight}

    def _arrays(self) -> Arrays:
        return save_csr("v", self.vectors)

    def _restore(self, arrays: Arrays) -> None:
        self.vectors = load_csr("v", arrays)
