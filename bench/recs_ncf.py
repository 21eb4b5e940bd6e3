"""Does a neural model (NCF / NeuMF) earn its place? Alone against EASE, and inside the pipeline.

One run, one split (random 80/20 of ratings >= 4 on MovieLens, ``--seed``): ``control.recs.evaluate.run``
tunes the baselines on validation and scores EASE and the production pipeline exactly as
``bench/recs.py`` does; then, on the same split and with the same tuned generator settings, this script
fits and scores

- NCF (NeuMF: GMF + MLP towers) and GMF alone (Rendle et al. 2020: is the MLP worth it over a dot product?),
- the pipeline with NCF added as one more generator (its score/rank features reach the ranker),
- the pipeline with NCF also a candidate source (its top list joins the candidate union),

and prints NDCG@10, Recall@20 and training time with ratios against EASE and against the pipeline.
NCF's settings were chosen on the validation split carved from training (never the test split); pass
``--ncf JSON`` to try others. Needs the ``neural`` extra (PyTorch, CPU). About 25 minutes on 2 cores.

    .venv/bin/python bench/recs_ncf.py [--data ../shared/data/ml-latest-small] [--seed 0] [--ncf '{"epochs": 30}']
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any
from unittest import mock

import control.recs.pipeline as pipeline_module
from control.recs.cli import load_data_dir
from control.recs.data import Catalog, Interactions
from control.recs.dataset import TrainData, build
from control.recs.evaluate import EvalConfig, Result, Target, run, score_lists
from control.recs.metrics import Scores
from control.recs.models.base import Recommender
from control.recs.models.ncf import NCF, torch_available
from control.recs.pipeline import Pipeline, PipelineConfig
from control.recs.splits import Protocol, positives, split

DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "ml-latest-small"
KS = (10, 20)
#: GMF alone learns best with more epochs and a larger step (validation NDCG@10 0.145 vs 0.134 at NCF's own).
GMF = {"mlp_dim": 0, "epochs": 40, "lr": 5e-3}


@dataclass
class WithNCF(PipelineConfig):
    """The production configuration plus an NCF generator (appended: existing feature columns keep their order)."""

    ncf: dict[str, Any] | None = None

    def make_generators(self) -> dict[str, Recommender]:
        return {**super().make_generators(), "ncf": NCF(**{**(self.ncf or {}), "seed": self.seed})}


def outer_split(interactions: Interactions, catalog: Catalog, seed: int) -> tuple[TrainData, Target]:
    """The evaluation's own outer split (same functions, same seed as ``evaluate.run_protocol``)."""
    outer = split(positives(interactions, EvalConfig().min_rating), Protocol.RANDOM, seed=seed)
    data = build(outer.train, catalog)
    return data, Target.of(data, outer.test)


def fit_model(name: str, model: Recommender, data: TrainData, target: Target) -> Result:
    started = time.perf_counter()
    model.fit(data)
    seconds = time.perf_counter() - started
    idx, _ = model.recommend(data.matrix[target.rows], max(KS))
    return Result("random", name, model.params(), score_lists(idx, target, data, KS), seconds)


def fit_pipeline(name: str, config: PipelineConfig, data: TrainData, target: Target, say: Any) -> Result:
    started = time.perf_counter()
    pipe = Pipeline(config).fit(data, Protocol.RANDOM, progress=lambda m: say(f"{name}: {m}"))
    seconds = time.perf_counter() - started
    ranked, _ = pipe.recommend(data.matrix[target.rows], data.times[target.rows], max(KS))
    return Result("random", name, {}, score_lists(ranked, target, data, KS), seconds)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--ncf", type=json.loads, default={}, help="NCF keyword arguments as JSON")
    args = parser.parse_args()
    if not args.data.is_dir():
        print(f"no data at {args.data}; pass --data PATH to a MovieLens directory", file=sys.stderr)
        return 2
    if not torch_available():
        print("PyTorch is not installed: pip install -e '.[neural]' (CPU build, pinned)", file=sys.stderr)
        return 2
    started = time.perf_counter()

    def say(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    interactions, catalog = load_data_dir(args.data)
    base = run(interactions, catalog, EvalConfig(protocols=(Protocol.RANDOM,), seed=args.seed), progress=say)
    by_model = {r.model: r for r in base}
    data, target = outer_split(interactions, catalog, args.seed)
    # the generator settings run_protocol tuned on validation, as it hands them to its pipeline
    tuned = replace(PipelineConfig(), ease=dict(by_model["ease"].params), item_knn=dict(by_model["item_knn"].params),
                    als={k: v for k, v in by_model["als"].params.items() if k != "seed"}, seed=args.seed)
    ncf_params = {**NCF().params(), **args.ncf, "seed": args.seed}
    results = [by_model["ease"], by_model["pipeline"]]
    results.append(fit_model("ncf", NCF(**ncf_params), data, target))
    say(f"ncf NDCG@10 {results[-1].at[10].ndcg:.4f} in {results[-1].fit_seconds:.0f}s")
    gmf = {**ncf_params, **GMF}
    results.append(fit_model("gmf", NCF(**gmf), data, target))
    say(f"gmf NDCG@10 {results[-1].at[10].ndcg:.4f} in {results[-1].fit_seconds:.0f}s")
    with_ncf = WithNCF(**{**vars(tuned), "ncf": ncf_params})
    results.append(fit_pipeline("pipeline+ncf", with_ncf, data, target, say))
    with mock.patch.object(pipeline_module, "CANDIDATE_SOURCES", (*pipeline_module.CANDIDATE_SOURCES, "ncf")):
        results.append(fit_pipeline("pipeline+ncf_c", with_ncf, data, target, say))

    print(f"NCF: {json.dumps(ncf_params, sort_keys=True)}")
    print("pipeline+ncf: NCF as a feature generator; pipeline+ncf_c: also a candidate source")
    print(f"{'model':15} {'NDCG@10':>8} {'Recall@20':>9} {'fit s':>7}")
    for r in results:
        print(f"{r.model:15} {r.at[10].ndcg:8.4f} {r.at[20].recall:9.4f} {r.fit_seconds:7.1f}")
    print()
    res = {r.model: r for r in results}

    def ratio(a: str, b: str) -> str:
        x, y = res[a], res[b]
        nd: Scores = x.at[10]
        return (f"{a}/{b}: NDCG@10 x{nd.ndcg / y.at[10].ndcg:.3f}, Recall@20 x{x.at[20].recall / y.at[20].recall:.3f}, "
                f"training time x{x.fit_seconds / max(y.fit_seconds, 1e-9):.2f}")

    for a, b in (("ncf", "ease"), ("gmf", "ease"), ("ncf", "gmf"), ("pipeline+ncf", "pipeline"),
                 ("pipeline+ncf_c", "pipeline")):
        print(ratio(a, b))
    print(f"whole run: {time.perf_counter() - started:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
