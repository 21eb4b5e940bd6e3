"""Splits: sizes, disjointness, time order, determinism under a seed."""

from __future__ import annotations

import numpy as np
import pytest

from control.recs.data import Catalog, Interactions
from control.recs.errors import DataError
from control.recs.splits import Protocol, folds, positives, random_split, temporal_split


def _pairs(inter: Interactions) -> set[tuple[str, str]]:
    return set(zip(inter.users.tolist(), inter.items.tolist(), strict=True))


def test_positives_filter_and_dedupe(synth: tuple[Interactions, Catalog]) -> None:
    inter, _ = synth
    pos = positives(inter, 4.0)
    assert (pos.ratings >= 4.0).all()
    assert len(_pairs(pos)) == len(pos)


def test_random_split_holds_out_a_fifth_per_user(synth: tuple[Interactions, Catalog]) -> None:
    pos = positives(synth[0], 4.0)
    s = random_split(pos, seed=3)
    train = _pairs(s.train)
    test = {(u, i) for u, items in s.test.items() for i in items}
    assert not train & test
    assert train | test == _pairs(pos)
    for user, items in s.test.items():
        n = int((pos.users == user).sum())
        assert len(items) == min(round(0.2 * n), n - 1)
    assert random_split(pos, seed=3).test == s.test
    assert random_split(pos, seed=4).test != s.test


def test_temporal_split_holds_out_the_latest() -> None:
    inter = Interactions(np.array(["a", "a", "a", "b"]), np.array(["x", "y", "z", "x"]), np.ones(4),
                         np.array([5, 9, 1, 3], dtype=np.int64))
    s = temporal_split(inter)
    assert s.test == {"a": ("y",)}  # b has a single positive: nothing to learn from, not tested
    assert _pairs(s.train) == {("a", "x"), ("a", "z"), ("b", "x")}


def test_folds_random_are_disjoint_and_cover(synth: tuple[Interactions, Catalog]) -> None:
    pos = positives(synth[0], 4.0)
    parts = folds(pos, Protocol.RANDOM, 4, seed=1)
    held = [{(u, i) for u, items in f.test.items() for i in items} for f in parts]
    for a in range(4):
        for b in range(a + 1, 4):
            assert not held[a] & held[b]
        assert not held[a] & _pairs(parts[a].train)
    multi = {u for u in set(pos.users.tolist()) if (pos.users == u).sum() >= 2}
    assert {u for u, _ in set().union(*held)} == multi


def test_folds_temporal_never_train_on_the_future() -> None:
    inter = Interactions(np.array(["a"] * 4), np.array(["w", "x", "y", "z"]), np.ones(4),
                         np.array([1, 2, 3, 4], dtype=np.int64))
    parts = folds(inter, Protocol.TEMPORAL, 2, seed=0)
    assert parts[0].test == {"a": ("z",)} and _pairs(parts[0].train) == {("a", "w"), ("a", "x"), ("a", "y")}
    assert parts[1].test == {"a": ("y",)} and _pairs(parts[1].train) == {("a", "w"), ("a", "x")}


def test_bad_split_arguments() -> None:
    empty = Interactions(np.array([], str), np.array([], str), np.zeros(0), np.zeros(0, np.int64))
    with pytest.raises(DataError):
        random_split(empty, test_share=1.5)
    with pytest.raises(DataError):
        temporal_split(empty, last_n=0)
    with pytest.raises(DataError):
        folds(empty, Protocol.RANDOM, 0, seed=0)
