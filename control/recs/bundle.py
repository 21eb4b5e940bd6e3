"""Save a fitted pipeline as a directory the rollout issue can compress, sign and ship, and load it back.

Layout (every file loads without pickle)::

    pipeline.json        format version, config, feature spec, generator names, item count
    items.json           item ids in index order (the columns of every table)
    generators/NAME.npz  one model per generator (Recommender.save)
    stats.npz            per-title statistics the features need
    ranker.ubj           the XGBoost model in its own binary format (+ ranker.json: its feature names)

The feature spec is checked on load: a bundle whose ranker expects other columns than this code computes
is refused rather than silently mis-scored.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from control.recs.errors import ModelError
from control.recs.features import ItemStats
from control.recs.models.als import ALS
from control.recs.models.base import Recommender, load_csr, save_csr
from control.recs.models.content import ContentBased
from control.recs.models.ease import EASE
from control.recs.models.knn import ItemKNN, RP3Beta
from control.recs.models.ncf import NCF
from control.recs.models.popularity import MostPopular, Trending
from control.recs.pipeline import Pipeline, PipelineConfig
from control.recs.ranker import Ranker, RankerParams

FORMAT = 1
_KINDS: dict[str, type[Recommender]] = {
    cls.kind: cls for cls in (ALS, ContentBased, EASE, ItemKNN, RP3Beta, MostPopular, Trending, NCF)
}


def _save_stats(stats: ItemStats, path: Path) -> None:
    with path.open("wb") as fh:
        np.savez(fh, allow_pickle=False, log_pop=stats.log_pop, year=stats.year, first=stats.first, mean=stats.mean,
                 recent_share=stats.recent_share, monthly=stats.monthly,
                 scalars=np.array([stats.month0, stats.now]), **save_csr("genres", stats.genres))


def _load_stats(path: Path) -> ItemStats:
    with np.load(path, allow_pickle=False) as z:
        a = {k: z[k] for k in z.files}
    return ItemStats(a["log_pop"], a["year"], a["first"], a["mean"], a["recent_share"], load_csr("genres", a),
                     float(a["scalars"][0]), a["monthly"], float(a["scalars"][1]))


def save_bundle(pipeline: Pipeline, directory: Path) -> None:
    if pipeline.ranker is None or pipeline.stats is None:
        raise ModelError("bundle: the pipeline is not fitted")
    (directory / "generators").mkdir(parents=True, exist_ok=True)
    for name, model in pipeline.generators.items():
        model.save(directory / "generators" / f"{name}.npz")
    _save_stats(pipeline.stats, directory / "stats.npz")
    pipeline.ranker.save(directory)
    (directory / "items.json").write_text(json.dumps(list(pipeline.item_ids)))
    config = asdict(pipeline.config)
    spec = {"format": FORMAT, "config": config, "features": list(pipeline.feature_names),
            "generators": [[name, m.kind] for name, m in pipeline.generators.items()], "n_items": pipeline.n_items}
    (directory / "pipeline.json").write_text(json.dumps(spec, indent=2, sort_keys=True))


def _config(raw: dict[str, Any]) -> PipelineConfig:
    ranker = RankerParams(**raw.pop("ranker"))
    return PipelineConfig(**raw, ranker=ranker)


def load_bundle(directory: Path) -> Pipeline:
    try:
        spec = json.loads((directory / "pipeline.json").read_text())
        if spec.get("format") != FORMAT:
            raise ModelError(f"{directory}: bundle format {spec.get('format')!r}, this code reads {FORMAT}")
        pipeline = Pipeline(_config(dict(spec["config"])))
        generators: dict[str, Recommender] = {}
        for name, kind in spec["generators"]:  # a list: feature columns follow this order
            if kind not in _KINDS:
                raise ModelError(f"{directory}: unknown generator kind {kind!r}")
            generators[name] = _KINDS[kind].load(directory / "generators" / f"{name}.npz")
        items = json.loads((directory / "items.json").read_text())
        stats = _load_stats(directory / "stats.npz")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ModelError(f"{directory}: not a valid bundle ({exc})") from None
    ranker = Ranker.load(directory)
    expected = pipeline.feature_names
    if tuple(spec["features"]) != expected or ranker.feature_names != expected or tuple(generators) != tuple(
            pipeline.config.make_generators()):
        raise ModelError(f"{directory}: feature spec does not match this code's features")
    if not isinstance(items, list) or len(items) != spec["n_items"] or any(m.n_items != len(items)
                                                                           for m in generators.values()):
        raise ModelError(f"{directory}: item tables disagree on the catalogue size")
    pipeline.generators = generators
    pipeline.ranker = ranker
    pipeline.stats = stats
    pipeline.item_ids = tuple(str(i) for i in items)
    return pipeline
