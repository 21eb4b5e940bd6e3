"""Seeded per-user train/test splits, and the same splits again inside training for validation.

Tuning must never see test data, so the validation split is carved from the training side with the
very same function: whatever the evaluation protocol, tuning imitates it one level down.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

import numpy as np
import numpy.typing as npt

from control.recs.data import Interactions
from control.recs.errors import DataError


class Protocol(StrEnum):
    RANDOM = "random"  # per user, a random share of the positives is held out
    TEMPORAL = "temporal"  # per user, the latest positive is held out (leave-last-out)


@dataclass(frozen=True)
class Split:
    train: Interactions
    test: dict[str, tuple[str, ...]]  # user -> held-out items


def positives(data: Interactions, min_rating: float) -> Interactions:
    """Interactions rated at least ``min_rating``, one row per (user, item) (the latest wins)."""
    kept = data.take(data.ratings >= min_rating)
    if len(kept) == 0:
        return kept
    order = np.lexsort((kept.timestamps, kept.items, kept.users))
    users = kept.users[order]
    items = kept.items[order]
    last = np.r_[(users[1:] != users[:-1]) | (items[1:] != items[:-1]), True]
    return kept.take(order[last])


def _groups(users: npt.NDArray[np.str_], order: npt.NDArray[np.intp]) -> tuple[npt.NDArray[np.intp], ...]:
    """For rows sorted by ``order`` (user-major): position within the user's group and group size."""
    u = users[order]
    starts_mask = np.r_[True, u[1:] != u[:-1]]
    starts = np.flatnonzero(starts_mask)
    group = np.cumsum(starts_mask) - 1
    sizes = np.diff(np.r_[starts, len(u)])
    pos = np.arange(len(u)) - starts[group]
    return pos, sizes[group]


def _split(data: Interactions, test_rows: npt.NDArray[np.bool_]) -> Split:
    test: dict[str, list[str]] = {}
    for user, item in zip(data.users[test_rows].tolist(), data.items[test_rows].tolist(), strict=True):
        test.setdefault(user, []).append(item)
    return Split(data.take(~test_rows), {u: tuple(sorted(v)) for u, v in test.items()})


def random_split(data: Interactions, *, test_share: float = 0.2, seed: int = 0) -> Split:
    """Hold out ``round(test_share * n)`` random positives of each user with n >= 2 (keeping one in train)."""
    if not 0.0 < test_share < 1.0:
        raise DataError(f"test share must be in (0, 1), got {test_share}")
    rng = np.random.default_rng(seed)
    order = np.lexsort((rng.random(len(data)), data.users))
    pos, size = _groups(data.users, order)
    n_test = np.minimum(np.rint(test_share * size), size - 1)
    test_rows = np.zeros(len(data), bool)
    test_rows[order] = pos < n_test
    return _split(data, test_rows)


def temporal_split(data: Interactions, *, last_n: int = 1, seed: int = 0) -> Split:
    """Hold out each user's latest ``last_n`` positives (users with more than ``last_n`` of them).

    Ties in time are broken by a seeded shuffle so no item id ordering leaks into the test set.
    """
    if last_n < 1:
        raise DataError(f"last_n must be at least 1, got {last_n}")
    rng = np.random.default_rng(seed)
    order = np.lexsort((rng.random(len(data)), data.timestamps, data.users))
    pos, size = _groups(data.users, order)
    test_rows = np.zeros(len(data), bool)
    test_rows[order] = (pos >= size - last_n) & (size > last_n)
    return _split(data, test_rows)


def split(data: Interactions, protocol: Protocol, *, seed: int, last_n: int = 1) -> Split:
    if protocol is Protocol.RANDOM:
        return random_split(data, seed=seed)
    return temporal_split(data, last_n=last_n, seed=seed)


def folds(data: Interactions, protocol: Protocol, n_folds: int, *, seed: int) -> list[Split]:
    """Several disjoint validation splits carved from ``data``, to give a learned ranker more labels.

    Random: each user's positives are dealt into ``n_folds`` parts; fold f holds out part f and trains on
    the rest. Temporal: fold f holds out each user's (f+1)-th latest positive and trains only on what came
    before it, so no fold ever learns from its own future.
    """
    if n_folds < 1:
        raise DataError(f"need at least one fold, got {n_folds}")
    rng = np.random.default_rng(seed)
    if protocol is Protocol.RANDOM:
        order = np.lexsort((rng.random(len(data)), data.users))
        pos, size = _groups(data.users, order)
        part = np.full(len(data), -1)
        part[order] = np.where(size >= 2, pos % max(n_folds, 2), -1)
        if n_folds == 1:
            return [random_split(data, seed=seed)]
        return [_split(data, part == f) for f in range(n_folds)]
    order = np.lexsort((rng.random(len(data)), data.timestamps, data.users))
    pos, size = _groups(data.users, order)
    from_end = np.empty(len(data), np.int64)
    from_end[order] = size - 1 - pos
    n_of = np.empty(len(data), np.int64)
    n_of[order] = size
    out: list[Split] = []
    for f in range(n_folds):
        keep = from_end >= f  # drop what came after the held-out positive
        test_rows = (from_end == f) & (n_of > f + 1)  # something earlier must remain to learn from
        out.append(_split(data.take(keep), test_rows[keep]))
    return out
