"""``nearcast model eval --policy``: judge an artwork policy on the logs of the one that served.

Input is what ``nearcast events export`` writes beside the interactions: ``choices.csv`` (one row per
tile shown with its artwork: impression id, title, time, the variant shown and its propensity under
the serving bandit, and the viewer's context — genre affinities, device, hour) and ``plays.csv``
(plays that name the impression they came from).  :func:`control.ope.join_rewards` turns them into
logged bandit data (reward 1 when the tile was played within the window), the context is encoded
exactly as the edge encodes it (:class:`shared.bandits.ContextEncoder` with the edge's genres and
devices), and the target policy's probabilities go to the four estimators of :mod:`control.ope`.

Target policies:

* ``uniform`` — every variant equally likely;
* ``first`` — always the variant ranked first by the encoder's artwork scoring (``candidate_01``);
* ``linucb`` — a LinUCB fitted on the earlier half of the logs (by time) and evaluated greedily on the
  later half, so it is never judged on the events it learned from.

The table also shows the serving policy's own average reward on the same events, the on-policy
reference every estimate should be read against.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from shared.bandits import ContextEncoder, LinUCB, Uniform
from shared.errors import InvalidInput

from .ope import Choice, Estimate, LoggedData, Play, evaluate, join_rewards

POLICIES = ("uniform", "first", "linucb")
DEVICES = ("tv", "mobile", "web", "tablet")
GENRES = ("action", "comedy", "drama", "documentary", "family", "thriller")  # the edge's default bandit_genres
CHOICE_COLUMNS = ("impression_id", "title_id", "ts", "artwork", "propensity", "device", "hour", "affinities")
PLAY_COLUMNS = ("impression_id", "title_id", "ts")
MAX_ROWS = 5_000_000


@dataclass(frozen=True)
class PolicyReport:
    policy: str
    events: int
    logged_value: float
    unmatched_plays: int
    estimates: list[Estimate]

    def as_json(self) -> dict[str, Any]:
        return {"policy": self.policy, "events": self.events, "logged_value": round(self.logged_value, 6),
                "unmatched_plays": self.unmatched_plays,
                "estimates": [{"estimator": e.estimator, "value": round(e.value, 6), "low": round(e.low, 6),
                               "high": round(e.high, 6), "n": e.n, "ess": round(e.ess, 1)} for e in self.estimates]}


def _rows(path: Path, columns: Sequence[str]) -> list[dict[str, str]]:
    try:
        with path.open(newline="") as fh:
            reader = csv.DictReader(fh)
            if tuple(reader.fieldnames or ()) != tuple(columns):
                raise InvalidInput(f"{path}: header must be {','.join(columns)}")
            rows: list[dict[str, str]] = []
            for row in reader:
                if len(rows) >= MAX_ROWS:
                    raise InvalidInput(f"{path}: more than {MAX_ROWS} rows")
                rows.append(row)
            return rows
    except FileNotFoundError:
        raise InvalidInput(f"{path} not found: export the logs with `nearcast events export --out DIR`") from None
    except (UnicodeDecodeError, csv.Error) as exc:
        raise InvalidInput(f"{path}: not a CSV file ({exc})") from None


def _number(value: str, what: str, where: str) -> float:
    try:
        x = float(value)
    except ValueError:
        raise InvalidInput(f"{where}: {what} is not a number") from None
    if not math.isfinite(x):
        raise InvalidInput(f"{where}: {what} must be finite")
    return x


def load_logs(directory: Path, encoder: ContextEncoder) -> tuple[list[Choice], list[Play]]:
    choices = []
    for n, row in enumerate(_rows(directory / "choices.csv", CHOICE_COLUMNS), start=2):
        where = f"choices.csv:{n}"
        try:
            affinities = json.loads(row["affinities"] or "{}")
        except ValueError:
            raise InvalidInput(f"{where}: affinities is not JSON") from None
        if not isinstance(affinities, dict):
            raise InvalidInput(f"{where}: affinities must be an object")
        hour = _number(row["hour"], "hour", where)
        try:
            x = encoder.encode(affinities, row["device"], hour)
        except InvalidInput as exc:
            raise InvalidInput(f"{where}: {exc}") from None
        choices.append(Choice(row["impression_id"], row["title_id"], _number(row["ts"], "ts", where), row["artwork"],
                              _number(row["propensity"], "propensity", where), tuple(float(v) for v in x)))
    plays = [Play(row["impression_id"], row["title_id"], _number(row["ts"], "ts", f"plays.csv:{n}"))
             for n, row in enumerate(_rows(directory / "plays.csv", PLAY_COLUMNS), start=2)]
    return choices, plays


def fit_artwork_bandit(directory: Path, *, window_s: float = 3600.0, min_choices: int = 20, seed: int = 0,
                       ) -> tuple[LinUCB | None, int]:
    """A LinUCB fitted on every logged choice (reward = played), for the edge to start from; ``None`` when
    the logs hold fewer than ``min_choices`` choices.  Returns the bandit and the number of choices."""
    encoder = ContextEncoder(GENRES, DEVICES)
    choices, plays = load_logs(directory, encoder)
    if len(choices) < min_choices:
        return None, len(choices)
    arms = sorted({c.action for c in choices})
    data = join_rewards(sorted(choices, key=lambda c: (c.at, c.impression_id)), plays, arms, window_s).data
    bandit = LinUCB(encoder.dim, seed=seed)
    for x, a, r in zip(data.contexts, data.actions, data.rewards, strict=True):
        bandit.update(x, arms[int(a)], float(r))
    return bandit, len(data.actions)


def _subset(data: LoggedData, keep: np.ndarray[Any, np.dtype[np.bool_]]) -> LoggedData:
    return LoggedData.from_arrays(data.contexts[keep], data.actions[keep], data.propensities[keep],
                                  data.rewards[keep], data.n_actions)


def evaluate_policy(directory: Path, policy: str, *, window_s: float = 3600.0, seed: int = 0) -> PolicyReport:
    if policy not in POLICIES:
        raise InvalidInput(f"policy must be one of {', '.join(POLICIES)}")
    encoder = ContextEncoder(GENRES, DEVICES)
    choices, plays = load_logs(directory, encoder)
    if len(choices) < 4:
        raise InvalidInput(f"{directory}: {len(choices)} logged choices; need at least 4")
    arms = sorted({c.action for c in choices})
    order = sorted(range(len(choices)), key=lambda i: (choices[i].at, choices[i].impression_id))
    joined = join_rewards([choices[i] for i in order], plays, arms, window_s)
    data = joined.data
    if policy == "uniform":
        target = np.stack([Uniform(seed).probabilities(x, arms) for x in data.contexts])
    elif policy == "first":
        target = np.zeros((len(data.actions), len(arms)))
        target[:, 0] = 1.0
    else:
        half = len(data.actions) // 2
        bandit = LinUCB(encoder.dim, epsilon=0.0, min_epsilon=0.0, seed=seed)
        for x, a, r in zip(data.contexts[:half], data.actions[:half], data.rewards[:half], strict=True):
            bandit.update(x, arms[int(a)], float(r))
        keep = np.zeros(len(data.actions), dtype=bool)
        keep[half:] = True
        data = _subset(data, keep)
        target = np.stack([bandit.probabilities(x, arms) for x in data.contexts])
    estimates = evaluate(data, target, seed=seed)
    return PolicyReport(policy, len(data.actions), float(data.rewards.mean()), joined.unmatched_plays, estimates)


def table(report: PolicyReport) -> str:
    lines = [f"policy {report.policy} on {report.events} logged choices "
             f"(the serving policy earned {report.logged_value:.4f} per choice; "
             f"{report.unmatched_plays} plays matched no choice)",
             f"{'estimator':<14}{'value':>10}{'95% low':>10}{'95% high':>10}{'ESS':>10}"]
    lines += [f"{e.estimator:<14}{e.value:>10.4f}{e.low:>10.4f}{e.high:>10.4f}{e.ess:>10.1f}" for e in report.estimates]
    return "\n".join(lines)
