"""Off-policy estimators on a simulated environment whose true policy values are known exactly."""

from __future__ import annotations

import numpy as np
import pytest

from control import ope
from control.ope import Estimate, LoggedData, OpeError
from shared.bandits import LinUCB, Uniform

K = 4
# Six context types with 3 features each: the linear reward model is deliberately misspecified.
FEATURES = np.array([[0.1, 0.9, 0.0], [0.8, 0.2, 0.5], [0.4, 0.4, 1.0],
                     [0.9, 0.9, 0.1], [0.0, 0.3, 0.7], [0.6, 0.1, 0.2]])
P_CONTEXT = np.array([0.25, 0.2, 0.15, 0.15, 0.15, 0.1])
MU = np.array([[0.10, 0.30, 0.05, 0.20], [0.40, 0.10, 0.20, 0.05], [0.05, 0.05, 0.50, 0.10],
               [0.30, 0.35, 0.10, 0.15], [0.20, 0.05, 0.10, 0.45], [0.15, 0.25, 0.30, 0.10]])
# Logging: a skewed, stochastic policy with full support (smallest propensity 0.05).
LOGGING = np.array([[0.55, 0.2, 0.2, 0.05], [0.1, 0.6, 0.2, 0.1], [0.3, 0.3, 0.3, 0.1],
                    [0.05, 0.15, 0.4, 0.4], [0.4, 0.4, 0.1, 0.1], [0.25, 0.25, 0.25, 0.25]])
TARGET = np.eye(K)[MU.argmax(axis=1)] * 0.85 + 0.15 / K  # near-greedy on the true rewards
UNIFORM = np.full((6, K), 1 / K)


def true_value(policy: np.ndarray) -> float:
    return float(P_CONTEXT @ (policy * MU).sum(axis=1))


def simulate(n: int, logging: np.ndarray, seed: int) -> tuple[LoggedData, np.ndarray]:
    rng = np.random.default_rng(seed)
    ctx = rng.choice(len(P_CONTEXT), size=n, p=P_CONTEXT)
    u = rng.random((n, 1))
    actions = np.minimum((np.cumsum(logging[ctx], axis=1) < u).sum(axis=1), K - 1)
    rewards = (rng.random(n) < MU[ctx, actions]).astype(float)
    data = LoggedData.from_arrays(FEATURES[ctx], actions, logging[ctx, actions], rewards, K)
    return data, ctx


def test_known_values_differ_so_the_test_has_teeth() -> None:
    assert true_value(TARGET) - true_value(LOGGING) > 0.1


@pytest.mark.parametrize("estimator", ["ips", "snips", "dr"])
def test_intervals_cover_the_true_value_about_95_percent_of_the_time(estimator: str) -> None:
    truth, wrong = true_value(TARGET), true_value(LOGGING)
    fn = {"ips": ope.ips, "snips": ope.snips, "dr": ope.doubly_robust}[estimator]
    hits = excluded_wrong = 0
    reps = 300
    for seed in range(reps):
        data, ctx = simulate(1500, LOGGING, seed)
        est = fn(data, TARGET[ctx])
        hits += est.covers(truth)
        excluded_wrong += not est.covers(wrong)
    coverage = hits / reps
    assert 0.90 <= coverage <= 0.99, f"{estimator}: coverage {coverage:.3f}"
    assert excluded_wrong / reps > 0.95, f"{estimator}: intervals too wide to tell the policies apart"


def test_replay_covers_under_uniform_logging() -> None:
    truth = true_value(TARGET)
    reps = 300
    hits = 0
    for seed in range(reps):
        data, ctx = simulate(2000, UNIFORM, seed)
        # The replay sampler gets its own seed: sharing the simulator's would correlate the two.
        hits += ope.replay(data, TARGET[ctx], seed=10_000 + seed).covers(truth)
    assert 0.90 <= hits / reps <= 0.99


def test_dr_is_tighter_than_ips_and_bootstrap_agrees_with_clt() -> None:
    data, ctx = simulate(4000, LOGGING, 123)
    est = {e.estimator: e for e in ope.evaluate(data, TARGET[ctx])}
    assert set(est) == {"ips", "snips", "dr", "replay"}
    width = {k: e.high - e.low for k, e in est.items()}
    assert width["dr"] < width["ips"]
    assert est["ips"].ess < 4000
    boots = {e.estimator: e for e in ope.evaluate(data, TARGET[ctx], ci="bootstrap")}
    for name in ("ips", "snips", "dr"):
        boot = boots[name]
        assert boot.value == pytest.approx(est[name].value)
        assert boot.high - boot.low == pytest.approx(width[name], rel=0.2)


