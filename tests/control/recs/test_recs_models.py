"""One contract, run on every model: fit, score, save/load without pickle, determinism under a seed."""

from __future__ import annotations

import builtins
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import scipy.sparse as sp

from control.recs.bundle import load_bundle, save_bundle
from control.recs.data import Catalog, Interactions
from control.recs.dataset import TrainData, build
from control.recs.errors import ModelError
from control.recs.metrics import evaluate
from control.recs.models.als import ALS
from control.recs.models.base import Recommender, item_counts
from control.recs.models.content import ContentBased
from control.recs.models.ease import EASE, ease_weights
from control.recs.models.knn import ItemKNN, RP3Beta
from control.recs.models.ncf import NCF, torch_available
from control.recs.models.popularity import MostPopular, Trending
from control.recs.pipeline import Pipeline, PipelineConfig
from control.recs.ranker import RankerParams
from control.recs.splits import positives, random_split


@pytest.fixture(scope="module")
def split_data(synth: tuple[Interactions, Catalog]) -> tuple[TrainData, np.ndarray, list[list[int]]]:
    inter, catalog = synth
    s = random_split(positives(inter, 0.0), seed=0)
    data = build(s.train, catalog)
    u_idx, i_idx = data.user_index(), data.item_index()
    users = sorted(s.test)
    return data, np.array([u_idx[u] for u in users]), [[i_idx[i] for i in s.test[u]] for u in users]


class ContractTests:
    """Mixin: subclasses say how to build the model and how much better than chance it must be."""

    min_lift = 1.5  # NDCG@10 over a random ranking's, on the synthetic taste groups

    def make(self, seed: int = 0) -> Recommender:
        raise NotImplementedError

    def test_scores_have_the_catalogue_shape(self, synth_data: TrainData) -> None:
        model = self.make().fit(synth_data)
        scores = model.score(synth_data.matrix[:5])
        assert scores.shape == (5, synth_data.n_items) and scores.dtype == np.float32
        assert np.isfinite(scores).all()

    def test_recommend_never_returns_history(self, synth_data: TrainData) -> None:
        model = self.make().fit(synth_data)
        history = synth_data.matrix[:20]
        idx, _ = model.recommend(history, 10)
        for row in range(20):
            assert not set(idx[row]) & set(history[row].indices)

    def test_save_load_round_trip_gives_equal_scores(self, synth_data: TrainData, tmp_path: Path) -> None:
        model = self.make().fit(synth_data)
        model.save(tmp_path / "m.npz")
        loaded = type(model).load(tmp_path / "m.npz")
        assert loaded.params() == model.params()
        np.testing.assert_array_equal(loaded.score(synth_data.matrix[:10]), model.score(synth_data.matrix[:10]))

    def test_deterministic_under_a_seed(self, synth_data: TrainData) -> None:
        a = self.make(seed=3).fit(synth_data).score(synth_data.matrix[:10])
        b = self.make(seed=3).fit(synth_data).score(synth_data.matrix[:10])
        np.testing.assert_array_equal(a, b)

    def test_beats_a_random_ranking(self, split_data: tuple[TrainData, np.ndarray, list[list[int]]]) -> None:
        data, rows, held = split_data
        idx, _ = self.make().fit(data).recommend(data.matrix[rows], 10)
        ours = evaluate(idx, held, 10, item_counts(data), data.n_users).ndcg
        rng = np.random.default_rng(0)
        chance = np.mean([evaluate(np.array([rng.permutation(data.n_items)[:10] for _ in rows]), held, 10,
                                   item_counts(data), data.n_users).ndcg for _ in range(5)])
        assert ours > self.min_lift * chance

    def test_misuse_is_a_typed_error(self, synth_data: TrainData, tmp_path: Path) -> None:
        model = self.make()
        with pytest.raises(ModelError, match="before fit"):
            model.score(synth_data.matrix[:1])
        with pytest.raises(ModelError):
            model.save(tmp_path / "x.npz")
        model.fit(synth_data)
        with pytest.raises(ModelError, match="items"):
            model.score(sp.csr_matrix((1, synth_data.n_items + 1), dtype=np.float32))
        model.save(tmp_path / "m.npz")
        other = MostPopular if not isinstance(model, MostPopular) else EASE
        with pytest.raises(ModelError, match="holds a"):
            other.load(tmp_path / "m.npz")
        (tmp_path / "junk.npz").write_bytes(b"not a zip file at all")
        with pytest.raises(ModelError, match="not a saved model"):
            type(model).load(tmp_path / "junk.npz")


