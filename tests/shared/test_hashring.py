"""Rendezvous hashing: determinism across processes, balance, weights and minimal disruption."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared import hashring
from shared.errors import InvalidInput

names = st.text(alphabet="abcdefghij0123456789-", min_size=1, max_size=8)


def test_same_answer_in_a_fresh_process_with_a_different_hash_seed() -> None:
    nodes = [f"app-{i}" for i in range(7)]
    here = [hashring.rank(f"title-{k}", nodes) for k in range(20)]
    code = (
        "import json; from shared import hashring; "
        "print(json.dumps([hashring.rank(f'title-{k}', [f'app-{i}' for i in range(7)]) for k in range(20)]))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True, env={"PYTHONHASHSEED": "12345"}
    )
    assert json.loads(out.stdout) == here


def test_keys_spread_evenly_over_equal_nodes() -> None:
    nodes = [f"n{i}" for i in range(5)]
    wins = Counter(hashring.assign([f"k{i}" for i in range(5000)], nodes).values())
    assert set(wins) == set(nodes)
    for node in nodes:
        assert 850 < wins[node] < 1150, wins


def test_weights_shift_the_share_proportionally() -> None:
    wins = Counter(hashring.assign([f"k{i}" for i in range(6000)], {"big": 3.0, "small": 1.0}).values())
    share = wins["big"] / 6000
    assert 0.71 < share < 0.79, share


@settings(max_examples=60, deadline=None)
@given(nodes=st.lists(names, min_size=2, max_size=12, unique=True), keys=st.lists(names, min_size=1, max_size=30))
def test_removing_a_node_moves_only_the_keys_it_owned(nodes: list[str], keys: list[str]) -> None:
    before = hashring.assign(keys, nodes)
    gone = nodes[0]
    after = hashring.assign(keys, nodes[1:])
    for key in keys:
        if before[key] != gone:
            assert after[key] == before[key]


@settings(max_examples=60, deadline=None)
@given(nodes=st.lists(names, min_size=1, max_size=12, unique=True), key=names, salt=names)
def test_rank_is_a_permutation_and_pick_is_its_prefix(nodes: list[str], key: str, salt: str) -> None:
    ranked = hashring.rank(key, nodes, salt=salt)
    assert sorted(ranked) == sorted(nodes)
    assert hashring.pick(key, nodes, 2, salt=salt) == ranked[:2]
    assert hashring.assign([key], nodes, salt=salt)[key] == ranked[0]


def test_salt_changes_the_order_and_unit_hash_is_in_range() -> None:
    nodes = [f"n{i}" for i in range(10)]
    orders = {tuple(hashring.rank("same-key", nodes, salt=f"s{i}")) for i in range(10)}
    assert len(orders) > 1
    values = [hashring.unit_hash(f"profile-{i}", "exp-1") for i in range(2000)]
    assert all(0.0 <= v < 1.0 for v in values)
    assert 0.45 < sum(v < 0.5 for v in values) / 2000 < 0.55


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: hashring.rank("k", {"a": 0.0}), "weight"),
        (lambda: hashring.rank("k", {"a": float("nan")}), "weight"),
        (lambda: hashring.rank("k", {"a": -1.0}), "weight"),
        (lambda: hashring.rank("k", ["a", "a"]), "twice"),
        (lambda: hashring.rank("k" * 5000, ["a"]), "bytes"),
        (lambda: hashring.rank(7, ["a"]), "string"),  # type: ignore[arg-type]
        (lambda: hashring.rank("k", [None]), "string"),  # type: ignore[list-item]
        (lambda: hashring.pick("k", ["a"], -1), "count"),
        (lambda: hashring.assign(["k"], []), "empty"),
        (lambda: hashring.rank("k", [f"n{i}" for i in range(hashring.MAX_NODES + 1)]), "at most"),
    ],
)
def test_hostile_input_gives_typed_errors(call: object, message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        call()  # type: ignore[operator]


@settings(max_examples=40, deadline=None)
@given(weights=st.dictionaries(names, st.floats(0.1, 10.0), min_size=1, max_size=10), key=names)
def test_the_reusable_node_set_agrees_with_the_scores(weights: dict[str, float], key: str) -> None:
    ring = hashring.Rendezvous(weights, salt="site-1")
    by_score = sorted(weights, key=lambda n: (-hashring.score(key, n, weights[n], salt="site-1"), n))
    assert ring.rank(key) == by_score == hashring.rank(key, weights, salt="site-1")
    assert len(ring) == len(weights)
