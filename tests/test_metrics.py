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


# Published lists, hit rate, repeat / explore.

# Published top-3 lists (row 1 came out short) and baskets:
# row 0: list 4, 2, 0; basket {2, 3}: 2 at position 2, 3 absent -> ranks (2, inf) in target order 2, 3
# row 1: list 1, 3;    basket {3, 3} -> {3} at position 2
# row 2: list 0, 1, 2; basket {5}: absent -> inf
LISTS = [[4, 2, 0], [1, 3], [0, 1, 2]]
LIST_TARGETS = [[3, 2], [3, 3], [5]]


def test_list_target_ranks():
    ranks = M.list_target_ranks(LISTS, LIST_TARGETS)
    assert [r.tolist() for r in ranks] == [[2.0, math.inf], [2.0], [math.inf]]


def test_existing_metrics_take_absent_targets_as_rank_inf():
    ranks = M.list_target_ranks(LISTS, LIST_TARGETS)
    assert M.recall_at_k(ranks, 1).tolist() == [0.0, 0.0, 0.0]
    assert M.recall_at_k(ranks, 3).tolist() == [0.5, 1.0, 0.0]
    # row 0 @3: one hit at 2 of two targets -> (1/log2 3) / (1 + 1/log2 3); row 1: (1/log2 3) / 1
    assert M.ndcg_at_k(ranks, 3) == pytest.approx([(1 / math.log2(3)) / (1 + 1 / math.log2(3)), 1 / math.log2(3), 0.0])
    assert M.reciprocal_rank(ranks).tolist() == [0.5, 0.5, 0.0]         # 1 / inf = 0: no hit in the list


def test_full_ranked_lists_give_the_score_ranks():
    assert [r.tolist() for r in M.list_target_ranks(M.rank_items(SCORES), TARGETS)] == \
           [r.tolist() for r in M.target_ranks(SCORES, TARGETS)]


def test_list_with_a_repeated_item_raises():
    with pytest.raises(ValueError):
        M.list_target_ranks([[1, 2, 1]], [[1]])


def test_hit_rate():
    ranks = M.list_target_ranks(LISTS, LIST_TARGETS) + [np.array([])]   # a user with no targets: no hit
    assert M.hit_rate_at_k(ranks, 1).tolist() == [0.0, 0.0, 0.0, 0.0]
    assert M.hit_rate_at_k(ranks, 2).tolist() == [1.0, 1.0, 0.0, 0.0]


# Past items per user: row 0 bought 2 and 9 before, row 1 nothing, row 2 bought 0 and 1 (1 twice).
PAST = [[2, 9], [], [0, 1, 1]]
RANKED = [[4, 2, 0, 3, 1], [1, 3, 0, 2, 4], [0, 1, 2, 5, 3]]    # rankings longer than k, as rank_items gives


def test_repeat_and_explore_targets():
    # row 0 {2, 3}: 2 is a repeat, 3 new; row 1 {3}: new; row 2 {5}: new
    assert [t.tolist() for t in M.repeat_targets(LIST_TARGETS, PAST)] == [[2], [], []]
    assert [t.tolist() for t in M.explore_targets(LIST_TARGETS, PAST)] == [[3], [3], [5]]


def test_explore_lists_and_their_ranks():
    # row 0 drops 2 -> 4, 0, 3, 1 -> top 2: 4, 0; row 1 keeps all -> 1, 3; row 2 drops 0, 1 -> 2, 5
    lists = M.explore_lists(RANKED, PAST, 2)
    assert [lst.tolist() for lst in lists] == [[4, 0], [1, 3], [2, 5]]
    ranks = M.list_target_ranks(lists, M.explore_targets(LIST_TARGETS, PAST))
    assert [r.tolist() for r in ranks] == [[math.inf], [2.0], [2.0]]
    assert M.recall_at_k(ranks, 2).tolist() == [0.0, 1.0, 1.0]
    # from a published top-3 only what is left remains: row 2 keeps just item 2
    assert [lst.tolist() for lst in M.explore_lists(LISTS, PAST, 3)] == [[4, 0], [1, 3], [2]]


def test_repeat_share():
    # @2 of RANKED: row 0 (4, 2) -> 1/2; row 1 (1, 3) -> 0; row 2 (0, 1) -> 1
    assert M.repeat_share_at_k(RANKED, PAST, 2).tolist() == [0.5, 0.0, 1.0]
    # @3 of the published lists, row 1 shows only 2 items: 1/3, 0/2, 2/3; an empty list shares 0
    assert M.repeat_share_at_k(LISTS + [[]], PAST + [[1]], 3) == pytest.approx([1 / 3, 0.0, 2 / 3, 0.0])
