"""Item-item neighbourhood models: cosine item-kNN with shrinkage, and RP3beta random walks.

Both reduce to a sparse item x item weight matrix W and score a history h as h @ W, which is what makes
"because you watched X" explainable: W[X] is the row. Only the top ``neighbours`` weights per item are
kept, which both regularises and keeps the saved table small.
"""

from __future__ import annotations

from typing import Any, Self

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp

from control.recs.dataset import TrainData
from control.recs.models.base import F32, Arrays, Recommender, item_counts, load_csr, save_csr


def keep_top_per_row(sim: sp.csr_matrix, k: int, chunk: int = 1024) -> sp.csr_matrix:
    """Keep the k largest entries of each row (ties: lower column first), dropping the diagonal."""
    sim = sp.csr_matrix(sim)
    sim.setdiag(0.0)
    sim.eliminate_zeros()
    n = sim.shape[0]
    rows: list[npt.NDArray[np.int64]] = []
    cols: list[npt.NDArray[np.int64]] = []
    vals: list[npt.NDArray[np.float32]] = []
    for start in range(0, n, chunk):
        block = sim[start : start + chunk].toarray()
        kk = min(k, block.shape[1])
        part = np.argpartition(-block, kk - 1, axis=1)[:, :kk]
        v = np.take_along_axis(block, part, axis=1)
        r = np.repeat(np.arange(start, start + block.shape[0]), kk)
        keep = v.ravel() > 0
        rows.append(r[keep])
        cols.append(part.ravel()[keep])
        vals.append(v.ravel()[keep].astype(np.float32))
    return sp.csr_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=sim.shape,
                         dtype=np.float32)


class _WeightModel(Recommender):
    def __init__(self) -> None:
        super().__init__()
        self.weights = sp.csr_matrix((0, 0), dtype=np.float32)

    def _score(self, history: sp.csr_matrix) -> F32:
        return np.asarray((history @ self.weights).toarray(), dtype=np.float32)

    def _arrays(self) -> Arrays:
        return save_csr("w", self.weights)

    def _restore(self, arrays: Arrays) -> None:
        self.weights = load_csr("w", arrays)


class ItemKNN(_WeightModel):
    """Cosine similarity shrunk towards zero for items with little co-support: c / (|i||j| + shrink)."""

    kind = "item_knn"

    def __init__(self, neighbours: int = 100, shrink: float = 10.0) -> None:
        super().__init__()
        self.neighbours = neighbours
        self.shrink = shrink

    def fit(self, data: TrainData) -> Self:
        x = sp.csr_matrix(data.matrix, dtype=np.float32)
        co = sp.csr_matrix(x.T @ x)
        norms = np.sqrt(item_counts(data)).astype(np.float32)
        co = sp.coo_matrix(co)
        vals = co.data / (norms[co.row] * norms[co.col] + self.shrink)
        sim = sp.csr_matrix((vals.astype(np.float32), (co.row, co.col)), shape=co.shape)
        # row i of W must hold "items similar to i" so that history @ W spreads from watched items
        self.weights = keep_top_per_row(sim, self.neighbours)
        self.n_items = data.n_items
        return self

    def params(self) -> dict[str, Any]:
        return {"neighbours": self.neighbours, "shrink": self.shrink}


class RP3Beta(_WeightModel):
    """Three-step random walk item -> user -> item, divided by target popularity ** beta (Paudel et al.)."""

    kind = "rp3beta"

    def __init__(self, neighbours: int = 200, alpha: float = 1.0, beta: float = 0.5) -> None:
        super().__init__()
        self.neighbours = neighbours
        self.alpha = alpha
        self.beta = beta

    def fit(self, data: TrainData) -> Self:
        x = sp.csr_matrix(data.matrix, dtype=np.float32)
        user_deg = np.asarray(x.sum(axis=1)).ravel()
        item_deg = item_counts(data)
        p_ui = sp.diags(1.0 / np.maximum(user_deg, 1.0)) @ x
        p_iu = sp.diags(1.0 / np.maximum(item_deg, 1.0)) @ x.T
        p_ui.data **= self.alpha
        p_iu = sp.csr_matrix(p_iu)
        p_iu.data **= self.alpha
        walk = sp.csr_matrix(p_iu @ p_ui)
        walk = sp.csr_matrix(walk @ sp.diags(1.0 / np.maximum(item_deg, 1.0) ** self.beta))
        self.weights = keep_top_per_row(walk.astype(np.float32), self.neighbours)
        self.n_items = data.n_items
        return self

    def params(self) -> dict[str, Any]:
        return {"neighbours": self.neighbours, "alpha": self.alpha, "beta": self.beta}
