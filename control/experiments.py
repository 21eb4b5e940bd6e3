"""A/B experiments: deterministic assignment, exposure tallies, per-cell metrics with intervals, SRM,
and team-draft interleaving.

Assignment is a pure function of (salt, profile id), so the control plane, every edge and every
restart agree on a profile's cell without sharing state; a new salt reshuffles everyone, which is what
a new experiment wants.  The unit of randomisation is the profile, while the headline metrics are per
impression (play rate, watch time per impression) or per play (completion): ratios of per-profile
sums.  Treating impressions as independent would understate the variance (a keen viewer plays many
times), so ratio metrics use the delta method over profiles, and per-profile means use Welch's t.

A sample-ratio mismatch (observed exposures per cell far from the allocation) means assignment or
logging is broken, and every metric of that experiment is suspect; the report says so first.

Team-draft interleaving (Radlinski et al. 2008) compares two rankers inside one result list, which
needs far fewer impressions than an A/B split to find which ranker viewers prefer.
"""

from __future__ import annotations

import hashlib
import math
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Literal

import numpy as np
from scipy import stats

from shared.bandits import FloatArray
from shared.errors import InvalidInput
from shared.ids import check_id

BUCKETS = 10_000
MAX_PROFILE_ID = 256
SRM_ALPHA = 0.001
Z95 = 1.959963984540054


class ExperimentError(InvalidInput):
    """An experiment definition, exposure or outcome is malformed or inconsistent."""


def _profile_bytes(profile_id: str) -> bytes:
    if not isinstance(profile_id, str) or not 0 < len(profile_id) <= MAX_PROFILE_ID:
        raise ExperimentError(f"profile id must be a string of 1-{MAX_PROFILE_ID} characters")
    return profile_id.encode("utf-8", "surrogatepass")


@dataclass(frozen=True)
class Cell:
    """One arm of an experiment: what its profiles get (a model version and/or a bandit policy)."""

    name: str
    weight: float
    model_version: str | None = None
    policy: str | None = None


@dataclass(frozen=True)
class Experiment:
    id: str
    salt: str
    cells: tuple[Cell, ...]
    control: str = ""  # defaults to the first cell

    def __post_init__(self) -> None:
        check_id(self.id, "experiment id")
        if not isinstance(self.salt, str) or not 0 < len(self.salt) <= 128:
            raise ExperimentError("salt must be 1-128 characters")
        if len(self.cells) < 2:
            raise ExperimentError("an experiment needs at least two cells")
        names = [c.name for c in self.cells]
        for name in names:
            check_id(name, "cell name")
        if len(set(names)) != len(names):
            raise ExperimentError("cell names must be unique")
        if not all(isinstance(c.weight, int | float) and math.isfinite(c.weight) and c.weight > 0
                   for c in self.cells):
            raise ExperimentError("cell weights must be finite and > 0")
        if not self.control:
            object.__setattr__(self, "control", names[0])
        elif self.control not in names:
            raise ExperimentError(f"control cell {self.control!r} is not one of the cells")
        bounds = self._bounds
        if len(set(bounds)) != len(bounds) or bounds[0] == 0:
            raise ExperimentError(f"every cell needs at least 1/{BUCKETS} of the traffic")

    @cached_property
    def _bounds(self) -> tuple[int, ...]:
        """Upper bucket bound of each cell: cell i owns buckets [bound i-1, bound i)."""
        total = sum(c.weight for c in self.cells)
        bounds, acc = [], 0.0
        for c in self.cells:
            acc += c.weight
            bounds.append(round(acc / total * BUCKETS))
        return tuple(bounds)

    def bucket(self, profile_id: str) -> int:
        salt = self.salt.encode("utf-8", "surrogatepass")
        digest = hashlib.sha256(salt + b"\x00" + _profile_bytes(profile_id)).digest()
        return int.from_bytes(digest[:8], "big") % BUCKETS

    def assign(self, profile_id: str) -> Cell:
        b = self.bucket(profile_id)
        return self.cells[next(i for i, bound in enumerate(self._bounds) if b < bound)]

    def shares(self) -> dict[str, float]:
        """The share of profiles each cell should receive (after bucket rounding)."""
        lows = (0, *self._bounds[:-1])
        return {c.name: (hi - lo) / BUCKETS for c, lo, hi in zip(self.cells, lows, self._bounds, strict=True)}


