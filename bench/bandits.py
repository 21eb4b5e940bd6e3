"""Bandit benchmark: regret curves and off-policy estimates against known truth, plus decision cost.

The environment is the artwork problem in miniature: four genre-specific artworks and one generic key
art; a profile with a dominant genre plays the matching artwork most, except on TVs where the generic
art can win.  Play probabilities are known, so the regret of every choice and the true value of any
policy are exact.  References measured in the same run: uniform random (regret and per-decision time)
and greedy (what learning without exploration gets).

    .venv/bin/python bench/bandits.py [--horizon 5000] [--seeds 3] [--log-size 5000] [--titles 400]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import numpy as np

from control import ope
from shared.bandits import ContextEncoder, FloatArray, LinearThompson, LinUCB, Policy, Uniform

GENRES = ["drama", "comedy", "action", "docs"]
DEVICES = ["tv", "phone", "web"]
ARMS = [f"art-{g}" for g in GENRES] + ["art-generic"]
ENC = ContextEncoder(GENRES, DEVICES)


def draw(rng: np.random.Generator) -> tuple[FloatArray, FloatArray]:
    aff = {g: float(rng.uniform(0, 0.3)) for g in GENRES}
    aff[GENRES[int(rng.integers(len(GENRES)))]] = float(rng.uniform(0.6, 1.0))
    device = DEVICES[int(rng.integers(len(DEVICES)))]
    p = np.array([0.05 + 0.5 * aff[g] for g in GENRES] + [0.2 + 0.3 * (device == "tv")])
    return ENC.encode(aff, device, float(rng.uniform(0, 24))), p


POLICIES: dict[str, Callable[[int], Policy]] = {
    "linucb": lambda s: LinUCB(ENC.dim, alpha=0.5, seed=s),
    "thompson": lambda s: LinearThompson(ENC.dim, alpha=0.3, mc_draws=64, seed=s),
    "greedy": lambda s: LinUCB(ENC.dim, alpha=0.0, epsilon=0.0, seed=s),
    "uniform": lambda s: Uniform(seed=s),
}


def regret_curve(policy: Policy, horizon: int, seed: int) -> tuple[FloatArray, float]:
    rng = np.random.default_rng(seed)
    regret = np.zeros(horizon)
    spent = 0.0
    for t in range(horizon):
        x, p = draw(rng)
        t0 = time.perf_counter()
        arm, _ = policy.choose(x, ARMS)
        j = ARMS.index(arm)
        reward = float(rng.random() < p[j])
        policy.update(x, arm, reward)
        spent += time.perf_counter() - t0
        regret[t] = p.max() - p[j]
    return np.cumsum(regret), spent / horizon


def regret_table(horizon: int, seeds: int) -> None:
    checkpoints = [c for c in (100, 300, 1000, 3000, 10000, 30000) if c <= horizon] + [horizon]
    checkpoints = sorted(set(checkpoints))
    curves: dict[str, FloatArray] = {}
    cost: dict[str, float] = {}
    for name, make in POLICIES.items():
        runs = [regret_curve(make(s), horizon, 100 + s) for s in range(seeds)]
        curves[name] = np.mean([r for r, _ in runs], axis=0)
        cost[name] = float(np.mean([c for _, c in runs]))
    print(f"cumulative regret (mean of {seeds} seeds; expected plays lost vs the best artwork)")
    print(f"{'policy':<10}" + "".join(f"{c:>9}" for c in checkpoints) + f"{'vs uniform':>12}{'2nd/1st half':>14}"
          f"{'us/decision':>13}{'vs uniform':>12}")
    half = horizon // 2
    for name, r in curves.items():
        ratio = r[-1] / curves["uniform"][-1]
        halves = (r[-1] - r[half - 1]) / r[half - 1]
        print(f"{name:<10}" + "".join(f"{r[c - 1]:>9.1f}" for c in checkpoints) + f"{ratio:>12.3f}{halves:>14.2f}"
              f"{cost[name] * 1e6:>13.1f}{cost[name] / cost['uniform']:>12.1f}")
    print("(2nd/1st half ~1 means linear regret; well below 1 means the policy has learned)")


def log_events(logger: Policy, n: int, seed: int) -> tuple[ope.LoggedData, FloatArray]:
    """Log ``n`` choices of ``logger`` (learning online); returns the data and the true P(play) matrix."""
    rng = np.random.default_rng(seed)
    xs, actions, props, rewards, truth = [], [], [], [], []
    for _ in range(n):
        x, p = draw(rng)
        arm, prop = logger.choose(x, ARMS)
        j = ARMS.index(arm)
        r = float(rng.random() < p[j])
        logger.update(x, arm, r)
        xs.append(x)
        actions.append(j)
        props.append(prop)
        rewards.append(r)
        truth.append(p)
    return ope.LoggedData.from_arrays(xs, actions, props, rewards, len(ARMS)), np.array(truth)


def ope_table(log_size: int) -> None:
    target = LinUCB(ENC.dim, alpha=0.5, epsilon=0.1, epsilon_decay=1e12, seed=7)
    train = np.random.default_rng(1)
    for _ in range(2000):
        x, p = draw(train)
        arm, _ = target.choose(x, ARMS)
        target.update(x, arm, float(train.random() < p[ARMS.index(arm)]))
    # Freeze it: evaluation must not move the policy being evaluated.
    fresh = np.random.default_rng(2)
    contexts, probs = zip(*(draw(fresh) for _ in range(20_000)), strict=True)
    pi = ope.policy_probabilities(target, np.array(contexts), ARMS)
    truth = float(np.mean((pi * np.array(probs)).sum(axis=1)))
    print(f"\noff-policy estimates of a frozen LinUCB policy (true value {truth:.4f} plays per impression)")
    print(f"{'logging policy':<30}{'estimator':<10}{'estimate':>10}{'95% CI':>22}{'error':>9}{'ESS':>9}  covers")
    loggers: dict[str, Policy] = {
        "uniform": Uniform(seed=3),
        "thompson (eps 0.2, learns)": LinearThompson(ENC.dim, alpha=0.3, epsilon=0.2, min_epsilon=0.2, seed=3),
    }
    for name, logger in loggers.items():
        data, _ = log_events(logger, log_size, 4)
        target_probs = ope.policy_probabilities(target, data.contexts, ARMS)
        t0 = time.perf_counter()
        estimates = ope.evaluate(data, target_probs)
        elapsed = time.perf_counter() - t0
        for e in estimates:
            print(f"{name:<30}{e.estimator:<10}{e.value:>10.4f}   [{e.low:.4f}, {e.high:.4f}]"
                  f"{e.value - truth:>+9.4f}{e.ess:>9.0f}  {'yes' if e.covers(truth) else 'NO'}")
        print(f"{'':<30}(all estimators on {log_size} events: {elapsed * 1e3:.1f} ms)")
    print("replay is unbiased only under uniform logging; under the Thompson log it is shown for contrast")


def page_cost(titles: int, variants: int, repeats: int) -> None:
    """The edge's hot path: one artwork choice per title on a home page, batched vs one call per title."""
    rng = np.random.default_rng(9)
    groups = [[f"title{t}:art{v}" for v in range(variants)] for t in range(titles)]
    print(f"\npage decision cost: {titles} titles x {variants} artwork variants, median of {repeats} pages")
    print(f"{'policy':<10}{'batched ms':>12}{'per-title ms':>14}{'speed-up':>10}")
    for name in ("linucb", "thompson"):
        bandit = POLICIES[name](1)
        assert isinstance(bandit, LinUCB | LinearThompson)
        for g in groups:
            for arm in g:
                x, p = draw(rng)
                bandit.update(x, arm, float(rng.random() < p[0]))
        x, _ = draw(rng)
        batched, looped = [], []
        for _ in range(repeats):
            t0 = time.perf_counter()
            bandit.choose_many(x, groups)
            t1 = time.perf_counter()
            for g in groups:
                bandit.choose(x, g)
            t2 = time.perf_counter()
            batched.append(t1 - t0)
            looped.append(t2 - t1)
        b, lo = float(np.median(batched)), float(np.median(looped))
        print(f"{name:<10}{b * 1e3:>12.2f}{lo * 1e3:>14.2f}{lo / b:>10.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--horizon", type=int, default=5000)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--log-size", type=int, default=5000)
    parser.add_argument("--titles", type=int, default=400, help="titles per page for the decision cost")
    args = parser.parse_args()
    regret_table(args.horizon, args.seeds)
    page_cost(args.titles, 3, 15)
    ope_table(args.log_size)


if __name__ == "__main__":
    main()
