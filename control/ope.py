"""Off-policy evaluation: what a new policy would have earned, estimated from logs of the current one.

The edge logs, for every bandit choice, the context, the action, its propensity under the logging
policy and (after joining plays to impressions) the reward.  ``nearcast model eval --policy`` feeds
those logs here with the new policy's action probabilities for the same contexts, so a policy can be
judged before it serves a single viewer.

Four estimators, because each fails differently:

* **replay** (Li et al. 2011) keeps the events where the target policy, sampled, agrees with the
  logged action.  Unbiased only when logging was uniform; simple and easy to explain.
* **IPS** reweights every reward by π(a|x)/p.  Unbiased for any logging policy with full support, but
  its variance explodes with small propensities.
* **SNIPS** divides by the sum of weights instead of n: slightly biased, much steadier.
* **Doubly robust** adds a reward model's prediction and IPS-corrects its residual: unbiased if either
  the propensities or the model are right, and usually the tightest.  The model is a ridge regression
  per action, cross-fitted (each event is predicted by a model that never saw it), so its own
  overfitting does not bias the estimate.

Every estimate carries a 95 % confidence interval: by the central limit theorem on the per-event terms
(delta method for SNIPS), or by a seeded bootstrap over events.  The effective sample size of the
weights is reported too: an interval from twenty effective events deserves little trust.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from shared.bandits import FloatArray, Policy
from shared.errors import InvalidInput

IntArray = np.ndarray[Any, np.dtype[np.int64]]
CiMethod = Literal["clt", "bootstrap"]

MAX_EVENTS = 50_000_000
Z95 = 1.959963984540054


class OpeError(InvalidInput):
    """Logged data or target probabilities are malformed or inconsistent."""


@dataclass(frozen=True)
class LoggedData:
    """Bandit logs as aligned arrays: event i showed ``actions[i]`` with probability ``propensities[i]``."""

    contexts: FloatArray  # (n, d)
    actions: IntArray  # (n,) indices into the action set
    propensities: FloatArray  # (n,) in (0, 1]
    rewards: FloatArray  # (n,)
    n_actions: int

    def __post_init__(self) -> None:
        n = len(self.actions)
        if not 2 <= n <= MAX_EVENTS:
            raise OpeError(f"need between 2 and {MAX_EVENTS} logged events, got {n}")
        if self.contexts.ndim != 2 or self.contexts.shape[0] != n:
            raise OpeError(f"contexts must be an (n, d) array with n={n}, got shape {self.contexts.shape}")
        if self.propensities.shape != (n,) or self.rewards.shape != (n,) or self.actions.shape != (n,):
            raise OpeError("actions, propensities and rewards must be 1-D arrays of the same length")
        if not 1 <= self.n_actions <= 100_000:
            raise OpeError("n_actions must be in 1..100000")
        if self.actions.min() < 0 or self.actions.max() >= self.n_actions:
            raise OpeError(f"actions must be in 0..{self.n_actions - 1}")
        for name in ("contexts", "propensities", "rewards"):
            if not np.all(np.isfinite(getattr(self, name))):
                raise OpeError(f"{name} must be finite")
        if self.propensities.min() <= 0 or self.propensities.max() > 1:
            raise OpeError("propensities must be in (0, 1]: zero-propensity events cannot be reweighted")

    @classmethod
    def from_arrays(cls, contexts: Any, actions: Any, propensities: Any, rewards: Any, n_actions: int) -> LoggedData:
        try:
            return cls(np.asarray(contexts, dtype=np.float64), np.asarray(actions, dtype=np.int64),
                       np.asarray(propensities, dtype=np.float64), np.asarray(rewards, dtype=np.float64),
                       int(n_actions))
        except (TypeError, ValueError) as exc:
            raise OpeError(f"logged data is not numeric: {str(exc)[:200]}") from None


@dataclass(frozen=True)
class Estimate:
    """A policy value with its 95 % interval; ``ess`` is the effective sample size behind it."""

    estimator: str
    value: float
    low: float
    high: float
    n: int
    ess: float

    def covers(self, truth: float) -> bool:
        return self.low <= truth <= self.high


@dataclass(frozen=True)
class Choice:
    """One logged bandit choice: the edge's impression id plus the slot (title) it filled."""

    impression_id: str
    item: str
    at: float
    action: str
    propensity: float
    context: tuple[float, ...]


