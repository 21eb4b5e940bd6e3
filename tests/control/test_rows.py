"""Homepage rows: no finished titles, no title twice on a page, cold profiles and cold titles."""

from __future__ import annotations

import random
from collections import Counter
from typing import Any

from control.events import ProfileState, parse_event
from control.rows import (
    GLOBAL,
    RowsConfig,
    RowsInput,
    TitleInfo,
    _explore_slot,
    build_rows,
    diversify,
    trending_scores,
)
from edge.rerank import parse_candidates

NOW = 1_800_000_000.0
DAY = 86_400.0
GENRES = ["drama", "comedy", "action", "documentary"]


def catalog(n: int = 40, new: tuple[str, ...] = ()) -> dict[str, TitleInfo]:
    out = {f"t{i:02d}": TitleInfo(f"t{i:02d}", f"Title {i}", (GENRES[i % 4],), NOW - 400 * DAY, (f"a{i}", f"b{i}"))
           for i in range(n)}
    for t in new:
        out[t] = TitleInfo(t, t, ("animation",), NOW - DAY)
    return out


def state(events: list[tuple[str, str, dict[str, Any]]]) -> ProfileState:
    parsed = [parse_event({"event_id": f"e{i}", "type": kind, "profile_id": "p1", "title_id": title,
                           "ts": NOW - 1000 + i, "region": "r1", **extra}, NOW)
              for i, (kind, title, extra) in enumerate(events)]
    return ProfileState.from_events("p1", parsed)


def rows_for(st: ProfileState, titles: dict[str, TitleInfo], *, picks: list[tuple[str, float]] | None,
             plays: dict[str, int] | None = None, config: RowsConfig | None = None) -> dict[str, Any]:
    trend = [(t, 100.0 - i) for i, t in enumerate(sorted(titles))]
    neighbours = [(t, 1.0 / (1 + i)) for i, t in enumerate(sorted(titles, reverse=True))]
    inp = RowsInput(st, titles, trend, plays if plays is not None else {t: 50 for t in titles}, picks,
                    lambda _x: neighbours, NOW)
    return build_rows(inp, config or RowsConfig(), rng=random.Random(1))


def ids(doc: dict[str, Any]) -> dict[str, list[str]]:
    return {r["id"]: [it["title_id"] for it in r["items"]] for r in doc["rows"]}


def test_a_full_page_has_every_row_no_finished_title_and_no_title_twice() -> None:
    titles = catalog(120)
    st = state([("progress", "t01", {"position_s": 30, "duration_s": 100}),
                ("complete", "t02", {}), ("complete", "t04", {}), ("thumbs", "t05", {"value": "down"}),
                ("complete", "t06", {}), ("complete", "t06", {})])  # t06 is rewatched
    picks = [(t, 1.0 - i / 100) for i, t in enumerate(sorted(titles))]
    doc = rows_for(st, titles, picks=picks)
    got = ids(doc)
    assert [r for r in got if r != "discovery"] == ["continue-watching", "because-you-watched", "top-picks",
                                                    "trending"]
    assert "discovery" in got
    assert got["continue-watching"] == ["t01"]
    everything = [t for items in got.values() for t in items]
    assert len(everything) == len(set(everything)), "a title appears in two rows"
    assert not {"t02", "t04", "t05"} & set(everything), "finished or disliked titles offered"
    assert "t06" in everything  # rewatch signals let it back in
    byw = next(r for r in doc["rows"] if r["id"] == "because-you-watched")
    assert byw["seed"] == "t06" and byw["title"] == "Because you watched Title 6"
    # the edge accepts the document as it is
    parsed = parse_candidates(doc, "p1")
    assert len(parsed.rows) == len(doc["rows"]) and parsed.affinities


def test_a_new_profile_gets_regional_trending_and_a_discovery_row() -> None:
    titles = catalog(12)
    doc = rows_for(ProfileState("new"), titles, picks=None)
    got = ids(doc)
    assert "continue-watching" not in got and "because-you-watched" not in got
    top = next(r for r in doc["rows"] if r["id"] == "top-picks")
    assert top["source"] == "trending" and got["top-picks"][0] == "t00"
    assert doc["region"] == GLOBAL


def test_a_new_title_reaches_the_discovery_row_and_usual_genres_stay_out() -> None:
    titles = catalog(40, new=("fresh",))
    st = state([("complete", f"t{i:02d}", {}) for i in (0, 4, 8, 12)])  # a drama fan
    doc = rows_for(st, titles, picks=[(t, 1.0) for t in sorted(titles) if t != "fresh"],
                   plays={t: 50 for t in titles} | {"fresh": 0})
    disc = ids(doc)["discovery"]
    assert disc[0] == "fresh"
    assert all(titles[t].genres != ("drama",) for t in disc)


def test_diversify_breaks_long_runs_of_one_genre() -> None:
    genres = {"a": ["x"], "b": ["x"], "c": ["x"], "d": ["y"], "e": ["x"]}
    out = [t for t, _ in diversify([(t, 1.0) for t in "abcde"], genres, 2)]
    assert out == ["a", "b", "d", "c", "e"]
    # nothing else to interleave: the order stays
    assert [t for t, _ in diversify([(t, 1.0) for t in "abc"], genres, 2)] == ["a", "b", "c"]


def test_discovery_slot_is_explored_with_logged_propensities() -> None:
    rng = random.Random(7)
    draws = [_explore_slot(4, 3, 0.2, rng) for _ in range(20_000)]
    counts = Counter(slot for slot, _ in draws)
    props = dict(draws)
    assert set(counts) == {0, 1, 2, 3, 4}
    assert abs(sum(props.values()) - 1.0) < 1e-9
    for slot, p in props.items():  # logged propensities match what actually happened
        assert abs(counts[slot] / len(draws) - p) < 0.02


def test_trending_favours_rising_titles_and_keeps_regions_apart() -> None:
    activity = [
        ("r1", "steady", NOW - d * DAY, 10) for d in range(14)
    ] + [("r1", "rising", NOW - 0.1 * DAY, 15), ("r2", "elsewhere", NOW - 0.1 * DAY, 50)]
    scores = trending_scores(activity, NOW)
    r1 = dict(scores["r1"])
    assert "elsewhere" not in r1 and set(dict(scores[GLOBAL])) == {"steady", "rising", "elsewhere"}
    # similar recent volume, but rising's is all new: it ranks first
    assert scores["r1"][0][0] == "rising", scores["r1"]
