"""Edge re-ranker training and bundles built on the control plane, loaded by the edge's own loader."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest

from control import edge_model
from control.bundles import BundleRepo
from control.store import TitleRecord
from edge.models import load_model
from edge.rerank import EDGE_FEATURES
from shared import bundle
from shared.errors import Conflict, InvalidInput, NotFound
from shared.signing import Signer, parse_public_keys


def _titles(root: Path) -> list[TitleRecord]:
    titles = [TitleRecord("t-ocean", "Ocean Hours", ("documentary", "nature"), "1", 10, "", 0.0),
              TitleRecord("t-heist", "The Quiet Heist", ("thriller", "crime"), "2", 10, "", 0.0),
              TitleRecord("t-caper", "Caper", ("crime", "comedy"), "1", 10, "", 0.0)]
    art = root / "origin" / "t-heist" / "artwork"
    art.mkdir(parents=True)
    for name in ("candidate_00.jpg", "candidate_01.jpg"):
        (art / name).write_bytes(b"\xff\xd8")
    return titles


def test_synthetic_log_is_seeded_and_the_ranker_beats_the_control_order() -> None:
    a = edge_model.synthetic_log(7, ["t1", "t2"], pages=300, now=1e9)
    assert a == edge_model.synthetic_log(7, ["t1", "t2"], pages=300, now=1e9)
    assert a != edge_model.synthetic_log(8, ["t1", "t2"], pages=300, now=1e9)
    assert {"t1", "t2"} <= {it.title_id for p in a for it in p.items}
    trained = edge_model.train(edge_model.synthetic_log(1, [], pages=600), seed=1)
    m = trained.metrics
    assert m["ndcg@10"] > m["ndcg@10_control_order"] and m["ndcg@10_lift"] > 1.05, m
    assert trained.booster.num_features() == len(EDGE_FEATURES)


def test_features_are_the_edges_own() -> None:
    page = edge_model.LoggedPage(0.0, 21, "tv", 100, [edge_model.LoggedItem("a", 0.9, 30, True, True),
                                                      edge_model.LoggedItem("b", 0.5, 10, False, False)])
    x = edge_model.page_matrix(page)
    col = {name: i for i, name in enumerate(edge_model.FEATURES)}
    assert x.shape == (2, len(EDGE_FEATURES))
    assert x[0, col["cp_score"]] == pytest.approx(0.9) and x[1, col["cp_log_rank"]] == pytest.approx(np.log(2))
    assert x[0, col["local_demand_share"]] == pytest.approx(0.3)  # share of the appliance's total, not the page's
    assert x[:, col["cached_here"]].tolist() == [1.0, 0.0] and x[0, col["device_tv"]] == 1.0


def test_the_impression_log_is_used_when_big_enough(tmp_path: Path) -> None:
    logs = tmp_path / "edge-impressions"
    logs.mkdir()
    pages = edge_model.synthetic_log(3, [], pages=250)
    from shared.schema import encode

    lines = [json.dumps(encode(p)) for p in pages] + ["{not json", json.dumps({"ts": 1, "hour": 99})]
    (logs / "day1.jsonl").write_text("\n".join(lines) + "\n")
    data = edge_model.training_log(logs, 0, [])
    useful = sum(1 for p in pages if any(i.played for i in p.items))
    assert data.source == "log" and len(data.pages) == 250 and "2 lines refused" in data.notes
    assert f"({useful} with a play)" in data.notes
    synthetic = edge_model.training_log(logs, 0, [], source="synthetic", synthetic_pages=60)
    assert synthetic.source == "synthetic" and synthetic.notes.startswith("SYNTHETIC")
    (logs / "day1.jsonl").write_text("\n".join(lines[:20]) + "\n")
    auto = edge_model.training_log(logs, 0, [], synthetic_pages=60)
    assert auto.source == "synthetic" and "impression log has" in auto.notes
    with pytest.raises(InvalidInput, match="at least"):
        edge_model.training_log(logs, 0, [], source="log")
    with pytest.raises(InvalidInput):
        edge_model.training_log(logs, 0, [], source="elsewhere")


def test_repo_builds_a_bundle_the_edge_verifies_and_loads(tmp_path: Path) -> None:
    signer = Signer.generate()
    repo = BundleRepo(tmp_path / "edge-models", signer, "http://control:8700/v1/bundles")
    repo.load()
    titles = _titles(tmp_path)
    info = repo.build("v1", titles, tmp_path / "origin", seed=2, synthetic_pages=200)
    assert info.descriptor.url == "http://control:8700/v1/bundles/v1.ncb"
    assert info.metadata["notes"].startswith("SYNTHETIC") and info.metadata["tables"] == sorted(edge_model.TABLES)
    assert info.metadata["offline_metrics"]["ndcg@10"] > 0
    keys = parse_public_keys({signer.key_id: signer.public_key_b64()})
    opened = bundle.open_bundle(repo.path("v1"), info.descriptor, keys, tmp_path / "edge" / "v1")
    model = load_model(opened.path, "v1")  # the edge's loader: spec, booster and warm-up
    assert model.features == tuple(EDGE_FEATURES)
    t = opened.table("titles.npz")
    assert t["title_id"].tolist() == ["t-caper", "t-heist", "t-ocean"] and t["genres"][1] == "thriller|crime"
    assert opened.table("artwork.npz")["artwork_id"].tolist() == ["candidate_00", "candidate_01"]
    n = opened.table("neighbours.npz")
    assert list(zip(n["title_id"].tolist(), n["neighbour_id"].tolist(), strict=True)) == [
        ("t-caper", "t-heist"), ("t-heist", "t-caper")]
    with pytest.raises(Conflict):
        repo.build("v1", titles, tmp_path / "origin")
    # a restarted control plane finds its versions, under its new URL; a damaged index entry is skipped
    (repo.dir / "ghost.json").write_text(json.dumps({"format": 1, "created": time.time(), "metadata": {},
                                                      "descriptor": {**info.descriptor.__dict__, "version": "ghost"}}))
    again = BundleRepo(tmp_path / "edge-models", signer, "http://elsewhere/v1/bundles")
    again.load()
    assert [v.version for v in again.versions()] == ["v1"]
    assert again.descriptor("v1").url == "http://elsewhere/v1/bundles/v1.ncb"
    assert again.descriptor("v1").sha256 == info.descriptor.sha256
    with pytest.raises(NotFound):
        again.get("v2")
    with pytest.raises(InvalidInput):
        again.get("../v1")