def test_dr_survives_a_bad_reward_model_and_evaluates_a_bandit_policy() -> None:
    data, ctx = simulate(3000, LOGGING, 7)
    nonsense = np.full((3000, K), 0.9)
    est = ope.doubly_robust(data, TARGET[ctx], reward_model=nonsense)
    assert est.covers(true_value(TARGET)), "DR stays unbiased when the propensities are right"
    # A real policy object: LinUCB trained on the logs, evaluated on them.
    bandit = LinUCB(3, alpha=0.0, epsilon=0.1, epsilon_decay=1e12)
    arms = [str(a) for a in range(K)]
    for x, a, r in zip(data.contexts[:1000], data.actions[:1000], data.rewards[:1000], strict=True):
        bandit.update(x, str(a), float(r))
    target = ope.policy_probabilities(bandit, data.contexts, arms)
    assert target.shape == (3000, K)
    per_type = np.stack([bandit.probabilities(f, arms) for f in FEATURES])
    assert ope.doubly_robust(data, target).covers(true_value(per_type))
    uniform = ope.policy_probabilities(Uniform(), data.contexts, arms)
    assert ope.ips(data, uniform).covers(true_value(UNIFORM))


def test_malformed_logs_and_targets_are_refused() -> None:
    data, ctx = simulate(100, LOGGING, 0)
    x, a, p, r = data.contexts, data.actions, data.propensities, data.rewards
    bad_logs = [
        (x, a, np.where(np.arange(100) == 3, 0.0, p), r, "propensities"),
        (x, a, p * 2, r, "propensities"),
        (x, a + 10, p, r, "actions must be in"),
        (x, a, p, np.where(np.arange(100) == 5, np.nan, r), "rewards must be finite"),
        (x[:50], a, p, r, "contexts"),
        (x, a, p[:50], r, "same length"),
        (x[:1], a[:1], p[:1], r[:1], "between 2"),
        (x, a, [["x"]] * 100, r, "not numeric"),
    ]
    for cx, ca, cp, cr, match in bad_logs:
        with pytest.raises(OpeError, match=match):
            LoggedData.from_arrays(cx, ca, cp, cr, K)
    for target, match in [(TARGET[ctx][:, :3], "shape"), (TARGET[ctx] * 2, "sum to 1"),
                          (np.full((100, K), np.nan), "finite")]:
        with pytest.raises(OpeError, match=match):
            ope.ips(data, target)
    never = np.zeros((100, K))
    never[np.arange(100), (data.actions + 1) % K] = 1.0
    with pytest.raises(OpeError, match="SNIPS is undefined"):
        ope.snips(data, never)
    with pytest.raises(OpeError, match="replay needs more"):
        ope.replay(data, never)


def test_estimate_covers() -> None:
    e = Estimate("ips", 0.5, 0.4, 0.6, 10, 10.0)
    assert e.covers(0.45) and not e.covers(0.7)


def test_join_rewards_by_impression_and_slot() -> None:
    arms = ["art-a", "art-b"]
    choices = [
        ope.Choice("imp1", "t1", 100.0, "art-a", 0.5, (1.0, 0.0)),
        ope.Choice("imp1", "t2", 100.0, "art-b", 0.25, (1.0, 0.0)),
        ope.Choice("imp2", "t1", 200.0, "art-b", 0.75, (0.0, 1.0)),
        ope.Choice("imp2", "t1", 200.0, "art-b", 0.75, (0.0, 1.0)),  # re-sent
    ]
    plays = [
        ope.Play("imp1", "t2", 150.0),
        ope.Play("imp1", "t2", 160.0),  # a second play of the same slot still counts once
        ope.Play("imp2", "t1", 200.0 + 7200),  # outside the window
        ope.Play("imp9", "t1", 300.0),  # no such impression
    ]
    joined = ope.join_rewards(choices, plays, arms, window_s=3600)
    assert joined.data.rewards.tolist() == [0.0, 1.0, 0.0]
    assert joined.data.actions.tolist() == [0, 1, 1]
    assert joined.data.propensities.tolist() == [0.5, 0.25, 0.75]
    assert (joined.unmatched_plays, joined.duplicate_choices) == (2, 1)
    with pytest.raises(OpeError, match="unknown action"):
        ope.join_rewards([ope.Choice("i", "t", 0.0, "art-z", 0.5, (1.0,))] * 2, [], arms)
    with pytest.raises(OpeError, match="different lengths"):
        ope.join_rewards([choices[0], ope.Choice("i", "t", 0.0, "art-a", 0.5, (1.0,))], [], arms)
    with pytest.raises(OpeError, match="propensities"):
        ope.join_rewards([choices[0], ope.Choice("i", "t", 0.0, "art-a", 0.0, (1.0, 0.0))], [], arms)
    with pytest.raises(OpeError, match="window"):
        ope.join_rewards(choices, plays, arms, window_s=float("nan"))
