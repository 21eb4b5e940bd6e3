"""Implicit-feedback ALS (Hu, Koren & Volinsky 2008), solved with batched conjugate gradient.

Written in numpy rather than taken from ``implicit`` so it is deterministic under a seed on any thread
count and installs without a compiled extension. Training follows implicit's scheme (a few warm-started
CG steps per half-iteration, confidence ``1 + alpha`` on positives); scoring a history folds the user in
with CG run to convergence against the item factors, so training users and new profiles are treated alike.
On MovieLens this model needs a regularisation far above the usual defaults (tens, not hundredths).
"""

from __future__ import annotations

from typing import Any, Self

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp

from control.recs.dataset import TrainData
from control.recs.models.base import F32, Arrays, Recommender

F64 = npt.NDArray[np.float64]


def _cg_update(x: sp.csr_matrix, other: F64, current: F64, reg: float, alpha: float, steps: int) -> F64:
    """A few CG steps on every row's normal equations at once, warm-started from ``current``."""
    gram = other.T @ other
    gram[np.diag_indices_from(gram)] += reg
    rows = np.repeat(np.arange(x.shape[0]), np.diff(x.indptr))
    cols = x.indices

    def apply(v: F64) -> F64:
        dots = np.einsum("ij,ij->i", other[cols], v[rows])
        sparse = sp.csr_matrix((alpha * dots, x.indices, x.indptr), shape=x.shape)
        return np.asarray(v @ gram + sparse @ other)

    b = (1.0 + alpha) * np.asarray(x @ other)
    sol = current.copy()
    r = b - apply(sol)
    p = r.copy()
    rs_old = np.einsum("ij,ij->i", r, r)
    for _ in range(steps):
        ap = apply(p)
        denom = np.einsum("ij,ij->i", p, ap)
        step = np.divide(rs_old, denom, out=np.zeros_like(rs_old), where=denom > 1e-20)
        sol += step[:, None] * p
        r -= step[:, None] * ap
        rs_new = np.einsum("ij,ij->i", r, r)
        beta = np.divide(rs_new, rs_old, out=np.zeros_like(rs_new), where=rs_old > 1e-20)
        p = r + beta[:, None] * p
        rs_old = rs_new
    return sol


class ALS(Recommender):
    kind = "als"

    def __init__(self, factors: int = 128, reg: float = 20.0, alpha: float = 5.0, iterations: int = 15,
                 cg_steps: int = 3, fold_in_steps: int = 32, seed: int = 0) -> None:
        super().__init__()
        self.factors = factors
        self.reg = reg
        self.alpha = alpha
        self.iterations = iterations
        self.cg_steps = cg_steps
        self.fold_in_steps = fold_in_steps
        self.seed = seed
        self.item_factors = np.zeros((0, factors), np.float32)

    def fit(self, data: TrainData) -> Self:
        rng = np.random.default_rng(self.seed)
        x = sp.csr_matrix(data.matrix, dtype=np.float64)
        xt = sp.csr_matrix(x.T)
        users = rng.normal(0.0, 0.01, (data.n_users, self.factors))
        items = rng.normal(0.0, 0.01, (data.n_items, self.factors))
        for _ in range(self.iterations):
            users = _cg_update(x, items, users, self.reg, self.alpha, self.cg_steps)
            items = _cg_update(xt, users, items, self.reg, self.alpha, self.cg_steps)
        self.item_factors = items.astype(np.float32)
        self.n_items = data.n_items
        return self

    def user_factors(self, history: sp.csr_matrix) -> F64:
        """Fold each history in against the fixed item factors (CG run to convergence from zero)."""
        h = sp.csr_matrix(history, dtype=np.float64)
        start = np.zeros((h.shape[0], self.factors))
        return _cg_update(h, self.item_factors.astype(np.float64), start, self.reg, self.alpha, self.fold_in_steps)

    def _score(self, history: sp.csr_matrix) -> F32:
        return (self.user_factors(history) @ self.item_factors.T.astype(np.float64)).astype(np.float32)

    def params(self) -> dict[str, Any]:
        return {"factors": self.factors, "reg": self.reg, "alpha": self.alpha, "iterations": self.iterations,
                "cg_steps": self.cg_steps, "fold_in_steps": self.fold_in_steps, "seed": self.seed}

    def _arrays(self) -> Arrays:
        return {"item_factors": self.item_factors}

    def _restore(self, arrays: Arrays) -> None:
        self.item_factors = arrays["item_factors"].astype(np.float32)
