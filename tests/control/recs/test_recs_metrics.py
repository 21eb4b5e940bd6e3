"""Metric functions against examples computed by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from control.recs.errors import DataError
from control.recs.metrics import ap_at_k, coverage, evaluate, ndcg_at_k, novelty, recall_at_k, top_k

RANKED = np.array([5, 3, 9, 1, 7], dtype=np.intp)


def test_recall_counts_hits_over_min_k_and_held_out() -> None:
    assert recall_at_k(RANKED, [3, 7, 42], 5) == pytest.approx(2 / 3)
    assert recall_at_k(RANKED, [3, 7, 42], 2) == pytest.approx(1 / 2)  # one hit in top 2, min(2, 3) = 2
    assert recall_at_k(RANKED, [42], 5) == 0.0


def test_ndcg_by_hand() -> None:
    # hits at ranks 2 and 5 (1-based): DCG = 1/log2(3) + 1/log2(6); ideal for 2 items: 1 + 1/log2(3)
    expected = (1 / math.log2(3) + 1 / math.log2(6)) / (1 + 1 / math.log2(3))
    assert ndcg_at_k(RANKED, [3, 7], 5) == pytest.approx(expected)
    assert ndcg_at_k(RANKED, [5], 5) == pytest.approx(1.0)
    assert ndcg_at_k(RANKED, [7], 3) == 0.0


def test_average_precision_by_hand() -> None:
    # hits at 2 and 5: precision 1/2 and 2/5, divided by min(5, 2)
    assert ap_at_k(RANKED, [3, 7], 5) == pytest.approx((1 / 2 + 2 / 5) / 2)
    assert ap_at_k(RANKED, [5, 3], 5) == pytest.approx(1.0)


def test_coverage_and_novelty_by_hand() -> None:
    ranked = np.array([[0, 1], [1, 2]], dtype=np.intp)
    assert coverage(ranked, 10, 2) == pytest.approx(3 / 10)
    counts = np.array([3.0, 1.0, 0.0, 0.0])  # 3 users
    p = np.array([[4 / 4, 2 / 4], [2 / 4, 1 / 4]])
    assert novelty(ranked, counts, 3, 2) == pytest.approx(float(-np.log2(p).mean()))


def test_evaluate_skips_users_without_held_out_items() -> None:
    ranked = np.array([[1, 2], [3, 4]], dtype=np.intp)
    scores = evaluate(ranked, [[1], []], 2, np.zeros(5), 2)
    assert scores.users == 1 and scores.recall == 1.0 and scores.ndcg == 1.0


def test_bad_arguments_are_rejected() -> None:
    with pytest.raises(DataError):
        recall_at_k(RANKED, [], 5)
    with pytest.raises(DataError):
        evaluate(np.zeros((2, 3), np.intp), [[1]], 2, np.zeros(5), 1)
    with pytest.raises(DataError):
        evaluate(np.zeros((1, 1), np.intp), [[1]], 2, np.zeros(5), 1)
    with pytest.raises(DataError):
        evaluate(np.zeros((1, 3), np.intp), [[]], 2, np.zeros(5), 1)


def test_top_k_orders_best_first_and_breaks_ties_by_index() -> None:
    scores = np.array([[0.1, 0.9, 0.5, 0.9, -np.inf]], dtype=np.float32)
    assert top_k(scores, 3).tolist() == [[1, 3, 2]]
