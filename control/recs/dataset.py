"""Turn string-keyed interactions and a catalogue into the index-based sparse matrices models train on.

Every model sees the same :class:`TrainData`, so the item index (and thus "full ranking over the
catalogue") means the same thing for all of them, and side information (genres, tags, years, times)
travels with the matrix it belongs to.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp

from control.recs.data import Catalog, Interactions

F32 = npt.NDArray[np.float32]


@dataclass(frozen=True)
class ItemSide:
    """Per-item metadata as matrices; rows follow the item index."""

    genres: sp.csr_matrix  # items x genres, 0/1
    tags: sp.csr_matrix  # items x tags, counts
    years: npt.NDArray[np.float64]  # NaN when unknown
    genre_names: tuple[str, ...]


@dataclass(frozen=True)
class TrainData:
    """Binary user x item matrix plus the timestamps of each positive and the catalogue side data."""

    user_ids: tuple[str, ...]
    item_ids: tuple[str, ...]
    matrix: sp.csr_matrix  # users x items, float32 1.0 per positive
    times: sp.csr_matrix  # same sparsity as matrix: last event time (seconds, float64)
    side: ItemSide
    now: float  # the latest training timestamp: "the present" for time decay

    @property
    def n_users(self) -> int:
        return len(self.user_ids)

    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    def user_index(self) -> dict[str, int]:
        return {u: i for i, u in enumerate(self.user_ids)}

    def item_index(self) -> dict[str, int]:
        return {t: i for i, t in enumerate(self.item_ids)}


def _side(item_ids: tuple[str, ...], catalog: Catalog) -> ItemSide:
    genre_names = tuple(sorted({g for t in catalog.titles.values() for g in t.genres}))
    genre_idx = {g: i for i, g in enumerate(genre_names)}
    tag_counts: dict[str, int] = {}
    for t in catalog.titles.values():
        for tag in t.tags:
            tag_counts[tag] = tag_counts.get(tag, 0) + 1
    # a tag on a single title cannot relate two titles; dropping it keeps the vocabulary small
    tag_idx = {tag: i for i, tag in enumerate(sorted(t for t, c in tag_counts.items() if c > 1))}
    g_rows: list[int] = []
    g_cols: list[int] = []
    t_rows: list[int] = []
    t_cols: list[int] = []
    years = np.full(len(item_ids), np.nan)
    for row, item in enumerate(item_ids):
        title = catalog.titles.get(item)
        if title is None:
            continue
        for g in title.genres:
            g_rows.append(row)
            g_cols.append(genre_idx[g])
        for tag in title.tags:
            if tag in tag_idx:
                t_rows.append(row)
                t_cols.append(tag_idx[tag])
        if title.year is not None:
            years[row] = title.year
    n = len(item_ids)
    genres = sp.csr_matrix((np.ones(len(g_rows), np.float32), (g_rows, g_cols)), shape=(n, len(genre_names)))
    tags = sp.csr_matrix((np.ones(len(t_rows), np.float32), (t_rows, t_cols)), shape=(n, max(len(tag_idx), 1)))
    genres.sum_duplicates()
    genres.data[:] = 1.0
    tags.sum_duplicates()
    return ItemSide(genres, tags, years, genre_names)


def build(train: Interactions, catalog: Catalog, *, extra_users: tuple[str, ...] = ()) -> TrainData:
    """Index users and items (catalogue first, then any item only seen in ``train``) and build matrices.

    Duplicate (user, item) rows collapse to one positive carrying the latest time.
    """
    item_ids = tuple(catalog.titles) + tuple(sorted(set(train.items.tolist()) - set(catalog.titles)))
    user_ids = tuple(sorted(set(train.users.tolist()) | set(extra_users)))
    u_idx = {u: i for i, u in enumerate(user_ids)}
    i_idx = {t: i for i, t in enumerate(item_ids)}
    rows = np.fromiter((u_idx[u] for u in train.users.tolist()), np.int64, len(train))
    cols = np.fromiter((i_idx[t] for t in train.items.tolist()), np.int64, len(train))
    shape = (len(user_ids), len(item_ids))
    # keep the latest time per pair: sort so the last duplicate wins, then build without summing
    order = np.lexsort((train.timestamps, cols, rows))
    keys = rows[order] * shape[1] + cols[order]
    last = np.r_[keys[1:] != keys[:-1], True] if len(keys) else np.zeros(0, bool)
    sel = order[last]
    times = sp.csr_matrix((train.timestamps[sel].astype(np.float64), (rows[sel], cols[sel])), shape=shape)
    matrix = sp.csr_matrix((np.ones(len(sel), np.float32), (rows[sel], cols[sel])), shape=shape)
    now = float(train.timestamps.max()) if len(train) else 0.0
    return TrainData(user_ids, item_ids, matrix, times, _side(item_ids, catalog), now)


def history_rows(data: TrainData, users: list[str], matrix: sp.csr_matrix | None = None) -> sp.csr_matrix:
    """Rows of ``matrix`` (default: the positives) for ``users`` in order; unknown users get an empty row."""
    u_idx = data.user_index()
    known = [(r, u_idx[u]) for r, u in enumerate(users) if u in u_idx]
    rows = [r for r, _ in known]
    src = [s for _, s in known]
    picker = sp.csr_matrix((np.ones(len(rows), np.float32), (rows, src)), shape=(len(users), data.n_users))
    source = data.matrix if matrix is None else matrix
    return sp.csr_matrix(picker @ source, dtype=source.dtype)


def to_interactions(data: TrainData) -> Interactions:
    """The positives of ``data`` as interaction rows (rating 1.0), for carving inner splits."""
    times = sp.coo_matrix(data.times)
    users = np.array(data.user_ids, dtype=np.str_)[times.row]
    items = np.array(data.item_ids, dtype=np.str_)[times.col]
    return Interactions(users, items, np.ones(len(users)), times.data.astype(np.int64))


def restrict(data: TrainData, kept: Interactions) -> TrainData:
    """``data`` re-built from a subset of its own interactions, with the same user and item index."""
    u_idx = data.user_index()
    i_idx = data.item_index()
    rows = np.fromiter((u_idx[u] for u in kept.users.tolist()), np.int64, len(kept))
    cols = np.fromiter((i_idx[t] for t in kept.items.tolist()), np.int64, len(kept))
    shape = (data.n_users, data.n_items)
    times = sp.csr_matrix((kept.timestamps.astype(np.float64), (rows, cols)), shape=shape)
    matrix = sp.csr_matrix((np.ones(len(kept), np.float32), (rows, cols)), shape=shape)
    now = float(kept.timestamps.max()) if len(kept) else data.now
    return TrainData(data.user_ids, data.item_ids, matrix, times, data.side, now)
