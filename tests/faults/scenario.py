"""The contract between fault scenarios and ``bench/faults.py``.

Each ``tests/faults/scenario_<name>.py`` module defines ``SCENARIO``: a :class:`Scenario` whose ``run``
starts real processes (broker, control plane, edges) in ``workdir``, injects the fault ``trials``
times with timing drawn from ``random.Random(seed)``, checks the invariant after every trial and
returns a :class:`ScenarioResult`.  ``tests/faults/test_<name>.py`` runs ``fast_trials`` of it in
``make test``; ``bench/faults.py`` discovers every scenario module and runs ``full_trials`` (or
``--trials``) and prints one summary row per scenario.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class ScenarioResult:
    name: str
    trials: int
    #: One line per failed check ("trial 17: served 4096 bytes of seg-3.m4s whose sha256 ...").
    failures: list[str] = field(default_factory=list)
    seconds: float = 0.0
    #: Figures worth a column in the summary (``bad_serves``, ``lost_samples``, ``resumed_fills``...).
    detail: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.failures


@dataclass(frozen=True)
class Scenario:
    name: str
    description: str
    #: ``run(trials, seed, workdir)``; must clean up every process it started, also on failure.
    run: Callable[[int, int, Path], ScenarioResult]
    fast_trials: int
    full_trials: int
