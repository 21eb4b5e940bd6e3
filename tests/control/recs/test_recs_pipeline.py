"""The pipeline end to end on a small synthetic log, and its bundle round trip."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

from control.recs.bundle import load_bundle, save_bundle
from control.recs.data import Catalog, Interactions
from control.recs.dataset import TrainData, build
from control.recs.errors import ModelError
from control.recs.metrics import evaluate
from control.recs.models.base import item_counts
from control.recs.models.popularity import MostPopular
from control.recs.pipeline import Pipeline, PipelineConfig
from control.recs.ranker import RankerParams
from control.recs.splits import Protocol, positives, random_split


def small_config(seed: int = 0) -> PipelineConfig:
    return PipelineConfig(candidates=30, folds=2, ease={"lam": 20.0}, als={"factors": 16, "reg": 5.0, "iterations": 6},
                          item_knn={"neighbours": 30, "shrink": 5.0}, rp3beta={"neighbours": 30},
                          ranker=RankerParams(rounds=40, early_stopping=10), seed=seed)


@pytest.fixture(scope="module")
def fitted(synth: tuple[Interactions, Catalog]) -> tuple[Pipeline, TrainData, dict[str, tuple[str, ...]]]:
    inter, catalog = synth
    s = random_split(positives(inter, 0.0), seed=0)
    data = build(s.train, catalog)
    return Pipeline(small_config()).fit(data, Protocol.RANDOM), data, s.test


def test_pipeline_beats_popularity_on_held_out_titles(
        fitted: tuple[Pipeline, TrainData, dict[str, tuple[str, ...]]]) -> None:
    pipeline, data, test = fitted
    u_idx, i_idx = data.user_index(), data.item_index()
    users = sorted(test)
    rows = np.array([u_idx[u] for u in users])
    held = [[i_idx[i] for i in test[u]] for u in users]
    ours, _ = pipeline.recommend(data.matrix[rows], data.times[rows], 10)
    pop, _ = MostPopular().fit(data).recommend(data.matrix[rows], 10)
    counts = item_counts(data)
    baseline = evaluate(pop, held, 10, counts, data.n_users).ndcg
    assert evaluate(ours, held, 10, counts, data.n_users).ndcg > 1.2 * baseline


def test_recommendations_exclude_history_and_exclusions(
        fitted: tuple[Pipeline, TrainData, dict[str, tuple[str, ...]]]) -> None:
    pipeline, data, _ = fitted
    history = data.matrix[:8]
    exclude = sp.csr_matrix(([1.0] * 8, (range(8), [0] * 8)), shape=(8, data.n_items))
    idx, scores = pipeline.recommend(history, data.times[:8], 15, exclude=exclude)
    for r in range(8):
        assert not set(idx[r]) & set(history[r].indices)
        assert 0 not in idx[r]
        assert len(set(idx[r])) == 15
        assert np.all(np.diff(scores[r]) <= 0)


def test_cold_start_profile_gets_a_full_list(fitted: tuple[Pipeline, TrainData, dict[str, tuple[str, ...]]]) -> None:
    pipeline, data, _ = fitted
    idx, scores = pipeline.recommend(sp.csr_matrix((1, data.n_items), dtype=np.float32), None, 10)
    assert len(set(idx[0])) == 10 and np.isfinite(scores).all()


def test_fit_is_deterministic_under_a_seed(synth: tuple[Interactions, Catalog],
                                           fitted: tuple[Pipeline, TrainData, dict[str, tuple[str, ...]]]) -> None:
    pipeline, data, _ = fitted
    again = Pipeline(small_config()).fit(data, Protocol.RANDOM)
    np.testing.assert_array_equal(again.score(data.matrix[:10], data.times[:10]),
                                  pipeline.score(data.matrix[:10], data.times[:10]))


def test_bundle_round_trip_scores_equal(fitted: tuple[Pipeline, TrainData, dict[str, tuple[str, ...]]],
                                        tmp_path: Path) -> None:
    pipeline, data, _ = fitted
    save_bundle(pipeline, tmp_path / "b")
    assert (tmp_path / "b" / "ranker.ubj").is_file()
    loaded = load_bundle(tmp_path / "b")
    assert loaded.item_ids == pipeline.item_ids
    np.testing.assert_array_equal(loaded.score(data.matrix[:10], data.times[:10]),
                                  pipeline.score(data.matrix[:10], data.times[:10]))


def test_bundle_with_a_foreign_feature_spec_is_refused(
        fitted: tuple[Pipeline, TrainData, dict[str, tuple[str, ...]]], tmp_path: Path) -> None:
    pipeline, _, _ = fitted
    save_bundle(pipeline, tmp_path / "b")
    spec = json.loads((tmp_path / "b" / "pipeline.json").read_text())
    spec["features"] = spec["features"][:-1]
    (tmp_path / "b" / "pipeline.json").write_text(json.dumps(spec))
    with pytest.raises(ModelError, match="feature spec"):
        load_bundle(tmp_path / "b")
    (tmp_path / "b" / "pipeline.json").write_text("{not json")
    with pytest.raises(ModelError, match="not a valid bundle"):
        load_bundle(tmp_path / "b")


def test_unfitted_pipeline_is_a_typed_error(tmp_path: Path) -> None:
    with pytest.raises(ModelError):
        Pipeline().recommend(sp.csr_matrix((1, 3)), None, 2)
    with pytest.raises(ModelError):
        save_bundle(Pipeline(), tmp_path)
