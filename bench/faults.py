"""Fault-injection suite: run every ``tests/faults/scenario_*.py`` and print one summary row per scenario.

Each scenario starts real processes (a private Mosquitto, control planes, edges, an origin), injects
its fault ``trials`` times with timing drawn from ``--seed``, checks its invariant after every trial
and returns a :class:`tests.faults.scenario.ScenarioResult`.  This runner discovers the scenario
modules, runs them one after the other (each in its own work directory, removed afterwards unless
``--keep``), prints a table of trials, failures, seconds and each scenario's detail figures, and
exits non-zero if any scenario failed (or raised).

    .venv/bin/python bench/faults.py                         # every scenario, full_trials each
    .venv/bin/python bench/faults.py --fast                  # fast_trials each (what make test runs)
    .venv/bin/python bench/faults.py --only edge_kill_fill --trials 200
    .venv/bin/python bench/faults.py --seed 7 --json faults.json

Acceptance (issue #9): 200 kill trials with 0 bad serves; broker restarts with 0 lost telemetry
samples; every other scenario passes.
"""

from __future__ import annotations

import argparse
import importlib
import json
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.faults.scenario import Scenario, ScenarioResult  # noqa: E402 - needs the repository root first

FAULTS_DIR = ROOT / "tests" / "faults"


def discover() -> dict[str, Path]:
    """Scenario name -> module file, for every ``tests/faults/scenario_<name>.py``."""
    return {p.stem.removeprefix("scenario_"): p for p in sorted(FAULTS_DIR.glob("scenario_*.py"))}


def load(name: str) -> Scenario:
    module = importlib.import_module(f"tests.faults.scenario_{name}")
    scenario = getattr(module, "SCENARIO", None)
    if not isinstance(scenario, Scenario):
        raise TypeError(f"tests/faults/scenario_{name}.py defines no SCENARIO (a tests.faults.scenario.Scenario)")
    return scenario


def run_one(scenario: Scenario, trials: int, seed: int, workdir: Path) -> ScenarioResult:
    """Run a scenario; an exception it lets escape is a failure of that scenario, not of the runner."""
    started = time.monotonic()
    try:
        result = scenario.run(trials, seed, workdir)
    except Exception as exc:  # the other scenarios still run; the row says what happened
        result = ScenarioResult(scenario.name, trials, [f"raised {type(exc).__name__}: {exc}\n"
                                                        f"{traceback.format_exc()[-3000:]}"])
    if not result.seconds:
        result.seconds = time.monotonic() - started
    return result


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)


def table(results: list[ScenarioResult]) -> str:
    """One row per scenario: name, trials, failures, seconds, then its detail figures as key=value."""
    rows = [("scenario", "trials", "failures", "seconds", "detail")]
    for r in results:
        detail = " ".join(f"{k}={_cell(v)}" for k, v in r.detail.items())
        rows.append((r.name, str(r.trials), str(len(r.failures)), f"{r.seconds:.1f}", detail))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    lines = []
    for i, row in enumerate(rows):
        lines.append("  ".join(cell.ljust(widths[j]) if j == 0 else cell.rjust(widths[j])
                               for j, cell in enumerate(row[:4])) + "  " + row[4])
        if i == 0:
            lines.append("  ".join("-" * w for w in widths) + "  " + "-" * 6)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", action="append", default=[], metavar="NAME",
                        help="run only this scenario (repeatable)")
    parser.add_argument("--trials", type=int, default=0, help="trials per scenario (default: its full_trials)")
    parser.add_argument("--fast", action="store_true", help="fast_trials per scenario, as make test runs them")
    parser.add_argument("--seed", type=int, default=1, help="seed of every scenario's randomised timing")
    parser.add_argument("--json", type=Path, metavar="OUT", help="also write the results as JSON")
    parser.add_argument("--workdir", type=Path, help="where scenarios keep their processes' files "
                                                     "(default: a temporary directory)")
    parser.add_argument("--keep", action="store_true", help="keep the work directories (logs, caches)")
    parser.add_argument("--list", action="store_true", help="list the scenarios and exit")
    args = parser.parse_args(argv)
    if args.trials < 0:
        parser.error("--trials must be >= 0")

    modules = discover()
    if args.list:
        for name in modules:
            try:
                s = load(name)
                print(f"{s.name:24} fast {s.fast_trials:4}  full {s.full_trials:5}  {s.description}")
            except Exception as exc:  # listing goes on; running it would fail the same way
                print(f"{name:24} does not load: {type(exc).__name__}: {exc}")
        return 0
    unknown = [n for n in args.only if n not in modules]
    if unknown:
        parser.error(f"unknown scenario(s) {', '.join(unknown)}; known: {', '.join(modules)}")
    names = [n for n in modules if not args.only or n in args.only]

    base = args.workdir or Path(tempfile.mkdtemp(prefix="nearcast-faults-"))
    base.mkdir(parents=True, exist_ok=True)
    results: list[ScenarioResult] = []
    for name in names:
        try:
            scenario = load(name)
        except Exception as exc:  # a scenario that does not even import is a failed row, not a crash
            results.append(ScenarioResult(name, 0, [f"does not load: {type(exc).__name__}: {exc}"]))
            print(f"[faults] {name}: does not load: {exc}", file=sys.stderr, flush=True)
            continue
        trials = args.trials or (scenario.fast_trials if args.fast else scenario.full_trials)
        workdir = base / scenario.name
        print(f"[faults] {scenario.name}: {trials} trials, seed {args.seed} ...", file=sys.stderr, flush=True)
        result = run_one(scenario, trials, args.seed, workdir)
        results.append(result)
        verdict = "ok" if result.ok else f"{len(result.failures)} FAILURE(S)"
        print(f"[faults] {scenario.name}: {verdict} in {result.seconds:.1f} s", file=sys.stderr, flush=True)
        for line in result.failures[:10]:
            print(f"  - {line[:2000]}", file=sys.stderr)
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    if not args.keep and args.workdir is None:
        shutil.rmtree(base, ignore_errors=True)

    print(table(results))
    if args.json:
        args.json.write_text(json.dumps({"seed": args.seed, "scenarios": [
            {"name": r.name, "trials": r.trials, "failures": r.failures, "seconds": round(r.seconds, 2),
             "ok": r.ok, "detail": r.detail} for r in results]}, indent=1, default=str))
    return 0 if all(r.ok for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
