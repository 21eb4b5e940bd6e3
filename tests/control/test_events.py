"""Viewing events: validation event by event, batches, and what a profile's log means."""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from control.events import (
    MAX_BATCH,
    Event,
    ProfileState,
    implicit_rating,
    interaction_rows,
    parse_batch,
    parse_event,
)
from shared.errors import InvalidInput

NOW = 1_800_000_000.0


def ev(kind: str, title: str | None = "t1", ts: float = NOW - 100, **extra: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {"event_id": f"e-{kind}-{title}-{ts}-{len(extra)}", "type": kind, "profile_id": "p1",
                           "ts": ts, "device": "tv", "region": "r1", **extra}
    if title is not None:
        doc["title_id"] = title
    return doc


GOOD = [
    ev("play_start", position_s=0, impression_id="pg-0-1"), ev("progress", position_s=30, duration_s=60),
    ev("complete"), ev("thumbs", value="up"), ev("list_add"), ev("list_remove"),
    ev("search", title=None, query="ocean docs"), ev("search", query="heist", title="t2"),
    ev("impression", row="top-picks", position=3, artwork="candidate_01", propensity=0.25, impression_id="pg-1-3"),
    ev("abandon", impression_id="pg-1-3", position_s=2.5),
    ev("qoe", startup_ms=420, stalls=1, stall_ms=800, switches=3, bitrate_kbps=2500.5, appliance_id="edge-a"),
]


@pytest.mark.parametrize("doc", GOOD, ids=lambda d: str(d["type"]))
def test_every_event_type_parses(doc: dict[str, Any]) -> None:
    e = parse_event(doc, NOW)
    assert e.type == doc["type"] and e.profile_id == "p1" and e.ts == doc["ts"]
    assert set(e.data) <= set(doc)


BAD = [
    ({"type": "complete"}, "event_id"),
    (ev("nope"), "type must be one of"),
    ({**ev("complete"), "type": {}}, "type must be one of"),
    ({**ev("complete"), "extra": 1}, "unknown field"),
    ({**ev("complete"), "profile_id": "../etc"}, "profile_id"),
    (ev("complete", ts=NOW + 3600), "ts must be in"),
    (ev("complete", ts=float("nan")), "finite"),
    (ev("complete", ts=True), "finite"),
    (ev("complete", ts=1.0), "ts must be in"),
    (ev("complete", title=None), "title_id"),
    ({**ev("complete"), "device": "toaster"}, "device"),
    (ev("progress", position_s=90, duration_s=60), "beyond"),
    (ev("progress", position_s=-1, duration_s=60), "position_s"),
    (ev("progress", position_s=1), "duration_s"),
    (ev("thumbs", value="sideways"), "value"),
    (ev("search", title=None, query=""), "query"),
    (ev("search", title=None, query="x" * 201), "query"),
    (ev("search", title=None, query="a\x00b"), "query"),
    (ev("impression", row="r", position=1, propensity=0.0), "propensity"),
    (ev("impression", row="r", position=1.5, propensity=0.5), "integer"),
    (ev("impression", row="r", position=1, propensity=0.5, artwork="../x"), "artwork"),
    (ev("qoe", startup_ms=1, stalls=-1, stall_ms=0, switches=0, bitrate_kbps=1), "stalls"),
    ("not an object", "JSON object"),
]


@pytest.mark.parametrize(("doc", "reason"), BAD)
def test_bad_events_are_refused_with_a_reason(doc: Any, reason: str) -> None:
    with pytest.raises(InvalidInput, match=reason):
        parse_event(doc, NOW)


def test_a_batch_keeps_the_good_events_and_names_the_bad_ones() -> None:
    docs = [GOOD[0], ev("thumbs", value="meh"), GOOD[2], GOOD[0]]  # the last repeats the first id
    good, bad = parse_batch({"events": docs}, NOW)
    assert [e.type for e in good] == ["play_start", "complete"]
    assert [(r.index, "value" in r.reason) for r in bad] == [(1, True)]


@pytest.mark.parametrize("doc", [[], {}, {"events": []}, {"events": {}}, {"events": [GOOD[2]], "x": 1},
                                 {"events": [GOOD[2]] * (MAX_BATCH + 1)}])
def test_malformed_batches_are_refused_whole(doc: Any) -> None:
    with pytest.raises(InvalidInput):
        parse_batch(doc, NOW)


json_values = st.recursive(st.none() | st.booleans() | st.floats() | st.integers() | st.text(max_size=20),
                           lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner,
                                                                                         max_size=6),
                           max_leaves=20)


@settings(max_examples=400, deadline=None)
@given(st.dictionaries(st.sampled_from(["event_id", "type", "profile_id", "title_id", "ts", "device", "region",
                                        "position_s", "duration_s", "value", "query", "row", "position",
                                        "propensity", "artwork", "stalls"]), json_values, max_size=10))
def test_hostile_events_never_raise_anything_but_invalid_input(doc: dict[str, Any]) -> None:
    try:
        e = parse_event(doc, NOW)
    except InvalidInput:
        return
    assert math.isfinite(e.ts)


def _events(*specs: tuple[str, str, float, dict[str, Any]]) -> list[Event]:
    return [parse_event({**ev(kind, title, ts, **extra), "event_id": f"x{i}"}, NOW)
            for i, (kind, title, ts, extra) in enumerate(specs)]


def test_profile_state_from_a_log() -> None:
    log = _events(
        ("play_start", "a", NOW - 900, {}), ("progress", "a", NOW - 800, {"position_s": 600, "duration_s": 6000}),
        ("play_start", "b", NOW - 700, {}), ("progress", "b", NOW - 600, {"position_s": 10, "duration_s": 100}),
        ("complete", "c", NOW - 500, {}),
        ("complete", "d", NOW - 400, {}), ("play_start", "d", NOW - 300, {}),  # rewatching d
        ("progress", "e", NOW - 250, {"position_s": 50, "duration_s": 100}), ("thumbs", "e", NOW - 200,
                                                                              {"value": "down"}),
        ("list_add", "f", NOW - 100, {}),
    )
    state = ProfileState.from_events("p1", reversed(log))  # order of arrival does not matter
    assert [a.title_id for a in state.continue_watching()] == ["b", "a"]  # e is disliked
    assert state.hidden() == {"c", "e"}  # d shows rewatch signals
    x = state.because_of()
    assert x is not None and x.title_id == "d"
    assert {a.title_id for a in state.positives()} == {"c", "d", "f"}
    assert state.region == "r1"
    rows = {(u, i): r for u, i, r, _ in interaction_rows([state])}
    assert rows[("p1", "c")] == 5.0 and rows[("p1", "e")] == 1.0 and rows[("p1", "f")] == 4.0
    assert rows[("p1", "a")] == pytest.approx(2.2)


def test_completing_twice_is_a_rewatch_and_affinities_scale_to_one() -> None:
    log = _events(("complete", "a", NOW - 50, {}), ("complete", "a", NOW - 40, {}), ("complete", "b", NOW - 30, {}))
    state = ProfileState.from_events("p1", log)
    assert state.hidden() == {"b"}
    assert state.affinities({"a": ["drama"], "b": ["drama", "comedy"]}) == {"comedy": 0.5, "drama": 1.0}
    assert implicit_rating(state.titles["a"]) == 5.0
