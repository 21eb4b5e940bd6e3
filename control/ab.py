"""A/B experiments on the homepage rows: definitions, exposure logging and reports (the control-plane shell
around the pure :mod:`control.experiments`).

An experiment's cells each name what their profiles' rows come from: the serving recommender (no
setting), a pinned recommender version (``model_version``, one of ``recs/versions``), or a policy
(``policy: trending`` — no personalisation, the baseline every recommender must beat).  Assignment is
:meth:`Experiment.assign` on the profile id with the experiment's random salt, kept in the store, so it
is the same in every process and after every restart.  A profile's first page under an experiment
records its exposure (once: ``insert or ignore``); the report counts exposures per cell for the SRM
check and folds each exposed profile's events *after* its first exposure into its outcome.
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Iterable, Mapping
from typing import Any

from shared.errors import InvalidInput
from shared.ids import check_id

from .events import Event
from .experiments import Cell, Comparison, Experiment, ProfileOutcome, Report, Stat

POLICIES = ("model", "trending")
MAX_CELLS = 8
OUTCOME_TYPES = ("impression", "play_start", "progress", "complete")


def parse_definition(doc: Any, known_versions: Iterable[str]) -> dict[str, Any]:
    """``{"id", "cells": [{"name", "weight", "model_version"?, "policy"?}], "control"?}`` → stored document."""
    if not isinstance(doc, dict):
        raise InvalidInput("expected a JSON object")
    unknown = sorted(str(k)[:40] for k in doc if k not in ("id", "cells", "control"))
    if unknown:
        raise InvalidInput(f"unknown field(s): {', '.join(unknown)}")
    experiment_id = check_id(doc.get("id"), "experiment id")
    raw = doc.get("cells")
    if not isinstance(raw, list) or not 2 <= len(raw) <= MAX_CELLS:
        raise InvalidInput(f"cells must be a list of 2-{MAX_CELLS} cells")
    versions = set(known_versions)
    cells = []
    for i, c in enumerate(raw):
        if not isinstance(c, dict) or set(c) - {"name", "weight", "model_version", "policy"}:
            raise InvalidInput(f"cell {i}: an object with name, weight and optionally model_version or policy")
        name = check_id(c.get("name"), "cell name")
        weight = c.get("weight", 1)
        if isinstance(weight, bool) or not isinstance(weight, int | float) or not math.isfinite(weight) or \
                not 0 < weight <= 1000:
            raise InvalidInput(f"cell {name}: weight must be a number in (0, 1000]")
        version, policy = c.get("model_version"), c.get("policy")
        if version is not None and (not isinstance(version, str) or version not in versions):
            known = ", ".join(sorted(versions))[:200] or "none trained yet"
            raise InvalidInput(f"cell {name}: model_version must be a trained version ({known})")
        if policy is not None and policy not in POLICIES:
            raise InvalidInput(f"cell {name}: policy must be one of {', '.join(POLICIES)}")
        if version is not None and policy == "trending":
            raise InvalidInput(f"cell {name}: a trending cell has no model version")
        cells.append({"name": name, "weight": float(weight), "model_version": version, "policy": policy})
    control = doc.get("control") or cells[0]["name"]
    definition = {"id": experiment_id, "salt": secrets.token_hex(16), "cells": cells, "control": control}
    experiment(definition)  # the pure checks (unique names, control among the cells, every cell has traffic)
    return definition


def experiment(doc: Mapping[str, Any]) -> Experiment:
    cells = tuple(Cell(c["name"], float(c["weight"]), c.get("model_version"), c.get("policy"))
                  for c in doc["cells"])
    return Experiment(str(doc["id"]), str(doc["salt"]), cells, str(doc.get("control") or ""))


def outcomes(exp: Experiment, exposed: Iterable[tuple[str, str, float]], events: Iterable[Event]
             ) -> list[ProfileOutcome]:
    """Each exposed profile's impressions, plays, watch time and completions after its first exposure."""
    first = {p: (cell, ts) for p, cell, ts in exposed}
    tally: dict[str, list[float]] = {p: [0, 0, 0.0, 0] for p in first}
    watched: dict[tuple[str, str], float] = {}
    for e in events:
        seen = first.get(e.profile_id)
        if seen is None or e.ts < seen[1]:
            continue
        t = tally[e.profile_id]
        if e.type == "impression":
            t[0] += 1
        elif e.type == "play_start":
            t[1] += 1
        elif e.type == "complete":
            t[3] += 1
        elif e.type == "progress" and e.title_id is not None:
            key = (e.profile_id, e.title_id)
            watched[key] = max(watched.get(key, 0.0), float(e.data["position_s"]))
    for (profile, _title), seconds in watched.items():
        tally[profile][2] += seconds
    return [ProfileOutcome(p, first[p][0], int(t[0]), int(t[1]), float(t[2]), int(min(t[3], t[1])))
            for p, t in tally.items()]


def _stat(s: Stat) -> dict[str, Any]:
    return {"value": _num(s.value), "se": _num(s.se), "n": s.n}


def _num(x: float) -> float | None:
    return round(x, 6) if math.isfinite(x) else None


def _comparison(c: Comparison) -> dict[str, Any]:
    return {"metric": c.metric, "cell": c.cell, "control": _stat(c.control), "treatment": _stat(c.treatment),
            "diff": _num(c.diff), "low": _num(c.low), "high": _num(c.high), "p_value": _num(c.p_value),
            "significant": c.significant}


def report_json(r: Report, doc: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "experiment": {k: doc[k] for k in ("id", "cells", "control", "state", "created", "stopped") if k in doc},
        "srm": {"observed": r.srm.observed, "expected": {k: round(v, 2) for k, v in r.srm.expected.items()},
                "chi2": round(r.srm.chi2, 4), "p_value": r.srm.p_value, "flagged": r.srm.flagged},
        "cells": {cell: {m: _stat(s) for m, s in stats.items()} for cell, stats in r.cells.items()},
        "comparisons": [_comparison(c) for c in r.comparisons],
    }
