"""training.metrics against values worked out by hand (binary gains, basket targets, ties to the lower
item index)."""
from __future__ import annotations

import math

import numpy as np
import pytest

from training import metrics as M

# Row 0: scores rank items 1, 3 (tie with 1, higher index), 2, 4, 0. Basket {3, 0} -> ranks 2 and 5.
# Row 1: item 4 alone on top; basket {4} -> rank 1.
# Row 2: all scores tied -> order 0, 1, 2, 3, 4; basket {0, 0} (duplicate) -> {0}, rank 1.
# Row 3: basket {2} ranked last of 5 among distinct scores -> rank 5.
SCORES = np.array([[0.1, 0.9, 0.5, 0.9, 0.3],
                   [0.0, 0.0, 0.0, 0.0, 1.0],
                   [0.2, 0.2, 0.2, 0.2, 0.2],
                   [0.5, 0.4, 0.1, 0.3, 0.2]])
TARGETS = [[3, 0], [4], [0, 0], [2]]


def test_rank_items_breaks_ties_by_lower_index():
    assert M.rank_items(SCORES, 3).tolist() == [[1, 3, 2], [4, 0, 1], [0, 1, 2], [0, 1, 3]]


def test_target_ranks():
    ranks = M.target_ranks(SCORES, TARGETS)
    assert [r.tolist() for r in ranks] == [[5, 2], [1], [1], [5]]   # row 0 in target-index order: item 0, item 3


def test_recall():
    ranks = M.target_ranks(SCORES, TARGETS)
    assert M.recall_at_k(ranks, 2).tolist() == [0.5, 1.0, 1.0, 0.0]
    assert M.recall_at_k(ranks, 5).tolist() == [1.0, 1.0, 1.0, 1.0]


def test_ndcg():
    ranks = M.target_ranks(SCORES, TARGETS)
    # row 0 @2: one hit at rank 2 -> (1/log2 3) / (1 + 1/log2 3)
    # row 0 @5: hits at 2 and 5 -> (1/log2 3 + 1/log2 6) / (1 + 1/log2 3)
    # row 3 @5: one hit at rank 5, one target -> (1/log2 6) / 1
    at2 = M.ndcg_at_k(ranks, 2)
    at5 = M.ndcg_at_k(ranks, 5)
    assert at2 == pytest.approx([(1 / math.log2(3)) / (1 + 1 / math.log2(3)), 1.0, 1.0, 0.0])
    assert at5 == pytest.approx([(1 / math.log2(3) + 1 / math.log2(6)) / (1 + 1 / math.log2(3)), 1.0, 1.0,
                                 1 / math.log2(6)])
    assert at2[0] == pytest.approx(0.386853, abs=1e-6)


def test_mrr():
    ranks = M.target_ranks(SCORES, TARGETS)
    assert M.reciprocal_rank(ranks).tolist() == [0.5, 1.0, 1.0, 0.2]


def test_coverage():
    # top-2 lists: [1, 3], [4, 0], [0, 1], [0, 1] -> {0, 1, 3, 4} of 5 items
    assert M.catalogue_coverage(M.rank_items(SCORES, 2), 5) == 0.8


def test_sums_over_batches_equal_whole():
    whole = M.finalize(M.metric_sums(SCORES, TARGETS, ks=(2, 5)))
    a = M.metric_sums(SCORES[:1], TARGETS[:1], ks=(2, 5))
    b = M.metric_sums(SCORES[1:], TARGETS[1:], ks=(2, 5))
    merged = M.finalize({k: a[k] + b[k] for k in a})
    assert merged == pytest.approx(whole)
    assert whole["users"] == 4
    assert whole["mrr"] == pytest.approx((0.5 + 1 + 1 + 0.2) / 4)
    assert whole["recall@2"] == pytest.approx(2.5 / 4)


def test_evaluate_scores_adds_coverage():
    out = M.evaluate_scores(SCORES, TARGETS, ks=(2,))
    assert out["coverage@2"] == 0.8
    assert out["ndcg@2"] == pytest.approx((0.386853 + 2) / 4, abs=1e-6)
