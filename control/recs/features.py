"""Ranker features for (profile, candidate title) pairs: per profile, per title, per pair, per context.

Kept apart from the models and the ranker so the feature list is one declarative spec that is saved
with the bundle: the edge re-ranker must compute exactly these columns in exactly this order.
Time features matter most on viewing logs: a title first watched years after a profile went quiet, or
one whose audience peaked in another era, is rarely what that profile watches next, and no
co-occurrence model can see that.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp

from control.recs.dataset import TrainData
from control.recs.models.base import item_counts

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]
_DAY = 86_400.0
_MONTH = 30.0 * _DAY

#: Features that do not come from a generator, in column order.
BASE_FEATURES = (
    # profile
    "user_log_history", "user_span_days", "user_idle_days", "user_mean_log_pop", "user_mean_year",
    # title
    "item_log_pop", "item_year", "item_first_days", "item_mean_days", "item_recent_share",
    # pair
    "genre_affinity", "year_gap", "first_seen_after_user", "mean_time_gap_days", "window_log_pop",
    "pop_vs_user", "session_share", "release_lag",
    # context
    "hour", "weekday",
)  # fmt: skip
#: Per generator: raw score, log rank in the profile's full list, score over the profile's best score.
GENERATOR_FEATURES = ("score", "log_rank", "rel_score")


def feature_names(generators: tuple[str, ...]) -> tuple[str, ...]:
    return BASE_FEATURES + tuple(f"{g}_{f}" for g in generators for f in GENERATOR_FEATURES)


@dataclass(frozen=True)
class ItemStats:
    """Per-title statistics from the training log, saved with the bundle."""

    log_pop: F64
    year: F64
    first: F64  # seconds; NaN for titles never seen
    mean: F64
    recent_share: F64  # share of the title's events in the last 90 days of the log
    genres: sp.csr_matrix  # row-normalised
    month0: float  # start of the month grid
    monthly: npt.NDArray[np.float32]  # items x months cumulative counts
    now: float

    @classmethod
    def from_data(cls, data: TrainData) -> ItemStats:
        times = sp.csc_matrix(data.times)
        counts = item_counts(data)
        seen = counts > 0
        first = np.full(data.n_items, np.nan)
        mean = np.full(data.n_items, np.nan)
        recent = np.zeros(data.n_items)
        if times.nnz:
            cols = np.repeat(np.arange(data.n_items), np.diff(times.indptr))
            first[seen] = np.minimum.reduceat(times.data, times.indptr[:-1][seen])
            mean = np.asarray(np.bincount(cols, times.data, data.n_items) / np.maximum(counts, 1), np.float64)
            mean[~seen] = np.nan
            recent = np.asarray(np.bincount(cols, (times.data >= data.now - 90 * _DAY).astype(float), data.n_items),
                                np.float64)
            recent /= np.maximum(counts, 1)
            month0 = float(times.data.min())
            months = ((times.data - month0) // _MONTH).astype(np.int64)
            n_months = int(months.max()) + 1
            grid = np.zeros((data.n_items, n_months), np.float32)
            np.add.at(grid, (cols, months), 1.0)
            monthly = np.cumsum(grid, axis=1, dtype=np.float32)
        else:
            month0 = data.now
            monthly = np.zeros((data.n_items, 1), np.float32)
        g = sp.csr_matrix(data.side.genres, dtype=np.float32)
        g_norm = np.sqrt(np.asarray(g.sum(axis=1)).ravel())
        genres = sp.csr_matrix(sp.diags(1.0 / np.maximum(g_norm, 1.0)) @ g, dtype=np.float32)
        return cls(np.log1p(counts), data.side.years.astype(np.float64), first, mean, recent, genres, month0,
                   monthly, data.now)

    def month_of(self, t: F64) -> npt.NDArray[np.int64]:
        return np.clip(((t - self.month0) // _MONTH).astype(np.int64), 0, self.monthly.shape[1] - 1)

    def month_share(self, half_width: int = 2) -> npt.NDArray[np.float32]:
        """items x months: each title's share of all events within +-``half_width`` months of that month."""
        n = self.monthly.shape[1]
        hi = np.minimum(np.arange(n) + half_width, n - 1)
        lo = np.arange(n) - half_width - 1
        window = self.monthly[:, hi] - np.where(lo >= 0, self.monthly[:, np.maximum(lo, 0)], 0.0)
        return np.asarray(window / np.maximum(window.sum(axis=0, keepdims=True), 1.0), dtype=np.float32)

    def window_count(self, items: npt.NDArray[np.intp], at: F64, months: int = 3) -> F64:
        """Events of each title in the ``months`` months up to time ``at`` (the pair's profile time)."""
        last = self.monthly.shape[1] - 1
        hi = np.clip(((at - self.month0) // _MONTH).astype(np.int64), -1, last)
        lo = np.clip(hi - months, -1, last)
        top = np.where(hi >= 0, self.monthly[items, np.maximum(hi, 0)], 0.0)
        bottom = np.where(lo >= 0, self.monthly[items, np.maximum(lo, 0)], 0.0)
        return np.asarray(top - bottom, dtype=np.float64)


@dataclass(frozen=True)
class Profiles:
    """Per-profile summaries computed from a history (and its event times when known)."""

    log_history: F64
    first: F64
    last: F64
    mean_time: F64
    mean_log_pop: F64
    mean_year: F64
    genre_profile: sp.csr_matrix
    months: npt.NDArray[np.float32]  # profiles x months: where in time the profile's events fall (rows sum to 1)

    @classmethod
    def from_history(cls, history: sp.csr_matrix, times: sp.csr_matrix | None, stats: ItemStats) -> Profiles:
        h = sp.csr_matrix(history, dtype=np.float32)
        n = np.asarray(h.sum(axis=1)).ravel().astype(np.float64)
        denom = np.maximum(n, 1.0)
        if times is None or sp.csr_matrix(times).nnz == 0:
            first = last = mean_t = np.full(h.shape[0], stats.now)
        else:
            t = sp.csr_matrix(times)
            has = np.diff(t.indptr) > 0
            last = np.full(h.shape[0], stats.now)
            first = last.copy()
            last[has] = np.maximum.reduceat(t.data, t.indptr[:-1][has])
            first[has] = np.minimum.reduceat(t.data, t.indptr[:-1][has])
            mean_t = np.where(has, np.asarray(t.sum(axis=1)).ravel() / np.maximum(np.diff(t.indptr), 1), stats.now)
        mean_pop = (h @ stats.log_pop) / denom
        years = np.nan_to_num(stats.year, nan=0.0)
        known_year = (h @ (~np.isnan(stats.year)).astype(np.float64))
        mean_year = np.where(known_year > 0, (h @ years) / np.maximum(known_year, 1.0), np.nan)
        genre_profile = sp.csr_matrix(h @ stats.genres)
        norms = np.sqrt(np.asarray(genre_profile.multiply(genre_profile).sum(axis=1)).ravel())
        genre_profile = sp.csr_matrix(sp.diags(1.0 / np.maximum(norms, 1e-9)) @ genre_profile)
        n_months = stats.monthly.shape[1]
        months = np.zeros((h.shape[0], n_months), np.float32)
        if times is None or sp.csr_matrix(times).nnz == 0:
            months[:, stats.month_of(np.array([stats.now]))[0]] = 1.0
        else:
            t = sp.csr_matrix(times)
            t_rows = np.repeat(np.arange(t.shape[0]), np.diff(t.indptr))
            np.add.at(months, (t_rows, stats.month_of(t.data)), 1.0)
            empty = months.sum(axis=1) == 0
            months[empty, stats.month_of(np.array([stats.now]))[0]] = 1.0
            months /= months.sum(axis=1, keepdims=True)
        return cls(np.log1p(n), first, last, mean_t, mean_pop, mean_year, genre_profile, months)


def pair_features(stats: ItemStats, prof: Profiles, rows: npt.NDArray[np.intp], items: npt.NDArray[np.intp],
                  generator_scores: list[F32], generator_ranks: list[F32]) -> F32:
    """The feature matrix for pairs (rows[j] indexes the profile, items[j] the title), BASE then generators.

    ``generator_scores[g]`` and ``generator_ranks[g]`` are profiles x items arrays (history masked).
    """
    last = prof.last[rows]
    affinity = np.asarray(prof.genre_profile[rows].multiply(stats.genres[items]).sum(axis=1)).ravel()
    window = stats.window_count(items, last)
    share = stats.month_share()
    session_share = np.concatenate([
        np.einsum("ij,ij->i", prof.months[rows[s : s + 8192]], share[items[s : s + 8192]])
        for s in range(0, len(rows), 8192)
    ] or [np.zeros(0, np.float32)]).astype(np.float64)
    last_year = 1970.0 + last / (365.2425 * _DAY)
    cols: list[F64] = [
        prof.log_history[rows], (last - prof.first[rows]) / _DAY, (stats.now - last) / _DAY,
        prof.mean_log_pop[rows], prof.mean_year[rows],
        stats.log_pop[items], stats.year[items], (stats.now - stats.first[items]) / _DAY,
        (stats.now - stats.mean[items]) / _DAY, stats.recent_share[items],
        affinity, stats.year[items] - prof.mean_year[rows], (stats.first[items] - last) / _DAY,
        (stats.mean[items] - prof.mean_time[rows]) / _DAY, np.log1p(window),
        stats.log_pop[items] - prof.mean_log_pop[rows], np.log(session_share + 1e-7), last_year - stats.year[items],
        (last % _DAY) / 3600.0, ((last // _DAY + 4) % 7),
    ]  # fmt: skip
    for scores, ranks in zip(generator_scores, generator_ranks, strict=True):
        s = scores[rows, items].astype(np.float64)
        best = np.max(scores, axis=1).astype(np.float64)[rows]
        cols += [s, np.log1p(ranks[rows, items].astype(np.float64)),
                 np.divide(s, best, out=np.zeros_like(s), where=np.abs(best) > 1e-12)]
    return np.column_stack(cols).astype(np.float32)


def ranks_of(scores: F32, depth: int = 1000) -> F32:
    """0-based rank of every item in its row (0 = best), capped at ``depth`` (beyond it ranks do not matter)."""
    from control.recs.metrics import top_k

    ranks = np.full(scores.shape, float(depth), np.float32)
    top = top_k(scores, depth)
    np.put_along_axis(ranks, top, np.arange(top.shape[1], dtype=np.float32)[np.newaxis, :], axis=1)
    return ranks