@dataclass(frozen=True)
class Play:
    impression_id: str
    item: str
    at: float


@dataclass(frozen=True)
class Joined:
    data: LoggedData
    unmatched_plays: int  # plays naming no logged choice (or outside the window): a logging health signal
    duplicate_choices: int


def join_rewards(choices: Sequence[Choice], plays: Sequence[Play], arms: Sequence[str],
                 window_s: float = 3600.0) -> Joined:
    """Reward 1 for a choice followed by a play of the same slot within ``window_s``, else 0.

    Choices are keyed by (impression id, item), so re-sent events count once; a choice whose action
    is not in ``arms`` (a retired artwork) is refused rather than silently dropped.
    """
    if not (math.isfinite(window_s) and window_s > 0):
        raise OpeError("window must be finite and > 0")
    index = {a: i for i, a in enumerate(arms)}
    if len(index) != len(arms):
        raise OpeError("arms must be unique")
    by_key: dict[tuple[str, str], Choice] = {}
    duplicates = 0
    for c in choices:
        if c.action not in index:
            raise OpeError(f"choice {c.impression_id[:64]!r} took unknown action {c.action[:64]!r}")
        key = (c.impression_id, c.item)
        if key in by_key:
            duplicates += 1
            continue
        by_key[key] = c
    played: set[tuple[str, str]] = set()
    unmatched = 0
    for p in plays:
        hit = by_key.get((p.impression_id, p.item))
        if hit is None or not hit.at <= p.at <= hit.at + window_s:
            unmatched += 1
        else:
            played.add((p.impression_id, p.item))
    rows = list(by_key.values())
    dims = {len(c.context) for c in rows}
    if len(dims) > 1:
        raise OpeError(f"contexts have different lengths: {sorted(dims)[:5]}")
    data = LoggedData.from_arrays([c.context for c in rows], [index[c.action] for c in rows],
                                  [c.propensity for c in rows],
                                  [float((c.impression_id, c.item) in played) for c in rows], len(arms))
    return Joined(data, unmatched, duplicates)


def policy_probabilities(policy: Policy, contexts: FloatArray, arms: Sequence[str]) -> FloatArray:
    """π(a | x_i) for every logged context: the target-policy input of the estimators."""
    return np.stack([policy.probabilities(x, arms) for x in contexts])


def _check_target(data: LoggedData, target: FloatArray) -> FloatArray:
    t = np.asarray(target, dtype=np.float64)
    if t.shape != (len(data.actions), data.n_actions):
        raise OpeError(f"target probabilities must have shape {(len(data.actions), data.n_actions)}, got {t.shape}")
    if not np.all(np.isfinite(t)) or t.min() < 0 or not np.allclose(t.sum(axis=1), 1.0, atol=1e-6):
        raise OpeError("target probabilities must be finite, >= 0 and sum to 1 for every event")
    return t


def _weights(data: LoggedData, target: FloatArray) -> FloatArray:
    out: FloatArray = target[np.arange(len(data.actions)), data.actions] / data.propensities
    return out


def _ess(w: FloatArray) -> float:
    s2 = float(np.sum(w * w))
    return float(np.sum(w)) ** 2 / s2 if s2 > 0 else 0.0


def _mean_interval(terms: FloatArray, ci: CiMethod, n_boot: int, seed: int) -> tuple[float, float, float]:
    value = float(terms.mean())
    if ci == "bootstrap":
        rng = np.random.default_rng(seed)
        means = np.array([terms[rng.integers(0, len(terms), len(terms))].mean() for _ in range(n_boot)])
        low, high = np.quantile(means, [0.025, 0.975])
        return value, float(low), float(high)
    half = Z95 * float(terms.std(ddof=1)) / math.sqrt(len(terms))
    return value, value - half, value + half


def replay(data: LoggedData, target: FloatArray, seed: int = 0) -> Estimate:
    """Mean reward over events where an action sampled from the target matches the logged one."""
    t = _check_target(data, target)
    rng = np.random.default_rng(seed)
    cdf = np.cumsum(t, axis=1)
    sampled = np.minimum((cdf < rng.random((len(t), 1))).sum(axis=1), data.n_actions - 1)
    matched = data.rewards[sampled == data.actions]
    if len(matched) < 2:
        raise OpeError(f"only {len(matched)} logged events match the target policy; replay needs more")
    value, low, high = _mean_interval(matched, "clt", 0, seed)
    return Estimate("replay", value, low, high, len(matched), float(len(matched)))