@dataclass(frozen=True)
class Exposure:
    """A profile saw something the experiment controls; logged once per profile and surface."""

    experiment_id: str
    cell: str
    profile_id: str
    at: float
    impression_id: str = ""


@dataclass
class ExposureTally:
    """First exposures per cell (for SRM), refusing exposures whose cell contradicts assignment."""

    experiment: Experiment
    counts: dict[str, int] = field(default_factory=dict)
    _seen: set[str] = field(default_factory=set)

    def add(self, exposure: Exposure) -> bool:
        if exposure.experiment_id != self.experiment.id:
            raise ExperimentError(f"exposure for experiment {exposure.experiment_id[:64]!r}, "
                                  f"not {self.experiment.id!r}")
        expected = self.experiment.assign(exposure.profile_id).name
        if exposure.cell != expected:
            raise ExperimentError(f"exposure says cell {exposure.cell[:64]!r}; the profile is assigned to {expected!r}")
        if exposure.profile_id in self._seen:
            return False
        self._seen.add(exposure.profile_id)
        self.counts[expected] = self.counts.get(expected, 0) + 1
        return True


@dataclass(frozen=True)
class ProfileOutcome:
    """One profile's totals over the experiment window."""

    profile_id: str
    cell: str
    impressions: int
    plays: int
    watch_s: float
    completions: int

    def __post_init__(self) -> None:
        if min(self.impressions, self.plays, self.completions) < 0 or self.completions > self.plays:
            raise ExperimentError(f"profile {self.profile_id[:64]!r}: counts must be >= 0, completions <= plays")
        if not (math.isfinite(self.watch_s) and self.watch_s >= 0):
            raise ExperimentError(f"profile {self.profile_id[:64]!r}: watch time must be finite and >= 0")


@dataclass(frozen=True)
class Stat:
    value: float
    se: float
    n: int


@dataclass(frozen=True)
class Comparison:
    """Treatment minus control for one metric, with its 95 % interval and two-sided p-value."""

    metric: str
    cell: str
    control: Stat
    treatment: Stat
    diff: float
    low: float
    high: float
    p_value: float

    @property
    def significant(self) -> bool:
        return not self.low <= 0 <= self.high


@dataclass(frozen=True)
class SrmResult:
    observed: dict[str, int]
    expected: dict[str, float]
    chi2: float
    p_value: float
    flagged: bool


@dataclass(frozen=True)
class Report:
    experiment_id: str
    srm: SrmResult
    cells: dict[str, dict[str, Stat]]
    comparisons: list[Comparison]


def ratio_stat(num: FloatArray, den: FloatArray) -> Stat:
    """Σnum/Σden over profiles with its delta-method standard error."""
    n = len(num)
    if n < 2 or den.sum() <= 0:
        return Stat(math.nan, math.nan, n)
    mx, my = float(den.mean()), float(num.mean())
    r = my / mx
    cov = np.cov(num, den, ddof=1)
    var = (cov[0, 0] - 2 * r * cov[0, 1] + r * r * cov[1, 1]) / (n * mx * mx)
    return Stat(r, math.sqrt(max(float(var), 0.0)), n)


def compare_ratio(metric: str, cell: str, control: Stat, treatment: Stat) -> Comparison:
    diff = treatment.value - control.value
    se = math.hypot(control.se, treatment.se)
    if not math.isfinite(diff) or not math.isfinite(se):
        return Comparison(metric, cell, control, treatment, diff, math.nan, math.nan, math.nan)
    if se == 0:
        p = 1.0 if diff == 0 else 0.0
        return Comparison(metric, cell, control, treatment, diff, diff, diff, p)
    p = float(2 * stats.norm.sf(abs(diff) / se))
    return Comparison(metric, cell, control, treatment, diff, diff - Z95 * se, diff + Z95 * se, p)