class TestMostPopular(ContractTests):
    def make(self, seed: int = 0) -> Recommender:
        return MostPopular()


class TestTrending(ContractTests):
    min_lift = 0.0  # the synthetic log has no trend; the contract still applies

    def make(self, seed: int = 0) -> Recommender:
        return Trending(half_life_days=30.0)


class TestItemKNN(ContractTests):
    min_lift = 2.0

    def make(self, seed: int = 0) -> Recommender:
        return ItemKNN(neighbours=50, shrink=5.0)


class TestRP3Beta(ContractTests):
    min_lift = 2.0

    def make(self, seed: int = 0) -> Recommender:
        return RP3Beta(neighbours=50)


class TestContent(ContractTests):
    min_lift = 1.5

    def make(self, seed: int = 0) -> Recommender:
        return ContentBased()


class TestEASE(ContractTests):
    min_lift = 2.0

    def make(self, seed: int = 0) -> Recommender:
        return EASE(lam=50.0)


class TestALS(ContractTests):
    min_lift = 2.0

    def make(self, seed: int = 0) -> Recommender:
        return ALS(factors=16, reg=5.0, alpha=5.0, iterations=6, seed=seed)


needs_torch = pytest.mark.skipif(
    not torch_available(),
    reason="PyTorch not installed: NCF trains only with the optional 'neural' extra (pip install -e '.[neural]')")


@needs_torch
class TestNCF(ContractTests):
    """NeuMF (both towers); tiny and few epochs so the whole class runs in seconds."""

    min_lift = 3.0  # ~6x chance on the synthetic taste groups

    def make(self, seed: int = 0) -> Recommender:
        return NCF(gmf_dim=8, mlp_dim=8, layers=(16, 8), negatives=4, epochs=8, batch_size=512, lr=1e-2, seed=seed)


@needs_torch
class TestGMF(ContractTests):
    """NCF with the GMF tower alone, trained with BPR: the other loss and the MLP-less path."""

    min_lift = 3.0

    def make(self, seed: int = 0) -> Recommender:
        return NCF(gmf_dim=8, mlp_dim=0, negatives=4, epochs=8, batch_size=512, lr=1e-2, loss="bpr", seed=seed)


@needs_torch
def test_ncf_numpy_scores_equal_the_torch_forward(synth_data: TrainData) -> None:
    """The serving path (numpy, first MLP layer split per side, chunked) computes the trained network."""
    import torch

    model = NCF(gmf_dim=4, mlp_dim=4, layers=(8, 4), epochs=2, seed=1).fit(synth_data)
    history = synth_data.matrix[:7]
    w = {k: torch.from_numpy(v) for k, v in model.weights.items()}
    h = torch.from_numpy(history[:, model.weights["active"]].toarray())
    norm = h.sum(dim=1, keepdim=True).clamp(min=1.0) ** -model.alpha
    n_act = len(model.weights["active"])
    pu_g, pu_m = (h @ w["g_ctx"]) * norm, (h @ w["m_ctx"]) * norm
    gmf = (pu_g[:, None, :] * w["g_item"][None, :, :]).reshape(-1, 4)
    z = torch.cat([pu_m.repeat_interleave(n_act, dim=0), w["m_item"].repeat(7, 1)], dim=1)
    for li in range(2):
        z = torch.relu(torch.nn.functional.linear(z, w[f"mlp{li}_w"], w[f"mlp{li}_b"]))
    expected = (torch.cat([gmf, z], dim=1) @ w["out_w"]).view(7, n_act) + w["item_bias"]
    got = model.score(history)[:, model.weights["active"]]
    np.testing.assert_allclose(got, expected.numpy(), rtol=1e-4, atol=1e-5)


