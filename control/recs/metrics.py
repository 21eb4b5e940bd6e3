"""Top-K ranking metrics, computed from ranked item lists and held-out sets.

Definitions (the ones used by the EASE and VAE-CF papers, so figures compare with the literature):
- Recall@K = hits in the top K / min(K, |held out|), so a perfect list scores 1 even when |held out| > K.
- NDCG@K = DCG / ideal DCG with binary gains, rank r (0-based) weighted 1/log2(r + 2).
- MAP@K = mean over users of AP@K = sum of precision@r at each hit r <= K / min(K, |held out|).
- Coverage = share of the catalogue that appears in at least one user's top K.
- Novelty = mean self-information -log2(p) of recommended items, p = (training users of the item + 1) /
  (users + 1): higher means less obvious recommendations.
Users with nothing held out are skipped; a held-out item absent from the catalogue still counts as a miss.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from control.recs.errors import DataError


@dataclass(frozen=True)
class Scores:
    recall: float
    ndcg: float
    map: float
    coverage: float
    novelty: float
    users: int


def _hits(ranked: npt.NDArray[np.intp], held_out: Sequence[int], k: int) -> npt.NDArray[np.bool_]:
    return np.isin(ranked[:k], np.asarray(held_out, dtype=np.intp))


def recall_at_k(ranked: npt.NDArray[np.intp], held_out: Sequence[int], k: int) -> float:
    if not held_out:
        raise DataError("recall is undefined for an empty held-out set")
    return float(_hits(ranked, held_out, k).sum()) / min(k, len(held_out))


def ndcg_at_k(ranked: npt.NDArray[np.intp], held_out: Sequence[int], k: int) -> float:
    if not held_out:
        raise DataError("NDCG is undefined for an empty held-out set")
    hits = _hits(ranked, held_out, k)
    discounts = 1.0 / np.log2(np.arange(2, k + 2))
    dcg = float((hits * discounts[: len(hits)]).sum())
    ideal = float(discounts[: min(k, len(held_out))].sum())
    return dcg / ideal


def ap_at_k(ranked: npt.NDArray[np.intp], held_out: Sequence[int], k: int) -> float:
    if not held_out:
        raise DataError("AP is undefined for an empty held-out set")
    hits = _hits(ranked, held_out, k)
    precision = np.cumsum(hits) / np.arange(1, len(hits) + 1)
    return float((precision * hits).sum()) / min(k, len(held_out))


def coverage(ranked: npt.NDArray[np.intp], n_items: int, k: int) -> float:
    if n_items <= 0:
        raise DataError("coverage needs a non-empty catalogue")
    return len(np.unique(ranked[:, :k])) / n_items


def novelty(ranked: npt.NDArray[np.intp], item_users: npt.NDArray[np.float64], n_users: int, k: int) -> float:
    p = (item_users[ranked[:, :k]] + 1.0) / (n_users + 1.0)
    return float(-np.log2(p).mean()) if p.size else 0.0


def evaluate(ranked: npt.NDArray[np.intp], held_out: Sequence[Sequence[int]], k: int,
             item_users: npt.NDArray[np.float64], n_users: int) -> Scores:
    """Score ranked lists (one row per user, best first) against held-out item indices per user."""
    if ranked.ndim != 2 or ranked.shape[0] != len(held_out):
        raise DataError(f"need one ranked row per user: {ranked.shape} vs {len(held_out)} users")
    if ranked.shape[1] < k:
        raise DataError(f"ranked lists have {ranked.shape[1]} items, fewer than k={k}")
    rows = [i for i, h in enumerate(held_out) if h]
    if not rows:
        raise DataError("no user has held-out items")
    rec = np.mean([recall_at_k(ranked[i], held_out[i], k) for i in rows])
    ndcg = np.mean([ndcg_at_k(ranked[i], held_out[i], k) for i in rows])
    ap = np.mean([ap_at_k(ranked[i], held_out[i], k) for i in rows])
    sub = ranked[rows]
    return Scores(float(rec), float(ndcg), float(ap), coverage(sub, len(item_users), k),
                  novelty(sub, item_users, n_users, k), len(rows))


def top_k(scores: npt.NDArray[np.float32], k: int) -> npt.NDArray[np.intp]:
    """Indices of the k best scores per row, best first; ties broken by lower index for determinism."""
    k = min(k, scores.shape[1])
    part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    vals = np.take_along_axis(scores, part, axis=1)
    order = np.lexsort((part, -vals), axis=1)
    return np.take_along_axis(part, order, axis=1).astype(np.intp)