def compare_means(metric: str, cell: str, control: FloatArray, treatment: FloatArray) -> Comparison:
    """Welch's t-test and interval on per-profile values."""
    if min(len(control), len(treatment)) < 2:
        nan = Stat(math.nan, math.nan, 0)
        return Comparison(metric, cell, nan, nan, math.nan, math.nan, math.nan, math.nan)
    c = Stat(float(control.mean()), float(control.std(ddof=1) / math.sqrt(len(control))), len(control))
    t = Stat(float(treatment.mean()), float(treatment.std(ddof=1) / math.sqrt(len(treatment))), len(treatment))
    if c.se == 0 and t.se == 0:
        return compare_ratio(metric, cell, c, t)
    with warnings.catch_warnings():
        # scipy warns of "catastrophic cancellation" when one cell is constant (every profile watched
        # exactly the same): an exact zero variance, which Welch's test handles correctly
        warnings.simplefilter("ignore", RuntimeWarning)
        res = stats.ttest_ind(treatment, control, equal_var=False)
    ci = res.confidence_interval(0.95)
    return Comparison(metric, cell, c, t, t.value - c.value, float(ci.low), float(ci.high), float(res.pvalue))


def srm_check(observed: Mapping[str, int], shares: Mapping[str, float], alpha: float = SRM_ALPHA) -> SrmResult:
    """Chi-square goodness of fit of observed counts to the allocation; flagged when p < alpha."""
    names = list(shares)
    obs = np.array([observed.get(n, 0) for n in names], dtype=np.float64)
    if set(observed) - set(names):
        raise ExperimentError(f"counts for unknown cells: {sorted(set(observed) - set(names))[:5]}")
    if obs.min() < 0:
        raise ExperimentError("counts must be >= 0")
    total = obs.sum()
    expected = {n: shares[n] * total for n in names}
    if total == 0:
        return SrmResult(dict(observed), expected, 0.0, 1.0, False)
    res = stats.chisquare(obs, np.array([expected[n] for n in names]))
    p = float(res.pvalue)
    return SrmResult({n: int(o) for n, o in zip(names, obs, strict=True)}, expected, float(res.statistic), p, p < alpha)


METRICS = ("play_rate", "watch_per_impression", "completion", "watch_per_profile")


def _cell_arrays(outcomes: Sequence[ProfileOutcome]) -> dict[str, FloatArray]:
    arr = np.array([[o.impressions, o.plays, o.watch_s, o.completions] for o in outcomes], dtype=np.float64)
    arr = arr.reshape(-1, 4)
    return {"impressions": arr[:, 0], "plays": arr[:, 1], "watch": arr[:, 2], "completions": arr[:, 3]}


def cell_stats(a: Mapping[str, FloatArray]) -> dict[str, Stat]:
    w = a["watch"]
    return {"play_rate": ratio_stat(a["plays"], a["impressions"]),
            "watch_per_impression": ratio_stat(w, a["impressions"]),
            "completion": ratio_stat(a["completions"], a["plays"]),
            "watch_per_profile": Stat(float(w.mean()) if len(w) else math.nan,
                                      float(w.std(ddof=1) / math.sqrt(len(w))) if len(w) > 1 else math.nan, len(w))}


