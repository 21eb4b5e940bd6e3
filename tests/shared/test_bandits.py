"""Contextual bandits: a simulated artwork environment with a known best arm per context."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from shared.bandits import (
    MAX_ARMS,
    BanditError,
    ContextEncoder,
    FloatArray,
    LinearBandit,
    LinearThompson,
    LinUCB,
    Policy,
    Uniform,
)

GENRES = ["drama", "comedy", "action", "docs"]
DEVICES = ["tv", "phone", "web"]
ARMS = [f"art-{g}" for g in GENRES] + ["art-generic"]
ENC = ContextEncoder(GENRES, DEVICES)


def draw_context(rng: np.random.Generator) -> tuple[FloatArray, FloatArray]:
    """A profile with one dominant genre; the matching artwork is best, except on TVs, where the
    generic key art wins for profiles with a weak dominant taste.  Returns (context, P(play | arm))."""
    affinities = {g: float(rng.uniform(0, 0.3)) for g in GENRES}
    affinities[GENRES[int(rng.integers(len(GENRES)))]] = float(rng.uniform(0.6, 1.0))
    device = DEVICES[int(rng.integers(len(DEVICES)))]
    p = np.array([0.05 + 0.5 * affinities[g] for g in GENRES] + [0.2 + 0.3 * (device == "tv")])
    return ENC.encode(affinities, device, float(rng.uniform(0, 24))), p


def cumulative_regret(policy: Policy, horizon: int, seed: int) -> FloatArray:
    rng = np.random.default_rng(seed)
    regret = np.zeros(horizon)
    for t in range(horizon):
        x, p = draw_context(rng)
        arm, propensity = policy.choose(x, ARMS)
        assert 0 < propensity <= 1
        j = ARMS.index(arm)
        policy.update(x, arm, float(rng.random() < p[j]))
        regret[t] = p.max() - p[j]
    return np.cumsum(regret)


def test_regret_is_sublinear_and_beats_uniform_and_greedy() -> None:
    horizon = 3000
    curves = {
        "linucb": cumulative_regret(LinUCB(ENC.dim, alpha=0.5, seed=1), horizon, seed=11),
        "thompson": cumulative_regret(LinearThompson(ENC.dim, alpha=0.3, mc_draws=64, seed=1), horizon, seed=11),
        "greedy": cumulative_regret(LinUCB(ENC.dim, alpha=0.0, epsilon=0.0, seed=1), horizon, seed=11),
        "uniform": cumulative_regret(Uniform(seed=1), horizon, seed=11),
    }
    half = horizon // 2
    for name in ("linucb", "thompson"):
        r = curves[name]
        first, second = r[half - 1], r[-1] - r[half - 1]
        assert second < 0.5 * first, f"{name}: regret {first:.0f} then {second:.0f} is not sublinear"
        slope = np.polyfit(np.log([300, 1000, 3000]), np.log(r[[299, 999, 2999]]), 1)[0]
        assert slope < 0.8, f"{name}: log-log slope {slope:.2f}"
        assert r[-1] < 0.6 * curves["greedy"][-1], f"{name} does not beat greedy"
        assert r[-1] < 0.3 * curves["uniform"][-1], f"{name} does not beat uniform"
    # Uniform's regret is linear: the reference really is the bad one.
    u = curves["uniform"]
    assert 0.8 < (u[-1] - u[half - 1]) / u[half - 1] < 1.25


def test_linucb_propensities_are_exact_and_match_choice_frequencies() -> None:
    rng = np.random.default_rng(3)
    bandit = LinUCB(ENC.dim, alpha=0.5, epsilon=0.2, epsilon_decay=1e12, seed=4)
    for _ in range(200):
        x, p = draw_context(rng)
        j = int(rng.integers(len(ARMS)))
        bandit.update(x, ARMS[j], float(rng.random() < p[j]))
    x, _ = draw_context(rng)
    probs = bandit.probabilities(x, ARMS)
    assert probs.sum() == pytest.approx(1) and probs.min() == pytest.approx(0.2 / len(ARMS))
    counts = dict.fromkeys(ARMS, 0)
    for _ in range(4000):
        arm, propensity = bandit.choose(x, ARMS)
        assert propensity == pytest.approx(probs[ARMS.index(arm)])
        counts[arm] += 1
    freq = np.array([counts[a] for a in ARMS]) / 4000
    np.testing.assert_allclose(freq, probs, atol=0.03)


def test_thompson_propensities_estimate_choice_frequencies() -> None:
    rng = np.random.default_rng(5)
    bandit = LinearThompson(ENC.dim, alpha=1.0, epsilon=0.1, epsilon_decay=1e12, mc_draws=2000, seed=6)
    for _ in range(60):  # a little data: the posterior is still wide, so several arms have real chances
        x, p = draw_context(rng)
        j = int(rng.integers(len(ARMS)))
        bandit.update(x, ARMS[j], float(rng.random() < p[j]))
    x, _ = draw_context(rng)
    probs = bandit.probabilities(x, ARMS)
    assert probs.min() >= 0.1 / len(ARMS) - 1e-12 and probs.sum() == pytest.approx(1)
    assert (probs > 0.1).sum() >= 2, "the test needs a posterior with more than one plausible arm"
    chosen = [bandit.choose(x, ARMS) for _ in range(3000)]
    freq = np.array([sum(a == arm for a, _ in chosen) for arm in ARMS]) / len(chosen)
    np.testing.assert_allclose(freq, probs, atol=0.04)
    for arm, propensity in chosen[:200]:
        assert propensity == pytest.approx(probs[ARMS.index(arm)], abs=0.05)


def test_unseen_arms_and_new_arms_are_welcome() -> None:
    bandit = LinUCB(ENC.dim, alpha=1.0, epsilon=0.0)
    x = ENC.encode({"drama": 1.0}, "tv", 20)
    for _ in range(30):
        bandit.update(x, "old", 0.0)
    arm, propensity = bandit.choose(x, ["old", "brand-new"])
    assert (arm, propensity) == ("brand-new", 1.0), "an untried arm is optimistic under LinUCB"
    assert bandit.arms == ["old"]


@pytest.mark.parametrize("cls", [LinUCB, LinearThompson])
def test_save_and_load_round_trip_without_pickle(tmp_path: Path, cls: type[LinearBandit]) -> None:
    rng = np.random.default_rng(8)
    bandit = cls(ENC.dim, alpha=0.4, epsilon=0.1, seed=9)
    for _ in range(100):
        x, p = draw_context(rng)
        arm, _ = bandit.choose(x, ARMS)
        bandit.update(x, arm, float(rng.random() < p[ARMS.index(arm)]))
    bandit.save(tmp_path / "b.npz")
    loaded = LinearBandit.load(tmp_path / "b.npz")
    assert type(loaded) is cls and loaded.arms == bandit.arms and loaded.updates == bandit.updates
    contexts = [draw_context(rng)[0] for _ in range(20)]
    assert [bandit.choose(x, ARMS) for x in contexts] == [loaded.choose(x, ARMS) for x in contexts]
    with np.load(tmp_path / "b.npz", allow_pickle=False) as npz:
        assert all(npz[k].dtype != object for k in npz.files)


def test_corrupt_or_hostile_saves_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "b.npz"
    path.write_bytes(b"not a zip")
    with pytest.raises(BanditError, match="not a saved bandit"):
        LinearBandit.load(path)
    np.savez(path, header=np.array([{"kind": "linucb"}], dtype=object))  # needs pickle to read
    with pytest.raises(BanditError, match="not a saved bandit"):
        LinearBandit.load(path)
    good = LinUCB(3)
    good.update(np.ones(3), "a", 1.0)
    good.save(path)
    with np.load(path) as npz:
        arrays = {k: npz[k] for k in npz.files}
    header = json.loads(str(arrays["header"]))
    cases: list[tuple[dict[str, object], str]] = [
        ({"a_inv": np.zeros((2, 3, 3))}, "do not match"),
        ({"b": np.full((1, 3), np.nan)}, "non-finite"),
        ({"header": np.array(json.dumps({**header, "kind": "os.system"}))}, "bad header"),
        ({"header": np.array(json.dumps({**header, "format": 99}))}, "format 99"),
        ({"header": np.array(json.dumps({**header, "dim": 10_000}))}, "dimension"),
        ({"header": np.array("{")}, "not a saved bandit"),
    ]
    for change, match in cases:
        np.savez(path, **{**arrays, **change})
        with pytest.raises(BanditError, match=match):
            LinearBandit.load(path)


def test_bad_inputs_are_refused() -> None:
    bandit = LinUCB(ENC.dim)
    x = ENC.encode({}, "tv", 0)
    with pytest.raises(BanditError, match="no arms"):
        bandit.choose(x, [])
    with pytest.raises(BanditError, match="unique"):
        bandit.choose(x, ["a", "a"])
    with pytest.raises(BanditError, match="at most"):
        bandit.choose(x, [str(i) for i in range(MAX_ARMS + 1)])
    with pytest.raises(BanditError, match="finite"):
        bandit.choose(np.full(ENC.dim, np.nan), ["a"])
    with pytest.raises(BanditError, match="finite"):
        bandit.choose(np.ones(ENC.dim + 1), ["a"])
    with pytest.raises(BanditError, match="reward"):
        bandit.update(x, "a", float("inf"))
    with pytest.raises(BanditError, match="arm ids"):
        bandit.update(x, "a" * 1000, 1.0)
    with pytest.raises(BanditError, match="hour"):
        ENC.encode({}, "tv", 24)
    with pytest.raises(BanditError, match="affinity"):
        ENC.encode({"drama": float("nan")}, "tv", 1)
    with pytest.raises(BanditError):
        LinUCB(ENC.dim, epsilon=1.5)
    with pytest.raises(BanditError):
        LinUCB(0)
    with pytest.raises(BanditError):
        LinearThompson(ENC.dim, mc_draws=0)


def test_encoder_layout() -> None:
    late, early, noon = (ENC.encode({"drama": 2.0, "unknown": 1.0}, d, h) for d, h in
                         (("tv", 23.5), ("tv", 0.5), ("fridge", 12)))
    assert late[1] == 1.0, "affinities are clipped to [0, 1]"
    assert np.linalg.norm(late[-2:] - early[-2:]) < np.linalg.norm(late[-2:] - noon[-2:])
    assert noon[1 + len(GENRES) + len(DEVICES)] == 1.0, "unknown devices share the 'other' slot"


def test_epsilon_decays_to_its_floor() -> None:
    bandit = LinUCB(2, epsilon=0.2, epsilon_decay=1, min_epsilon=0.01)
    assert bandit.epsilon == 0.2
    for _ in range(1000):
        bandit.update(np.ones(2), "a", 0.0)
    assert bandit.epsilon == 0.01


@pytest.mark.parametrize("cls", [LinUCB, LinearThompson])
def test_choose_many_matches_per_group_probabilities(cls: type[LinearBandit]) -> None:
    """The batched path the edge uses for a whole page: each group is its own honest choice."""
    rng = np.random.default_rng(12)
    bandit = cls(ENC.dim, alpha=0.5, epsilon=0.2, epsilon_decay=1e12, mc_draws=4000, seed=13)
    for _ in range(300):
        x, p = draw_context(rng)
        j = int(rng.integers(len(ARMS)))
        bandit.update(x, ARMS[j], float(rng.random() < p[j]))
    groups = [ARMS, ARMS[:2], ["art-docs", "never-seen"], ["art-generic"]]
    x, _ = draw_context(rng)
    probs = [bandit.probabilities(x, g) for g in groups]
    counts = [dict.fromkeys(g, 0) for g in groups]
    rounds = 2000
    for _ in range(rounds):
        picks = bandit.choose_many(x, groups)
        assert len(picks) == len(groups)
        for g, pr, cnt, (arm, propensity) in zip(groups, probs, counts, picks, strict=True):
            assert arm in g
            assert propensity == pytest.approx(pr[g.index(arm)], abs=0.03 if cls is LinearThompson else 1e-9)
            cnt[arm] += 1
    for g, pr, cnt in zip(groups, probs, counts, strict=True):
        np.testing.assert_allclose([cnt[a] / rounds for a in g], pr, atol=0.04)
    assert counts[3] == {"art-generic": rounds}
    picks = Uniform(seed=1).choose_many(x, groups)
    assert [p for _, p in picks] == [1 / len(g) for g in groups]
    with pytest.raises(BanditError, match="groups"):
        bandit.choose_many(x, [])
    with pytest.raises(BanditError, match="no arms"):
        bandit.choose_many(x, [ARMS, []])
    with pytest.raises(BanditError, match="unique"):
        bandit.choose_many(x, [ARMS, ["a", "a"]])