@needs_torch
def test_saved_ncf_loads_and_scores_without_torch(synth_data: TrainData, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    model = NCF(gmf_dim=4, mlp_dim=4, layers=(8,), epochs=1).fit(synth_data)
    model.save(tmp_path / "ncf.npz")
    real_import = builtins.__import__

    def no_torch(name: str, *args: Any, **kwargs: Any) -> Any:
        if name == "torch" or name.startswith("torch."):
            raise ImportError(f"{name} blocked by this test")
        return real_import(name, *args, **kwargs)

    # not sys.modules["torch"] = None: scipy's array-API helpers read sys.modules["torch"] directly
    monkeypatch.setattr(builtins, "__import__", no_torch)
    assert not torch_available()
    loaded = NCF.load(tmp_path / "ncf.npz")
    np.testing.assert_array_equal(loaded.score(synth_data.matrix[:5]), model.score(synth_data.matrix[:5]))
    with pytest.raises(ModelError, match="neural"):
        NCF().fit(synth_data)


def test_ncf_rejects_a_model_without_towers() -> None:
    with pytest.raises(ModelError, match="tower"):
        NCF(gmf_dim=0, mlp_dim=0)
    with pytest.raises(ModelError, match="loss"):
        NCF(loss="mse")


@needs_torch
def test_ncf_trains_past_empty_profiles_and_leaves_torch_threads_alone(synth: tuple[Interactions, Catalog]) -> None:
    import torch

    inter, catalog = synth
    data = build(inter, catalog, extra_users=("ghost",))  # a profile with no positive at all
    before = torch.get_num_threads()
    model = NCF(gmf_dim=4, mlp_dim=4, layers=(8,), epochs=2, threads=1).fit(data)
    assert torch.get_num_threads() == before
    ghost = data.user_index()["ghost"]
    assert np.isfinite(model.score(data.matrix[[0, ghost]])).all()


@needs_torch
def test_titles_nobody_holds_rank_last_under_ncf(synth: tuple[Interactions, Catalog]) -> None:
    inter, catalog = synth
    data = build(inter.take(inter.items != "t0"), catalog)
    t0 = data.item_index()["t0"]
    scores = NCF(gmf_dim=4, mlp_dim=0, epochs=1).fit(data).score(data.matrix[:5])
    assert (scores[:, t0] < np.delete(scores, t0, axis=1).min(axis=1)).all()


class PipelineModel(Recommender):
    """The full pipeline seen through the model contract, so the same mixin checks it (saved as a bundle)."""

    kind = "pipeline"

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        self.seed = seed
        self.pipeline = Pipeline(PipelineConfig(
            candidates=30, folds=2, ease={"lam": 20.0}, als={"factors": 16, "reg": 5.0, "iterations": 6},
            item_knn={"neighbours": 30, "shrink": 5.0}, rp3beta={"neighbours": 30},
            ranker=RankerParams(rounds=40, early_stopping=10), seed=seed))

    def fit(self, data: TrainData) -> PipelineModel:
        self.pipeline.fit(data)
        self.n_items = data.n_items
        return self

    def _score(self, history: sp.csr_matrix) -> np.ndarray:
        return self.pipeline.score(history)

    def params(self) -> dict[str, Any]:
        return {"seed": self.seed}

    def _arrays(self) -> dict[str, np.ndarray]:
        raise NotImplementedError("saved as a bundle directory")

    def _restore(self, arrays: dict[str, np.ndarray]) -> None:
        raise NotImplementedError("loaded from a bundle directory")

    def save(self, path: Path) -> None:
        save_bundle(self.pipeline, path)

    @classmethod
    def load(cls, path: Path) -> PipelineModel:
        pipeline = load_bundle(path)
        model = cls(seed=pipeline.config.seed)
        model.pipeline = pipeline
        model.n_items = pipeline.n_items
        return model


class TestPipeline(ContractTests):
    min_lift = 2.0

    def make(self, seed: int = 0) -> Recommender:
        return PipelineModel(seed=seed)

    def test_misuse_is_a_typed_error(self, synth_data: TrainData, tmp_path: Path) -> None:
        model = self.make()
        with pytest.raises(ModelError, match="before fit"):
            model.score(synth_data.matrix[:1])
        with pytest.raises(ModelError, match="not fitted"):
            model.save(tmp_path / "b")
        with pytest.raises(ModelError, match="not a valid bundle"):
            PipelineModel.load(tmp_path / "nothing-here")


def test_ease_woodbury_equals_direct_inverse() -> None:
    rng = np.random.default_rng(0)
    wide = sp.csr_matrix((rng.random((15, 40)) < 0.3).astype(np.float32))
    wide = wide[:, np.asarray(wide.sum(axis=0)).ravel() > 0]
    lam = 7.0
    g = (wide.T @ wide).toarray().astype(np.float64) + lam * np.eye(wide.shape[1])
    p = np.linalg.inv(g)
    direct = -p / np.diag(p)[np.newaxis, :]
    np.fill_diagonal(direct, 0.0)
    np.testing.assert_allclose(ease_weights(wide, lam), direct, atol=1e-5)


def test_item_knn_links_co_watched_titles() -> None:
    users = np.array(["a", "a", "b", "b", "c", "c", "d"])
    items = np.array(["x", "y", "x", "y", "z", "w", "z"])
    inter = Interactions(users, items, np.ones(7), np.arange(7, dtype=np.int64))
    data = build(inter, Catalog())
    model = ItemKNN(neighbours=5, shrink=0.0).fit(data)
    i_idx = data.item_index()
    history = sp.csr_matrix(([1.0], ([0], [i_idx["x"]])), shape=(1, data.n_items), dtype=np.float32)
    idx, _ = model.recommend(history, 1)
    assert data.item_ids[idx[0, 0]] == "y"


def test_content_reaches_titles_nobody_watched(synth: tuple[Interactions, Catalog]) -> None:
    inter, catalog = synth
    data = build(inter.take(inter.items != "t0"), catalog)
    assert item_counts(data)[data.item_index()["t0"]] == 0
    genre0 = [data.item_index()[f"t{i}"] for i in range(6, 60, 6)]  # t0's genre
    history = sp.csr_matrix((np.ones(len(genre0)), ([0] * len(genre0), genre0)), shape=(1, data.n_items))
    scores = ContentBased().fit(data).score(history)
    assert scores[0, data.item_index()["t0"]] > np.median(scores)


def test_trending_favours_rising_titles_over_merely_big_ones() -> None:
    day = 86_400
    now = 1_000 * day
    users, items, stamps = [], [], []
    for u in range(10):  # "steady": watched all year round, including lately
        for k, age in enumerate((1, 100, 200, 300)):
            users.append(f"s{u}-{k}")
            items.append("steady")
            stamps.append(now - age * day)
    for u in range(10):  # "rising": only lately, as many recent plays as steady
        users.append(f"r{u}")
        items.append("rising")
        stamps.append(now - 1 * day)
    users.append("old")
    items.append("old")
    stamps.append(now - 900 * day)
    inter = Interactions(np.array(users), np.array(items), np.ones(len(users)), np.array(stamps, dtype=np.int64))
    data = build(inter, Catalog())
    scores = Trending(half_life_days=14.0, long_half_life_days=180.0).fit(data).score(data.matrix[:1])[0]
    i = data.item_index()
    assert scores[i["rising"]] > scores[i["steady"]] > scores[i["old"]]
