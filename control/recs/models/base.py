"""The contract every recommender model implements, and pickle-free persistence shared by all of them.

One contract lets the evaluation harness, the pipeline and the contract tests treat models alike.
Models score from a *history* (a sparse row of items per user) rather than a user id, so a profile the
model never saw can still be scored, and the same call serves training users and new ones.
Saved models are a single ``.npz`` (``allow_pickle=False``) holding arrays plus a JSON header, so loading
a model file can never execute code.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, ClassVar, Self

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp

from control.recs.dataset import TrainData
from control.recs.errors import ModelError
from control.recs.metrics import top_k

F32 = npt.NDArray[np.float32]
Arrays = dict[str, npt.NDArray[Any]]


class Recommender(ABC):
    """fit on :class:`TrainData`, score histories, save and load without pickle."""

    #: Stable name used in saved files, tables and feature names.
    kind: ClassVar[str]

    def __init__(self) -> None:
        self.n_items = 0

    @abstractmethod
    def fit(self, data: TrainData) -> Self:
        """Learn from ``data``; returns self so fit-and-use reads in one line."""

    @abstractmethod
    def _score(self, history: sp.csr_matrix) -> F32: ...

    @abstractmethod
    def params(self) -> dict[str, Any]:
        """Hyper-parameters, JSON-serialisable: the constructor's keyword arguments."""

    @abstractmethod
    def _arrays(self) -> Arrays: ...

    @abstractmethod
    def _restore(self, arrays: Arrays) -> None: ...

    @property
    def fitted(self) -> bool:
        return self.n_items > 0

    def score(self, history: sp.csr_matrix) -> F32:
        """Scores (rows = histories, columns = items); higher is better. Items in the history are not masked."""
        if not self.fitted:
            raise ModelError(f"{self.kind}: score() called before fit()")
        if history.shape[1] != self.n_items:
            raise ModelError(f"{self.kind}: history has {history.shape[1]} items, model has {self.n_items}")
        return np.asarray(self._score(sp.csr_matrix(history, dtype=np.float32)), dtype=np.float32)

    def recommend(self, history: sp.csr_matrix, k: int) -> tuple[npt.NDArray[np.intp], F32]:
        """Top-k items per history with the history's own items excluded."""
        scores = self.score(history)
        hist = sp.csr_matrix(history)
        rows = np.repeat(np.arange(hist.shape[0]), np.diff(hist.indptr))
        scores[rows, hist.indices] = -np.inf
        idx = top_k(scores, k)
        return idx, np.take_along_axis(scores, idx, axis=1)

    def save(self, path: Path) -> None:
        if not self.fitted:
            raise ModelError(f"{self.kind}: nothing to save before fit()")
        header = json.dumps({"kind": self.kind, "params": self.params(), "n_items": self.n_items})
        arrays = self._arrays()
        if "__header__" in arrays:
            raise ModelError("reserved array name")
        with path.open("wb") as fh:
            np.savez(fh, allow_pickle=False, __header__=np.array(header), **arrays)

    @classmethod
    def load(cls, path: Path) -> Self:
        try:
            with np.load(path, allow_pickle=False) as npz:
                arrays = {name: npz[name] for name in npz.files}
        except (OSError, ValueError) as exc:
            raise ModelError(f"{path}: not a saved model ({exc})") from None
        try:
            header = json.loads(str(arrays.pop("__header__")))
            kind, params, n_items = header["kind"], header["params"], int(header["n_items"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelError(f"{path}: bad model header ({exc})") from None
        if kind != cls.kind:
            raise ModelError(f"{path}: holds a {kind!r} model, not {cls.kind!r}")
        model = cls(**params)
        model.n_items = n_items
        try:
            model._restore(arrays)
        except KeyError as exc:
            raise ModelError(f"{path}: missing array {exc}") from None
        return model


def save_csr(prefix: str, m: sp.csr_matrix) -> Arrays:
    m = sp.csr_matrix(m)
    return {f"{prefix}_data": m.data, f"{prefix}_indices": m.indices, f"{prefix}_indptr": m.indptr,
            f"{prefix}_shape": np.array(m.shape, dtype=np.int64)}


def load_csr(prefix: str, arrays: Arrays) -> sp.csr_matrix:
    shape = tuple(int(x) for x in arrays[f"{prefix}_shape"])
    return sp.csr_matrix((arrays[f"{prefix}_data"], arrays[f"{prefix}_indices"], arrays[f"{prefix}_indptr"]),
                         shape=shape)


def item_counts(data: TrainData) -> npt.NDArray[np.float64]:
    """How many training users hold each item."""
    return np.asarray(data.matrix.sum(axis=0), dtype=np.float64).ravel()