def report(experiment: Experiment, outcomes: Iterable[ProfileOutcome], exposures: Mapping[str, int]) -> Report:
    """Per-cell metrics, every treatment against the control, and the SRM check."""
    by_cell: dict[str, list[ProfileOutcome]] = {c.name: [] for c in experiment.cells}
    for o in outcomes:
        if o.cell not in by_cell:
            raise ExperimentError(f"outcome for unknown cell {o.cell[:64]!r}")
        by_cell[o.cell].append(o)
    arrays = {name: _cell_arrays(rows) for name, rows in by_cell.items()}
    cells = {name: cell_stats(a) for name, a in arrays.items()}
    comparisons = []
    for c in experiment.cells:
        if c.name == experiment.control:
            continue
        for metric in METRICS[:3]:
            comparisons.append(compare_ratio(metric, c.name, cells[experiment.control][metric], cells[c.name][metric]))
        comparisons.append(compare_means("watch_per_profile", c.name, arrays[experiment.control]["watch"],
                                         arrays[c.name]["watch"]))
    return Report(experiment.id, srm_check(exposures, experiment.shares()), cells, comparisons)


# --- team-draft interleaving ----------------------------------------------------------------------

Team = Literal["a", "b"]


@dataclass(frozen=True)
class Interleaving:
    items: tuple[str, ...]
    teams: tuple[Team, ...]


def _coin(key: str, round_: int) -> bool:
    return hashlib.sha256(f"{key}\x00{round_}".encode("utf-8", "surrogatepass")).digest()[0] & 1 == 1


def team_draft(a: Sequence[str], b: Sequence[str], length: int, key: str) -> Interleaving:
    """Merge rankings ``a`` and ``b``: the team with fewer picks (a coin on ties, seeded by ``key``,
    e.g. the impression id) adds its best item not yet shown."""
    if length < 0 or length > 10_000 or len(a) > 10_000 or len(b) > 10_000:
        raise ExperimentError("rankings and length must be at most 10000")
    items: list[str] = []
    teams: list[Team] = []
    shown: set[str] = set()
    ia = ib = picks_a = picks_b = 0
    rnd = 0
    while len(items) < length:
        while ia < len(a) and a[ia] in shown:
            ia += 1
        while ib < len(b) and b[ib] in shown:
            ib += 1
        if ia >= len(a) and ib >= len(b):
            break
        if picks_a != picks_b:
            turn_a = picks_a < picks_b
        else:
            turn_a = _coin(key, rnd)
            rnd += 1
        if turn_a and ia >= len(a):
            turn_a = False
        elif not turn_a and ib >= len(b):
            turn_a = True
        item = a[ia] if turn_a else b[ib]
        items.append(item)
        teams.append("a" if turn_a else "b")
        shown.add(item)
        picks_a, picks_b = picks_a + turn_a, picks_b + (not turn_a)
    return Interleaving(tuple(items), tuple(teams))


def credit(interleaving: Interleaving, clicked: Iterable[str]) -> Team | None:
    """The team whose items got more clicks (plays), or None for a tie."""
    clicked_set = set(clicked)
    hits = [t for item, t in zip(interleaving.items, interleaving.teams, strict=True) if item in clicked_set]
    a, b = hits.count("a"), hits.count("b")
    return None if a == b else ("a" if a > b else "b")


@dataclass(frozen=True)
class InterleavingResult:
    wins_a: int
    wins_b: int
    ties: int
    p_value: float  # two-sided sign test on non-tied impressions

    @property
    def preference(self) -> float:
        """Δ_AB of Chapelle et al.: (wins_a - wins_b) / all impressions with a click."""
        total = self.wins_a + self.wins_b + self.ties
        return (self.wins_a - self.wins_b) / total if total else 0.0


def interleaving_test(outcomes: Iterable[Team | None]) -> InterleavingResult:
    wins: dict[Any, int] = {"a": 0, "b": 0, None: 0}
    for o in outcomes:
        if o not in wins:
            raise ExperimentError(f"interleaving outcome must be 'a', 'b' or None, not {o!r}")
        wins[o] += 1
    decided = wins["a"] + wins["b"]
    p = float(stats.binomtest(wins["a"], decided, 0.5).pvalue) if decided else 1.0
    return InterleavingResult(wins["a"], wins["b"], wins[None], p)