def ips(data: LoggedData, target: FloatArray, ci: CiMethod = "clt", n_boot: int = 500, seed: int = 0) -> Estimate:
    w = _weights(data, _check_target(data, target))
    value, low, high = _mean_interval(w * data.rewards, ci, n_boot, seed)
    return Estimate("ips", value, low, high, len(w), _ess(w))


def snips(data: LoggedData, target: FloatArray, ci: CiMethod = "clt", n_boot: int = 500, seed: int = 0) -> Estimate:
    w = _weights(data, _check_target(data, target))
    r = data.rewards
    if w.sum() <= 0:
        raise OpeError("the target policy never takes a logged action: SNIPS is undefined")
    value = float(np.sum(w * r) / np.sum(w))
    if ci == "bootstrap":
        rng = np.random.default_rng(seed)
        idx = rng.integers(0, len(w), (n_boot, len(w)))
        ws = w[idx]
        sums = ws.sum(axis=1)
        boots = (ws * r[idx]).sum(axis=1)[sums > 0] / sums[sums > 0]
        low, high = (float(q) for q in np.quantile(boots, [0.025, 0.975]))
    else:
        # Delta method for a ratio of means: Var ≈ E[w²(r - V)²] / (E[w]² n).
        se = math.sqrt(float(np.mean(w * w * (r - value) ** 2)) / len(w)) / float(np.mean(w))
        low, high = value - Z95 * se, value + Z95 * se
    return Estimate("snips", value, low, high, len(w), _ess(w))


def fit_reward_model(data: LoggedData, ridge: float = 1.0, folds: int = 2, seed: int = 0) -> FloatArray:
    """Cross-fitted predictions q̂(x_i, a) for every event and action, shape (n, n_actions).

    One ridge regression per action on [1, x]; an action with no training events predicts the
    training fold's mean reward.
    """
    if not (math.isfinite(ridge) and ridge > 0) or not 2 <= folds <= 20:
        raise OpeError("need ridge > 0 and 2..20 folds")
    n, d = data.contexts.shape
    x = np.hstack([np.ones((n, 1)), data.contexts])
    fold = np.random.default_rng(seed).permutation(n) % folds
    q = np.zeros((n, data.n_actions))
    reg = ridge * np.eye(d + 1)
    for f in range(folds):
        train, test = fold != f, fold == f
        fallback = float(data.rewards[train].mean()) if train.any() else 0.0
        for a in range(data.n_actions):
            sel = train & (data.actions == a)
            if not sel.any():
                q[test, a] = fallback
                continue
            xa = x[sel]
            theta = np.linalg.solve(xa.T @ xa + reg, xa.T @ data.rewards[sel])
            q[test, a] = x[test] @ theta
    return q


def doubly_robust(data: LoggedData, target: FloatArray, ci: CiMethod = "clt", n_boot: int = 500, seed: int = 0,
                  reward_model: FloatArray | None = None) -> Estimate:
    t = _check_target(data, target)
    q = fit_reward_model(data, seed=seed) if reward_model is None else np.asarray(reward_model, dtype=np.float64)
    if q.shape != t.shape or not np.all(np.isfinite(q)):
        raise OpeError(f"reward model predictions must be finite with shape {t.shape}")
    w = _weights(data, t)
    idx = np.arange(len(w))
    terms = (t * q).sum(axis=1) + w * (data.rewards - q[idx, data.actions])
    value, low, high = _mean_interval(terms, ci, n_boot, seed)
    return Estimate("dr", value, low, high, len(w), _ess(w))


def evaluate(data: LoggedData, target: FloatArray, ci: CiMethod = "clt", seed: int = 0) -> list[Estimate]:
    """All four estimates (replay last: it is the only one that may refuse for lack of matches)."""
    out = [ips(data, target, ci, seed=seed), snips(data, target, ci, seed=seed),
           doubly_robust(data, target, ci, seed=seed)]
    try:
        out.append(replay(data, target, seed))
    except OpeError:
        pass
    return out
