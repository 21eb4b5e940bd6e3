"""A/B experiments: stable assignment, SRM, error rates of the per-cell comparisons, interleaving."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from control import experiments as ex
from control.experiments import Cell, Experiment, ExperimentError, Exposure, ExposureTally, ProfileOutcome
from shared.errors import InvalidInput

EXP = Experiment("exp-artwork", "salt-2026-11", (Cell("control", 50, model_version="v1"),
                                                 Cell("treatment", 50, model_version="v2")))
PROFILES = [f"profile-{i}" for i in range(20_000)]


def test_assignment_is_stable_across_processes() -> None:
    here = [EXP.assign(p).name for p in PROFILES[:500]]
    code = ("import json; from control.experiments import Cell, Experiment; "
            "e = Experiment('exp-artwork', 'salt-2026-11', (Cell('control', 50), Cell('treatment', 50))); "
            "print(json.dumps([e.assign(f'profile-{i}').name for i in range(500)]))")
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True,
                         env={**os.environ, "PYTHONHASHSEED": "4242"})
    assert json.loads(out.stdout) == here


def test_allocation_shares_and_salt_independence() -> None:
    e = Experiment("e", "s1", (Cell("a", 70), Cell("b", 20), Cell("c", 10)))
    counts = {"a": 0, "b": 0, "c": 0}
    for p in PROFILES:
        counts[e.assign(p).name] += 1
    assert e.shares() == {"a": 0.7, "b": 0.2, "c": 0.1}
    assert not ex.srm_check(counts, e.shares()).flagged
    for name, share in e.shares().items():
        assert abs(counts[name] / len(PROFILES) - share) < 0.015
    other = Experiment("e", "s2", EXP.cells)
    agree = sum(EXP.assign(p).name == other.assign(p).name for p in PROFILES[:4000]) / 4000
    assert 0.45 < agree < 0.55, "a new salt must reshuffle profiles independently"


def test_injected_60_40_split_is_flagged_and_true_splits_are_not() -> None:
    assert ex.srm_check({"control": 1200, "treatment": 800}, EXP.shares()).flagged
    assert not ex.srm_check({"control": 1020, "treatment": 980}, EXP.shares()).flagged
    # Real assignment of fresh profile sets: with alpha = 0.001, false alarms must be rare.
    rng = np.random.default_rng(0)
    flagged = 0
    for _ in range(100):
        tally = ExposureTally(EXP)
        for i in rng.integers(0, 10**12, 1000):
            p = f"u{i}"
            tally.add(Exposure(EXP.id, EXP.assign(p).name, p, 0.0))
        flagged += ex.srm_check(tally.counts, EXP.shares()).flagged
    assert flagged <= 2


def test_exposure_tally_dedupes_and_refuses_wrong_cells() -> None:
    tally = ExposureTally(EXP)
    p = PROFILES[0]
    cell = EXP.assign(p).name
    assert tally.add(Exposure(EXP.id, cell, p, 1.0)) is True
    assert tally.add(Exposure(EXP.id, cell, p, 2.0)) is False
    assert tally.counts == {cell: 1}
    wrong = "treatment" if cell == "control" else "control"
    with pytest.raises(ExperimentError, match="assigned to"):
        tally.add(Exposure(EXP.id, wrong, p, 3.0))
    with pytest.raises(ExperimentError, match="not 'exp-artwork'"):
        tally.add(Exposure("other", cell, p, 3.0))


def simulate_cell(rng: np.random.Generator, n: int, play_rate: float) -> dict[str, np.ndarray]:
    """Profiles differ in taste (a Beta-distributed play propensity), so plays cluster by profile."""
    impressions = 1 + rng.poisson(9, n)
    propensity = rng.beta(play_rate * 4, (1 - play_rate) * 4, n)
    plays = rng.binomial(impressions, propensity)
    completions = rng.binomial(plays, 0.4)
    watch = np.where(plays > 0, rng.gamma(np.maximum(plays, 1), 1800), 0.0)  # a sum of exponential sessions
    return {"impressions": impressions.astype(float), "plays": plays.astype(float), "watch": watch,
            "completions": completions.astype(float)}


def play_rate_rejects(rng: np.random.Generator, treat_rate: float, naive: bool = False) -> bool:
    c, t = simulate_cell(rng, 1500, 0.10), simulate_cell(rng, 1500, treat_rate)
    if naive:  # impressions treated as independent Bernoulli trials: the mistake the delta method avoids
        stats_ = []
        for cell in (c, t):
            r = cell["plays"].sum() / cell["impressions"].sum()
            stats_.append(ex.Stat(r, math.sqrt(r * (1 - r) / cell["impressions"].sum()), len(cell["plays"])))
        return ex.compare_ratio("play_rate", "t", *stats_).significant
    cs, ts = ex.ratio_stat(c["plays"], c["impressions"]), ex.ratio_stat(t["plays"], t["impressions"])
    return ex.compare_ratio("play_rate", "t", cs, ts).significant


def test_null_effect_is_rejected_at_about_5_percent_and_planted_effect_is_found() -> None:
    rng = np.random.default_rng(2026)
    reps = 300
    false_positive = sum(play_rate_rejects(rng, 0.10) for _ in range(reps)) / reps
    power = sum(play_rate_rejects(rng, 0.12) for _ in range(reps)) / reps
    naive = sum(play_rate_rejects(rng, 0.10, naive=True) for _ in range(reps)) / reps
    assert 0.02 <= false_positive <= 0.085, f"false positive rate {false_positive:.3f} at alpha 0.05"
    assert power >= 0.8, f"power {power:.3f} for a +0.02 play-rate effect"
    assert naive > 0.15, "the naive per-impression test should be overconfident here"


def test_report_end_to_end_with_assignment() -> None:
    rng = np.random.default_rng(7)
    outcomes: list[ProfileOutcome] = []
    exposures = {"control": 0, "treatment": 0}
    for p in PROFILES[:3000]:
        cell = EXP.assign(p).name
        exposures[cell] += 1
        imps = int(1 + rng.poisson(9))
        plays = int(rng.binomial(imps, 0.2 if cell == "treatment" else 0.1))
        outcomes.append(ProfileOutcome(p, cell, imps, plays, float(rng.exponential(1800) * plays),
                                       int(rng.binomial(plays, 0.4))))
    rep = ex.report(EXP, outcomes, exposures)
    assert not rep.srm.flagged
    by = {c.metric: c for c in rep.comparisons}
    assert set(by) == set(ex.METRICS)
    assert by["play_rate"].significant and by["play_rate"].low > 0.05
    assert by["play_rate"].diff == pytest.approx(0.1, abs=0.02)
    assert not by["completion"].significant or by["completion"].p_value > 0.001
    assert by["watch_per_profile"].significant and by["watch_per_profile"].diff > 0
    assert rep.cells["treatment"]["play_rate"].n == exposures["treatment"]
    skewed = ex.report(EXP, outcomes, {"control": exposures["control"], "treatment": exposures["treatment"] // 2})
    assert skewed.srm.flagged


def test_delta_method_matches_the_bootstrap() -> None:
    rng = np.random.default_rng(11)
    cell = simulate_cell(rng, 400, 0.15)
    stat = ex.ratio_stat(cell["watch"], cell["impressions"])
    idx = rng.integers(0, 400, (2000, 400))
    boots = cell["watch"][idx].sum(axis=1) / cell["impressions"][idx].sum(axis=1)
    assert stat.se == pytest.approx(float(boots.std()), rel=0.15)


@pytest.mark.parametrize(("cells", "kwargs", "match"), [
    ((Cell("a", 1),), {}, "at least two"),
    ((Cell("a", 1), Cell("a", 1)), {}, "unique"),
    ((Cell("a", 1), Cell("b", 0)), {}, "weights"),
    ((Cell("a", 1), Cell("b", math.nan)), {}, "weights"),
    ((Cell("a", 1), Cell("b", 1e-9)), {}, "1/10000"),
    ((Cell("a", 1), Cell("b/../x", 1)), {}, "cell name"),
    ((Cell("a", 1), Cell("b", 1)), {"control": "z"}, "control cell"),
    ((Cell("a", 1), Cell("b", 1)), {"salt": ""}, "salt"),
    ((Cell("a", 1), Cell("b", 1)), {"id": "x/+"}, "experiment id"),
])
def test_bad_experiments_are_refused(cells: tuple[Cell, ...], kwargs: dict[str, str], match: str) -> None:
    args = {"id": "e", "salt": "s", **kwargs}
    with pytest.raises(ExperimentError if match not in ("cell name", "experiment id") else InvalidInput,
                       match=match):
        Experiment(args["id"], args["salt"], cells, args.get("control", ""))


def test_bad_profiles_and_outcomes_are_refused() -> None:
    odd = Experiment("e", "salt-\ud800", EXP.cells)  # lone surrogates arrive through JSON escapes
    assert odd.assign("profile-\udfff").name in ("control", "treatment")
    assert ex.team_draft(["a", "b"], ["b", "a"], 2, "imp-\ud800").items
    for bad in ("", "x" * 300, None, 5):
        with pytest.raises(ExperimentError, match="profile id"):
            EXP.assign(bad)  # type: ignore[arg-type]
    with pytest.raises(ExperimentError):
        ProfileOutcome("p", "control", 10, -1, 0.0, 0)
    with pytest.raises(ExperimentError):
        ProfileOutcome("p", "control", 10, 2, 0.0, 3)
    with pytest.raises(ExperimentError):
        ProfileOutcome("p", "control", 10, 2, math.inf, 0)
    with pytest.raises(ExperimentError, match="unknown cell"):
        ex.report(EXP, [ProfileOutcome("p", "ghost", 1, 0, 0.0, 0)], {})
    with pytest.raises(ExperimentError, match="unknown cells"):
        ex.srm_check({"ghost": 5}, EXP.shares())
    with pytest.raises(ExperimentError):
        ex.interleaving_test(["a", "c"])  # type: ignore[list-item]


def test_empty_and_degenerate_cells_do_not_crash() -> None:
    rep = ex.report(EXP, [], {})
    assert math.isnan(rep.cells["control"]["play_rate"].value) and not rep.srm.flagged
    same = [ProfileOutcome(f"p{i}", c, 10, 1, 100.0, 1) for i in range(5) for c in ("control", "treatment")]
    by = {c.metric: c for c in ex.report(EXP, same, {"control": 5, "treatment": 5}).comparisons}
    assert by["play_rate"].diff == 0 and not by["play_rate"].significant


# --- interleaving -------------------------------------------------------------------------------

rankings = st.lists(st.sampled_from([f"t{i}" for i in range(30)]), unique=True, max_size=25)


@settings(max_examples=200, deadline=None)
@given(a=rankings, b=rankings, length=st.integers(0, 30), key=st.text(max_size=10))
def test_team_draft_properties(a: list[str], b: list[str], length: int, key: str) -> None:
    il = ex.team_draft(a, b, length, key)
    assert len(il.items) == len(set(il.items)) == len(il.teams)
    assert len(il.items) == min(length, len(set(a) | set(b)))
    assert ex.team_draft(a, b, length, key) == il, "deterministic for a given key"
    for item, team in zip(il.items, il.teams, strict=True):
        assert item in (a if team == "a" else b)
    # While both rankings still have unshown items, the teams stay balanced.
    for k in range(1, len(il.items) + 1):
        shown = set(il.items[:k])
        if not (set(a) <= shown or set(b) <= shown):
            assert abs(il.teams[:k].count("a") - il.teams[:k].count("b")) <= 1
    # Each team's picks keep the order of its own ranking.
    for team, ranking in (("a", a), ("b", b)):
        picked = [i for i, t in zip(il.items, il.teams, strict=True) if t == team]
        assert picked == sorted(picked, key=ranking.index)


def run_interleaving(rng: np.random.Generator, better_first: bool, n: int) -> ex.InterleavingResult:
    """Viewers play relevant titles with a position-biased probability; ranker a knows relevance
    (if ``better_first``), ranker b ranks at random."""
    outcomes = []
    for i in range(n):
        titles = [f"t{j}" for j in range(20)]
        relevant = set(rng.choice(titles, 4, replace=False).tolist())
        b = list(rng.permutation(titles))
        a = sorted(titles, key=lambda t: t not in relevant) if better_first else list(rng.permutation(titles))
        il = ex.team_draft(a, b, 10, f"imp-{i}")
        clicks = [t for pos, t in enumerate(il.items) if t in relevant and rng.random() < 0.6 / (1 + pos * 0.3)]
        outcomes.append(ex.credit(il, clicks))
    return ex.interleaving_test(outcomes)


def test_interleaving_prefers_the_better_ranker_and_not_an_equal_one() -> None:
    rng = np.random.default_rng(5)
    better = run_interleaving(rng, True, 400)
    assert better.wins_a > 2 * better.wins_b and better.p_value < 1e-6 and better.preference > 0.3
    equal = run_interleaving(rng, False, 400)
    assert equal.p_value > 0.01


def test_credit() -> None:
    il = ex.Interleaving(("x", "y", "z"), ("a", "b", "a"))
    assert ex.credit(il, ["x", "z"]) == "a" and ex.credit(il, ["y"]) == "b"
    assert ex.credit(il, ["x", "y"]) is None and ex.credit(il, []) is None
