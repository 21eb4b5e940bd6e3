"""Contextual bandits for artwork choice and the discovery row's exploration slot.

Two linear policies with disjoint per-arm models (one ridge regression per arm over the same context
vector): LinUCB and linear Thompson sampling.  Both run on the edge (choose) and learn from plays
joined to impressions (update), so they are numpy-only, seeded, and saved without pickle.

Every choice comes with its *propensity*, the probability that the policy would pick that arm in that
context, because off-policy evaluation (``control/ope.py``) divides by it.  Hence two design choices:

* LinUCB's argmax is deterministic, which gives zero propensity to every other arm and makes logs
  useless for evaluating any other policy.  It is wrapped in epsilon-greedy: with probability ε an arm
  is drawn uniformly.  The propensity is then exact: ``(1-ε)/|ties|`` for the UCB winners plus ``ε/K``.
* Thompson sampling's choice probability has no closed form.  Each arm's sampled score is a 1-D normal
  (``x·θ̃`` with ``θ̃ ~ N(θ̂, v²A⁻¹)`` is ``N(x·θ̂, v² xᵀA⁻¹x)``), so the choice is made by drawing
  ``mc_draws`` score vectors at once, taking the winner of the first and estimating the propensity as
  the winner's share over all draws.  The same ε floor keeps every propensity ≥ ε/K.

ε decays as ``ε₀ / sqrt(1 + n/decay)`` towards ``min_epsilon``: with ``min_epsilon = 0`` regret is
sublinear; a small positive floor trades a little linear regret for logs that can always be evaluated.

Arms appear lazily (artwork variants and titles come and go); an unseen arm starts from the prior,
which makes it an optimistic candidate for LinUCB and a wide one for Thompson sampling.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np

from .errors import InvalidInput

FloatArray = np.ndarray[Any, np.dtype[np.float64]]
IntArray = np.ndarray[Any, np.dtype[np.int64]]

MAX_ARMS = 10_000
MAX_GROUPS = 10_000
MAX_DIM = 512
_FORMAT = 1


class BanditError(InvalidInput):
    """A context, arm list, reward or saved model is malformed."""


class ContextEncoder:
    """Turns (profile affinities, device, hour) into the fixed-length vector the models use.

    Layout: a bias term, one affinity per known genre (clipped to [0, 1]; unknown genres ignored),
    a one-hot device (unknown devices share an ``other`` slot), and the hour on the unit circle so
    23 h and 0 h are neighbours.
    """

    def __init__(self, genres: Sequence[str], devices: Sequence[str]) -> None:
        if len(set(genres)) != len(genres) or len(set(devices)) != len(devices):
            raise BanditError("genres and devices must be unique")
        self.genres = list(genres)
        self.devices = list(devices)
        self._genre_index = {g: i for i, g in enumerate(self.genres)}
        self._device_index = {d: i for i, d in enumerate(self.devices)}
        self.dim = 1 + len(self.genres) + len(self.devices) + 1 + 2
        if self.dim > MAX_DIM:
            raise BanditError(f"context would have {self.dim} features; at most {MAX_DIM}")

    def encode(self, affinities: Mapping[str, float], device: str, hour: float) -> FloatArray:
        if not (isinstance(hour, int | float) and math.isfinite(hour) and 0 <= hour < 24):
            raise BanditError(f"hour must be in [0, 24), not {hour!r}")
        x = np.zeros(self.dim)
        x[0] = 1.0
        for genre, value in affinities.items():
            i = self._genre_index.get(genre)
            if i is None:
                continue
            if not (isinstance(value, int | float) and math.isfinite(value)):
                raise BanditError(f"affinity for {genre!r} must be a finite number")
            x[1 + i] = min(1.0, max(0.0, float(value)))
        base = 1 + len(self.genres)
        x[base + self._device_index.get(device, len(self.devices))] = 1.0
        angle = 2 * math.pi * hour / 24
        x[-2], x[-1] = math.sin(angle) / 2, math.cos(angle) / 2
        return x


class Policy(Protocol):
    def probabilities(self, context: FloatArray, arms: Sequence[str]) -> FloatArray: ...

    def choose(self, context: FloatArray, arms: Sequence[str]) -> tuple[str, float]: ...

    def update(self, context: FloatArray, arm: str, reward: float) -> None: ...


def _check_arms(arms: Sequence[str]) -> None:
    if not arms:
        raise BanditError("no arms to choose from")
    if len(arms) > MAX_ARMS:
        raise BanditError(f"{len(arms)} arms; at most {MAX_ARMS}")
    if len(set(arms)) != len(arms):
        raise BanditError("arms must be unique")


class LinearBandit:
    """Shared state and bookkeeping of the disjoint linear policies.

    Per arm it keeps ``A⁻¹`` (updated by Sherman-Morrison, O(d²) per update, no inversions) and ``b``.
    """

    kind: Literal["linucb", "thompson"] = "linucb"

    def __init__(self, dim: int, *, alpha: float = 1.0, ridge: float = 1.0, epsilon: float = 0.05,
                 epsilon_decay: float = 500.0, min_epsilon: float = 0.0, mc_draws: int = 256,
                 seed: int = 0) -> None:
        if not 0 < dim <= MAX_DIM:
            raise BanditError(f"dimension must be in 1..{MAX_DIM}")
        for name, value in (("alpha", alpha), ("ridge", ridge), ("epsilon", epsilon),
                            ("epsilon_decay", epsilon_decay), ("min_epsilon", min_epsilon)):
            if not (math.isfinite(value) and value >= 0):
                raise BanditError(f"{name} must be finite and >= 0, not {value!r}")
        if ridge == 0 or epsilon_decay == 0 or epsilon > 1 or min_epsilon > epsilon:
            raise BanditError("need ridge > 0, epsilon_decay > 0 and 0 <= min_epsilon <= epsilon <= 1")
        if not 1 <= mc_draws <= 1_000_000:
            raise BanditError("mc_draws must be in 1..1000000")
        self.dim, self.alpha, self.ridge = dim, float(alpha), float(ridge)
        self.epsilon0, self.epsilon_decay, self.min_epsilon = float(epsilon), float(epsilon_decay), float(min_epsilon)
        self.mc_draws = mc_draws
        self.updates = 0
        self._rng = np.random.default_rng(seed)
        self._index: dict[str, int] = {}
        self._a_inv = np.zeros((0, dim, dim))
        self._b = np.zeros((0, dim))
        self._theta = np.zeros((0, dim))
        self._n = np.zeros(0, dtype=np.int64)

    @property
    def epsilon(self) -> float:
        return max(self.min_epsilon, self.epsilon0 / math.sqrt(1 + self.updates / self.epsilon_decay))

    @property
    def arms(self) -> list[str]:
        return list(self._index)

    def _check_context(self, context: FloatArray) -> FloatArray:
        x = np.asarray(context, dtype=np.float64)
        if x.shape != (self.dim,) or not np.all(np.isfinite(x)):
            raise BanditError(f"context must be {self.dim} finite numbers")
        return x

    def _arm(self, arm: str) -> int:
        i = self._index.get(arm)
        if i is None:
            if not isinstance(arm, str) or not arm or len(arm) > 256:
                raise BanditError("arm ids must be non-empty strings of at most 256 characters")
            if len(self._index) >= MAX_ARMS:
                raise BanditError(f"already {MAX_ARMS} arms")
            i = len(self._index)
            self._index[arm] = i
            self._a_inv = np.concatenate([self._a_inv, (np.eye(self.dim) / self.ridge)[None]])
            self._b = np.concatenate([self._b, np.zeros((1, self.dim))])
            self._theta = np.concatenate([self._theta, np.zeros((1, self.dim))])
            self._n = np.concatenate([self._n, np.zeros(1, dtype=np.int64)])
        return i

    def _posterior(self, x: FloatArray, arms: Sequence[str]) -> tuple[FloatArray, FloatArray]:
        """Mean and standard deviation of ``x·θ`` per arm (prior for arms never seen)."""
        mean = np.zeros(len(arms))
        std = np.full(len(arms), math.sqrt(float(x @ x) / self.ridge))
        get = self._index.get
        idx = np.fromiter((get(a, -1) for a in arms), dtype=np.int64, count=len(arms))
        known = idx >= 0
        if known.any():
            idx = idx[known]
            mean[known] = self._theta[idx] @ x
            std[known] = np.sqrt(np.maximum((self._a_inv[idx] @ x) @ x, 0.0))
        return mean, std

    def _greedy(self, mean: FloatArray, std: FloatArray, starts: IntArray,
                seg: IntArray) -> tuple[FloatArray, IntArray]:
        """Per arm, the probability of being picked without exploration (sums to 1 in each group),
        and one such pick per group (flat indices)."""
        raise NotImplementedError

    def _groups(self, groups: Sequence[Sequence[str]]) -> tuple[list[str], IntArray, IntArray, IntArray]:
        if not groups or len(groups) > MAX_GROUPS:
            raise BanditError(f"need 1..{MAX_GROUPS} groups of arms")
        for arms in groups:
            _check_arms(arms)
        flat = [a for arms in groups for a in arms]
        if len(flat) > MAX_ARMS * 10:
            raise BanditError(f"{len(flat)} arms in one call; at most {MAX_ARMS * 10}")
        sizes = np.array([len(arms) for arms in groups])
        starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
        return flat, sizes, starts, np.repeat(np.arange(len(groups)), sizes)

    def probabilities(self, context: FloatArray, arms: Sequence[str]) -> FloatArray:
        """The probability of each arm under the policy right now (TS: a Monte Carlo estimate)."""
        _check_arms(arms)
        x = self._check_context(context)
        eps = self.epsilon
        mean, std = self._posterior(x, arms)
        greedy, _ = self._greedy(mean, std, np.zeros(1, dtype=np.int64), np.zeros(len(arms), dtype=np.int64))
        out: FloatArray = (1 - eps) * greedy + eps / len(arms)
        return out

    def choose(self, context: FloatArray, arms: Sequence[str]) -> tuple[str, float]:
        """Pick an arm; returns it with its propensity (always > 0 while ε > 0)."""
        return self.choose_many(context, [arms])[0]

    def choose_many(self, context: FloatArray, groups: Sequence[Sequence[str]]) -> list[tuple[str, float]]:
        """One independent choice per group for the same context, vectorised.

        This is the edge's hot path: one home page picks an artwork for each of hundreds of titles,
        and one numpy pass over all their arms costs far less than hundreds of small ones.
        """
        flat, sizes, starts, seg = self._groups(groups)
        x = self._check_context(context)
        eps = self.epsilon
        mean, std = self._posterior(x, flat)
        greedy, picks = self._greedy(mean, std, starts, seg)
        explore = self._rng.random(len(sizes)) < eps
        uniform = starts + np.minimum((self._rng.random(len(sizes)) * sizes).astype(np.int64), sizes - 1)
        chosen = np.where(explore, uniform, picks)
        props = (1 - eps) * greedy[chosen] + eps / sizes
        return [(flat[i], float(p)) for i, p in zip(chosen.tolist(), props.tolist(), strict=True)]

    def update(self, context: FloatArray, arm: str, reward: float) -> None:
        x = self._check_context(context)
        if not (isinstance(reward, int | float) and math.isfinite(reward)):
            raise BanditError(f"reward must be a finite number, not {reward!r}")
        i = self._arm(arm)
        a_inv = self._a_inv[i]
        ax = a_inv @ x
        self._a_inv[i] = a_inv - np.outer(ax, ax) / (1.0 + x @ ax)
        self._b[i] += reward * x
        self._theta[i] = self._a_inv[i] @ self._b[i]
        self._n[i] += 1
        self.updates += 1

    # --- persistence ------------------------------------------------------------------------------

    def save(self, path: Path) -> None:
        """Write an ``.npz`` (no pickle): arrays plus a JSON header with the settings and RNG state."""
        header = {"format": _FORMAT, "kind": self.kind, "dim": self.dim, "alpha": self.alpha, "ridge": self.ridge,
                  "epsilon": self.epsilon0, "epsilon_decay": self.epsilon_decay, "min_epsilon": self.min_epsilon,
                  "mc_draws": self.mc_draws, "updates": self.updates,
                  "rng": self._rng.bit_generator.state}
        tmp = path.with_name(path.name + ".tmp.npz")
        np.savez(tmp, header=np.array(json.dumps(header)), arms=np.array(self.arms, dtype=np.str_),
                 a_inv=self._a_inv, b=self._b, n=self._n)
        tmp.replace(path)

    @staticmethod
    def load(path: Path) -> LinearBandit:
        try:
            with np.load(path, allow_pickle=False) as npz:
                header = json.loads(str(npz["header"]))
                arms = [str(a) for a in npz["arms"]]
                a_inv, b, n = npz["a_inv"], npz["b"], npz["n"]
        except (OSError, ValueError, KeyError) as exc:
            raise BanditError(f"{path}: not a saved bandit: {str(exc)[:200]}") from None
        try:
            cls = {"linucb": LinUCB, "thompson": LinearThompson}[header["kind"]]
            if header["format"] != _FORMAT:
                raise BanditError(f"{path}: format {header['format']} is not supported")
            bandit = cls(int(header["dim"]), alpha=header["alpha"], ridge=header["ridge"],
                         epsilon=header["epsilon"], epsilon_decay=header["epsilon_decay"],
                         min_epsilon=header["min_epsilon"], mc_draws=int(header["mc_draws"]))
            k, d = len(arms), bandit.dim
            if a_inv.shape != (k, d, d) or b.shape != (k, d) or n.shape != (k,) or len(set(arms)) != k:
                raise BanditError(f"{path}: arrays do not match {k} arms of dimension {d}")
            if not (np.all(np.isfinite(a_inv)) and np.all(np.isfinite(b))):
                raise BanditError(f"{path}: non-finite parameters")
            bandit._rng.bit_generator.state = header["rng"]
            bandit.updates = int(header["updates"])
        except (KeyError, TypeError, ValueError) as exc:
            raise BanditError(f"{path}: bad header: {str(exc)[:200]}") from None
        bandit._index = {a: i for i, a in enumerate(arms)}
        bandit._a_inv, bandit._b, bandit._n = a_inv.astype(np.float64), b.astype(np.float64), n.astype(np.int64)
        bandit._theta = np.einsum("kij,kj->ki", bandit._a_inv, bandit._b)
        return bandit


class LinUCB(LinearBandit):
    """Disjoint LinUCB (Li et al. 2010) behind an ε-greedy wrapper; ``alpha=0`` makes it greedy."""

    kind = "linucb"

    def _greedy(self, mean: FloatArray, std: FloatArray, starts: IntArray,
                seg: IntArray) -> tuple[FloatArray, IntArray]:
        ucb = mean + self.alpha * std
        tied = ucb >= np.maximum.reduceat(ucb, starts)[seg] - 1e-12
        probs: FloatArray = tied / np.add.reduceat(tied.astype(np.float64), starts)[seg]
        # Ties are broken uniformly: the largest random key among the tied arms of each group.
        key = np.where(tied, 1.0 + self._rng.random(len(ucb)), 0.0)
        return probs, _first_per_group(key >= np.maximum.reduceat(key, starts)[seg], seg)


class LinearThompson(LinearBandit):
    """Linear Thompson sampling with posterior scale ``alpha`` (v), behind the same ε floor."""

    kind = "thompson"

    def _greedy(self, mean: FloatArray, std: FloatArray, starts: IntArray,
                seg: IntArray) -> tuple[FloatArray, IntArray]:
        # Arms along axis 0: reduceat over contiguous rows is several times faster than over columns.
        draws = self._rng.standard_normal((len(mean), self.mc_draws))
        scores = mean[:, None] + (self.alpha * std)[:, None] * draws
        wins = scores >= np.maximum.reduceat(scores, starts, axis=0)[seg]
        probs: FloatArray = np.count_nonzero(wins, axis=1) / self.mc_draws
        # Ties between continuous draws have probability zero, except between identical prior arms'
        # means when alpha is 0: renormalise so each group still sums to one.
        probs = probs / np.add.reduceat(probs, starts)[seg]
        return probs, _first_per_group(wins[:, 0], seg)


def _first_per_group(mask: np.ndarray[Any, np.dtype[np.bool_]], seg: IntArray) -> IntArray:
    hits = np.flatnonzero(mask)
    _, first = np.unique(seg[hits], return_index=True)
    out: IntArray = hits[first]
    return out


class Uniform:
    """The reference policy: every arm equally likely (and the ideal logging policy for replay)."""

    def __init__(self, seed: int = 0) -> None:
        self._rng = np.random.default_rng(seed)

    def probabilities(self, context: FloatArray, arms: Sequence[str]) -> FloatArray:
        _check_arms(arms)
        return np.full(len(arms), 1 / len(arms))

    def choose(self, context: FloatArray, arms: Sequence[str]) -> tuple[str, float]:
        _check_arms(arms)
        return arms[int(self._rng.integers(len(arms)))], 1 / len(arms)

    def choose_many(self, context: FloatArray, groups: Sequence[Sequence[str]]) -> list[tuple[str, float]]:
        return [self.choose(context, arms) for arms in groups]

    def update(self, context: FloatArray, arm: str, reward: float) -> None:
        """Uniform never learns."""
