"""The re-ranker's pure core: contract checks, feature columns, ordering, local trending, recent demand."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

from edge.rerank import (
    EDGE_FEATURES,
    MAX_ITEMS,
    CandidateError,
    Context,
    RecentDemand,
    check_spec,
    features,
    order_rows,
    parse_candidates,
    trending_row,
)


def doc(rows: int = 2, items: int = 3) -> dict[str, Any]:
    return {"profile_id": "p1", "affinities": {"drama": 0.5},
            "rows": [{"id": f"r{r}", "title": f"Row {r}",
                      "items": [{"title_id": f"t{r}-{i}", "score": 1.0 - i / 10, "artwork": [f"a{i}", "b"]}
                                for i in range(items)]} for r in range(rows)]}


def test_parse_keeps_rows_and_items_in_order() -> None:
    c = parse_candidates(doc(), "p1")
    assert [r.id for r in c.rows] == ["r0", "r1"]
    assert [i.title_id for i in c.rows[1].items] == ["t1-0", "t1-1", "t1-2"]
    assert c.rows[0].items[0].artwork == ("a0", "b") and c.affinities == {"drama": 0.5}


@pytest.mark.parametrize("mutate", [
    lambda d: d.update(rows="nope"),
    lambda d: d.update(profile_id="someone-else"),
    lambda d: d["rows"][0].update(id="../etc"),
    lambda d: d["rows"][0]["items"][0].update(title_id="a b"),
    lambda d: d["rows"][0]["items"][0].update(score=float("nan")),
    lambda d: d["rows"][0]["items"][0].update(score=True),
    lambda d: d["rows"][0]["items"][0].update(artwork=["x", "x"]),
    lambda d: d["rows"][0]["items"][0].update(artwork="x"),
    lambda d: d["rows"][0]["items"].append(dict(d["rows"][0]["items"][0])),
    lambda d: d["rows"][0].update(items=[{"title_id": f"t{i}"} for i in range(MAX_ITEMS + 1)]),
    lambda d: d.update(rows=[{"id": f"r{i}", "items": []} for i in range(51)]),
    lambda d: d.update(affinities={"drama": "high"}),
    lambda d: d["rows"].append(7),
])
def test_contract_breaches_are_refused_whole(mutate: Any) -> None:
    d = doc()
    mutate(d)
    with pytest.raises(CandidateError):
        parse_candidates(d, "p1")


def test_spec_must_name_only_edge_features() -> None:
    assert check_spec({"features": ["cached_here", "cp_score"]}) == ("cached_here", "cp_score")
    bads: list[Any] = [{"features": ["cp_score", "user_log_history"]}, {"features": []}, [],
                       {"features": ["cp_score"] * 2}]
    for bad in bads:
        with pytest.raises(CandidateError):
            check_spec(bad)


def test_features_follow_the_spec_order_and_local_context() -> None:
    c = parse_candidates(doc(rows=1, items=3), "p1")
    ctx = Context({"t0-1": 9, "t0-2": 1}, lambda t: t == "t0-2", hour=6, device="tv")
    x = features(EDGE_FEATURES, c.rows, ctx)
    col = {n: x[:, i] for i, n in enumerate(EDGE_FEATURES)}
    assert x.shape == (3, len(EDGE_FEATURES)) and x.dtype == np.float32
    np.testing.assert_allclose(col["cp_score"], [1.0, 0.9, 0.8])
    np.testing.assert_allclose(col["cp_log_rank"], [0, math.log(2), math.log(3)], rtol=1e-6)
    np.testing.assert_allclose(col["local_log_demand"], [0, math.log(10), math.log(2)], rtol=1e-6)
    np.testing.assert_allclose(col["local_demand_share"], [0, 0.9, 0.1], rtol=1e-6)
    assert col["cached_here"].tolist() == [0, 0, 1]
    np.testing.assert_allclose(col["hour_sin"], 1.0, atol=1e-6)
    assert col["device_tv"].tolist() == [1, 1, 1] and col["device_other"].tolist() == [0, 0, 0]
    phone = features(("device_other",), c.rows, Context({}, lambda t: False, 0, "fridge"))
    assert phone[:, 0].tolist() == [1, 1, 1]


def test_order_rows_sorts_within_rows_and_refuses_bad_scores() -> None:
    c = parse_candidates(doc(rows=2, items=3), "p1")
    out = order_rows(c.rows, np.array([1, 3, 2, 0, 0, 5], dtype=np.float32))
    assert [it.title_id for it, _ in out[0]] == ["t0-1", "t0-2", "t0-0"]
    assert [it.title_id for it, _ in out[1]] == ["t1-2", "t1-0", "t1-1"]  # ties keep the control order
    for bad in (np.zeros(5, np.float32), np.array([0, 0, 0, 0, 0, np.nan], np.float32)):
        with pytest.raises(CandidateError):
            order_rows(c.rows, bad)


def test_trending_row_is_local_demand_descending() -> None:
    row = trending_row({"b": 3, "a": 3, "c": 7, "z": 0}, limit=3)
    assert [i.title_id for i in row.items] == ["c", "a", "b"]
    assert trending_row({}).items == ()


def test_recent_demand_slides_and_stays_bounded() -> None:
    d = RecentDemand(window_s=120, bucket_s=60, max_titles=2)
    d.add("a", 0)
    d.add("a", 30)
    d.add("b", 61)
    d.add("c", 62)
    d.add("d", 63)  # third distinct title in this bucket: dropped
    assert dict(d.counts(63)) == {"a": 2, "b": 1, "c": 1}
    assert dict(d.counts(125)) == {"b": 1, "c": 1}
    assert dict(d.counts(500)) == {}
