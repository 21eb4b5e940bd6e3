"""Recommender benchmark: our pipeline against tuned baselines on MovieLens, in one run.

Prints the comparison table, then ratios against EASE measured in the same run (quality and training
time), so the figures stay meaningful on any machine.

    .venv/bin/python bench/recs.py [--data ../shared/data/ml-latest-small] [--protocol both] [--seed 0]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from control.recs.cli import load_data_dir
from control.recs.evaluate import EvalConfig, Result, run, table
from control.recs.splits import Protocol

DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "ml-latest-small"


def ratios(results: list[Result]) -> list[str]:
    lines = []
    for protocol in dict.fromkeys(r.protocol for r in results):
        by_model = {r.model: r for r in results if r.protocol == protocol}
        ours, ease = by_model["pipeline"], by_model["ease"]
        best_ndcg = max((r for m, r in by_model.items() if m != "pipeline"), key=lambda r: r.at[10].ndcg)
        best_recall = max((r for m, r in by_model.items() if m != "pipeline"), key=lambda r: r.at[20].recall)
        lines.append(
            f"{protocol}: pipeline/EASE NDCG@10 x{ours.at[10].ndcg / ease.at[10].ndcg:.3f}, "
            f"Recall@20 x{ours.at[20].recall / ease.at[20].recall:.3f}; "
            f"vs best baseline NDCG@10 ({best_ndcg.model}) x{ours.at[10].ndcg / best_ndcg.at[10].ndcg:.3f}, "
            f"Recall@20 ({best_recall.model}) x{ours.at[20].recall / best_recall.at[20].recall:.3f}; "
            f"training time pipeline {ours.fit_seconds:.1f}s "
            f"= x{ours.fit_seconds / max(ease.fit_seconds, 1e-9):.0f} EASE's"
        )
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--protocol", choices=["random", "temporal", "both"], default="both")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if not args.data.is_dir():
        print(f"no data at {args.data}; pass --data PATH to a MovieLens directory", file=sys.stderr)
        return 2
    protocols = (Protocol.RANDOM, Protocol.TEMPORAL) if args.protocol == "both" else (Protocol(args.protocol),)
    started = time.perf_counter()
    interactions, catalog = load_data_dir(args.data)
    results = run(interactions, catalog, EvalConfig(protocols=protocols, seed=args.seed),
                  progress=lambda m: print(m, file=sys.stderr))
    print(table(results, (10, 20)))
    print()
    print("\n".join(ratios(results)))
    print(f"whole run (tuning every baseline on validation + fitting + scoring): {time.perf_counter() - started:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
