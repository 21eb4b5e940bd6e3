"""Offline evaluation: our pipeline against tuned baselines, same split, same run, full-catalogue ranking.

Honesty rules this module enforces rather than trusts: every hyper-parameter (baselines' and ours) is
chosen on a validation split carved from *training* with the same protocol; the test split is touched
exactly once per model; every model ranks the whole catalogue with the profile's training titles masked.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np
import numpy.typing as npt

from control.recs.data import Catalog, Interactions
from control.recs.dataset import TrainData, build, restrict, to_interactions
from control.recs.errors import DataError
from control.recs.metrics import Scores, evaluate
from control.recs.models.als import ALS
from control.recs.models.base import Recommender, item_counts
from control.recs.models.ease import EASE
from control.recs.models.knn import ItemKNN
from control.recs.models.popularity import MostPopular
from control.recs.pipeline import Pipeline, PipelineConfig
from control.recs.splits import Protocol, Split, positives, split

Progress = Callable[[str], None]
Factory = Callable[..., Recommender]


@dataclass
class Grids:
    """Hyper-parameter candidates per baseline; ALS is searched one axis at a time (reg, alpha, factors)."""

    ease: list[dict[str, Any]] = field(default_factory=lambda: [{"lam": v} for v in (50.0, 100.0, 200.0, 400.0, 800.0)])
    item_knn: list[dict[str, Any]] = field(
        default_factory=lambda: [{"neighbours": n, "shrink": s} for n in (50, 100, 200) for s in (10.0, 50.0)])
    als_reg: tuple[float, ...] = (5.0, 10.0, 20.0, 50.0, 100.0)
    als_alpha: tuple[float, ...] = (2.0, 5.0, 10.0, 20.0)
    als_factors: tuple[int, ...] = (64, 128)
    als_iterations: int = 15


@dataclass
class EvalConfig:
    protocols: tuple[Protocol, ...] = (Protocol.RANDOM, Protocol.TEMPORAL)
    k: tuple[int, ...] = (10, 20)
    seed: int = 0
    min_rating: float = 4.0
    grids: Grids = field(default_factory=Grids)
    pipeline: PipelineConfig = field(default_factory=PipelineConfig)


@dataclass(frozen=True)
class Result:
    protocol: str
    model: str
    params: dict[str, Any]
    at: dict[int, Scores]  # K -> scores
    fit_seconds: float

    def as_json(self) -> dict[str, Any]:
        return {"protocol": self.protocol, "model": self.model, "params": self.params,
                "fit_seconds": round(self.fit_seconds, 2),
                "metrics": {str(k): asdict(s) for k, s in self.at.items()}}


@dataclass(frozen=True)
class Target:
    """The profiles to score and what each holds out, as row indices into a :class:`TrainData`."""

    rows: npt.NDArray[np.intp]
    held_out: list[list[int]]

    @classmethod
    def of(cls, data: TrainData, test: dict[str, tuple[str, ...]]) -> Target:
        u_idx = data.user_index()
        i_idx = data.item_index()
        users = sorted(u for u in test if u in u_idx)
        if not users:
            raise DataError("no test user appears in training; nothing to evaluate")
        held = [[i_idx[i] for i in test[u] if i in i_idx] for u in users]
        return cls(np.array([u_idx[u] for u in users], dtype=np.intp), held)


def score_lists(ranked: npt.NDArray[np.intp], target: Target, data: TrainData, ks: tuple[int, ...]
                ) -> dict[int, Scores]:
    counts = item_counts(data)
    return {k: evaluate(ranked, target.held_out, k, counts, data.n_users) for k in ks}


def _model_lists(model: Recommender, data: TrainData, target: Target, k: int) -> npt.NDArray[np.intp]:
    idx, _ = model.recommend(data.matrix[target.rows], k)
    return idx


def _tune(factory: Factory, grid: list[dict[str, Any]], vdata: TrainData, vtarget: Target,
          say: Progress, name: str, seen: dict[str, float] | None = None) -> tuple[dict[str, Any], float]:
    """Best of ``grid`` by validation NDCG@10; ``seen`` memoises configurations a previous axis already fitted."""
    memo = {} if seen is None else seen
    best: tuple[float, dict[str, Any]] = (-1.0, grid[0])
    for params in grid:
        key = json.dumps(params, sort_keys=True)
        if key not in memo:
            model = factory(**params).fit(vdata)
            memo[key] = score_lists(_model_lists(model, vdata, vtarget, 10), vtarget, vdata, (10,))[10].ndcg
            say(f"tune {name} {params}: validation NDCG@10 {memo[key]:.4f}")
        ndcg = memo[key]
        if ndcg > best[0]:
            best = (ndcg, params)
    return best[1], best[0]


def tune_baselines(vdata: TrainData, vtarget: Target, grids: Grids, seed: int, say: Progress
                   ) -> dict[str, dict[str, Any]]:
    """Best parameters per baseline on the validation split (never the test split)."""
    ease, _ = _tune(EASE, grids.ease, vdata, vtarget, say, "ease")
    knn, _ = _tune(ItemKNN, grids.item_knn, vdata, vtarget, say, "item_knn")
    als: dict[str, Any] = {"factors": max(grids.als_factors), "reg": grids.als_reg[0],
                           "alpha": grids.als_alpha[len(grids.als_alpha) // 2],
                           "iterations": grids.als_iterations, "seed": seed}
    seen: dict[str, float] = {}
    for axis, values in (("reg", grids.als_reg), ("alpha", grids.als_alpha), ("factors", grids.als_factors)):
        als, _ = _tune(ALS, [{**als, axis: v} for v in values], vdata, vtarget, say, "als", seen)
    return {"ease": ease, "item_knn": knn, "als": als}


def run_protocol(interactions: Interactions, catalog: Catalog, protocol: Protocol, config: EvalConfig,
                 say: Progress) -> list[Result]:
    pos = positives(interactions, config.min_rating)
    if len(pos) == 0:
        raise DataError(f"no interaction is rated >= {config.min_rating}")
    outer: Split = split(pos, protocol, seed=config.seed)
    data = build(outer.train, catalog)
    target = Target.of(data, outer.test)
    inner = split(to_interactions(data), protocol, seed=config.seed + 1)
    vdata = restrict(data, inner.train)
    vtarget = Target.of(vdata, inner.test)
    say(f"{protocol}: {len(outer.train)} training positives, {len(target.rows)} test profiles, "
        f"{data.n_items} titles")
    tuned = tune_baselines(vdata, vtarget, config.grids, config.seed, say)
    kmax = max(config.k)
    results: list[Result] = []
    baselines: list[tuple[str, Recommender]] = [
        ("most_popular", MostPopular()), ("item_knn", ItemKNN(**tuned["item_knn"])),
        ("ease", EASE(**tuned["ease"])), ("als", ALS(**tuned["als"])),
    ]
    for name, model in baselines:
        started = time.perf_counter()
        model.fit(data)
        seconds = time.perf_counter() - started
        scores = score_lists(_model_lists(model, data, target, kmax), target, data, config.k)
        results.append(Result(str(protocol), name, model.params(), scores, seconds))
        say(f"{protocol}: {name} NDCG@10 {scores[min(config.k)].ndcg:.4f}")
    pcfg = replace(config.pipeline, ease=dict(tuned["ease"]), item_knn=dict(tuned["item_knn"]),
                   als={k: v for k, v in tuned["als"].items() if k != "seed"}, seed=config.seed)
    started = time.perf_counter()
    pipeline = Pipeline(pcfg).fit(data, protocol, progress=lambda m: say(f"{protocol}: pipeline: {m}"))
    seconds = time.perf_counter() - started
    ranked, _ = pipeline.recommend(data.matrix[target.rows], data.times[target.rows], kmax)
    scores = score_lists(ranked, target, data, config.k)
    results.append(Result(str(protocol), "pipeline", {"candidates": pcfg.candidates, "folds": pcfg.folds},
                          scores, seconds))
    say(f"{protocol}: pipeline NDCG@10 {scores[min(config.k)].ndcg:.4f}")
    return results


def run(interactions: Interactions, catalog: Catalog, config: EvalConfig, progress: Progress | None = None
        ) -> list[Result]:
    say = progress or (lambda _m: None)
    out: list[Result] = []
    for protocol in config.protocols:
        out += run_protocol(interactions, catalog, protocol, config, say)
    return out


def table(results: list[Result], ks: tuple[int, ...]) -> str:
    """A fixed-width comparison table, one line per (protocol, model)."""
    lo, hi = min(ks), max(ks)
    head = (f"{'protocol':9} {'model':13} {f'NDCG@{lo}':>8} {f'Recall@{hi}':>9} {f'NDCG@{hi}':>8} "
            f"{f'Recall@{lo}':>9} {f'MAP@{lo}':>7} {f'Cov@{hi}':>7} {f'Novelty@{hi}':>10} {'fit s':>6}")
    lines = [head, "-" * len(head)]
    for r in results:
        a, b = r.at[lo], r.at[hi]
        lines.append(f"{r.protocol:9} {r.model:13} {a.ndcg:8.4f} {b.recall:9.4f} {b.ndcg:8.4f} {a.recall:9.4f} "
                     f"{a.map:7.4f} {b.coverage:7.4f} {b.novelty:10.3f} {r.fit_seconds:6.1f}")
    return "\n".join(lines)
