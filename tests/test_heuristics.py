"""training.heuristics against values worked out by hand, and TIFU-KNN against a slow transcription of
the steps of the authors' reference code (HaojiHu/TIFUKNN, TIFUKNN.py)."""
from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import sparse

from training import heuristics as H
from training.metrics import rank_items


# Popularity.

# (user, item, day); cut-off day 10 with a 3-day window keeps days 7, 8, 9.
PURCHASES = [
    (0, 1, 9),     # inside
    (0, 1, 8),     # the same buyer again: still one buyer of item 1
    (1, 1, 7),     # the window's first day: inside
    (2, 1, 6),     # the day before the window: out
    (3, 1, 10),    # the cut-off day itself: out
    (1, 0, 9),     # item 0's only buyer
    (4, 2, 11),    # after the cut-off: out (point in time)
]


def test_distinct_buyers_counts_each_buyer_once_inside_the_window():
    user, item, day = map(np.array, zip(*PURCHASES))
    assert H.distinct_buyers(user, item, day, 4, cutoff_day=10, window_days=3).tolist() == [1, 2, 0, 0]


def test_distinct_buyers_of_an_empty_window():
    assert H.distinct_buyers(np.array([0]), np.array([1]), np.array([3]), 3, cutoff_day=10,
                             window_days=3).tolist() == [0, 0, 0]


def test_window_popularity_is_one_row_for_everyone():
    scores = H.window_popularity(np.array([1, 2, 0, 2]), n_users=3)
    assert scores.shape == (3, 4) and scores.dtype == np.float32
    assert scores.tolist() == [[1, 2, 0, 2]] * 3
    assert rank_items(scores, 4)[0].tolist() == [1, 3, 0, 2]     # items 1 and 3 tie: lower index first
    with pytest.raises(ValueError):
        scores[0, 0] = 5.0                                         # a view: read-only, never silently shared


# P-TopFreq.

# V = 6. Fallback ranking: item 2 (9), 0 (5), 4 and 5 (3, tie -> 4 first), 1 (1), 3 (0).
FALLBACK = np.array([5.0, 1.0, 9.0, 0.0, 3.0, 3.0])
TOPFREQ_BASKETS = [
    # u0: item 0 in 2 baskets (the duplicate 2 in basket 0 counts once, else item 2 would tie it);
    #     items 3, 1, 2 in one basket each, last seen in baskets 2, 1, 0 -> 3, 1, 2; then 4, 5.
    [[2, 2, 0], [1], [0, 3]],
    # u1: all once; item 5 last in basket 1, items 1 and 4 both last in basket 0 -> by fallback: 4, 1.
    [[1, 4], [5]],
    # u2: no history: the fallback ranking alone.
    [],
    # u3: count, recency and fallback all tie for items 4 and 5 -> lower index first.
    [[5, 4]],
]


def test_p_topfreq_ranking():
    ranked = rank_items(H.p_topfreq(TOPFREQ_BASKETS, 6, FALLBACK))
    assert ranked.tolist() == [[0, 3, 1, 2, 4, 5],
                               [5, 4, 1, 2, 0, 3],
                               [2, 0, 4, 5, 1, 3],
                               [4, 5, 2, 0, 1, 3]]


def test_p_topfreq_scores_are_the_ranking_as_integers():
    # u0: 4 past items -> V + 4 - place = 10, 9, 8, 7 for items 0, 3, 1, 2; the rest V - fallback rank:
    # item 4 rank 2 -> 4, item 5 rank 3 -> 3.
    scores = H.p_topfreq(TOPFREQ_BASKETS, 6, FALLBACK)
    assert scores.dtype == np.float32
    assert scores[0].tolist() == [10, 8, 7, 9, 4, 3]


def test_p_topfreq_rejects_items_outside_the_catalogue():
    with pytest.raises(ValueError):
        H.p_topfreq([[[6]]], 6, FALLBACK)


# Past items + recent sales.

def test_past_items_recent():
    # V = 4, w = 0.5, last week's purchases c = (0, 3, 1, 7): w * log1p(c) = (0, ln 2, ln 2 / 2, 1.5 ln 2)
    # u0 basket counts: item 0 in 2, item 1 in 2 (the repeat inside basket 2 counts once), item 3 in 1.
    #   scores (2, 2 + ln 2, ln 2 / 2, 1 + 1.5 ln 2) = (2, 2.693, 0.347, 2.040): item 3, bought once but
    #   selling well, overtakes item 0.
    # u1 no history: w * log1p(c) alone.
    log1p_c = np.log1p(np.array([0.0, 3.0, 1.0, 7.0]))
    scores = H.past_items_recent([[[0, 1], [0], [1, 1, 3]], []], 4, log1p_c, w=0.5)
    ln2 = math.log(2)
    assert scores.dtype == np.float32
    assert scores[0] == pytest.approx([2, 2 + ln2, ln2 / 2, 1 + 1.5 * ln2], rel=1e-6)
    assert scores[1] == pytest.approx([0, ln2, ln2 / 2, 1.5 * ln2], rel=1e-6)
    assert rank_items(scores).tolist() == [[1, 3, 0, 2], [3, 1, 2, 0]]


# TIFU-KNN: grouping.

@pytest.mark.parametrize("n, groups", [
    (1, [[0]]),                      # n < m: each basket its own group, 1 group
    (2, [[0], [1]]),                 # n < m: 2 groups
    (3, [[0], [1], [2]]),            # n/m = 1, residual 0: m groups of 1
    # est = 5/3 = 1.667, base = 1, residual 0.667, round(0.667 * 3) = 2 groups get one more: the first
    # 3 - 2 = 1 group holds base = 1 basket (last_idx = 0), the next two ceil(1.667) = 2 from basket 1
    (5, [[0], [1, 2], [3, 4]]),
    # est = 2.333, base = 2, round(0.333 * 3) = 1: groups of 2, 2 (last_idx = 3), then 3 from basket 4
    (7, [[0, 1], [2, 3], [4, 5, 6]]),
])
def test_tifu_groups_as_the_reference_splits_them(n, groups):
    assert H.tifu_groups(n, 3) == groups


def test_tifu_groups_of_no_baskets():
    assert H.tifu_groups(0, 3) == []


# TIFU-KNN: a night worked by hand.

PARAMS = H.TifuKnnParams(group_count=2, within_decay=0.5, group_decay=0.8, k=2, alpha=0.5)
TIFU_BASKETS = [
    [[0, 1], [1, 2], [1]],                        # A: 3 baskets into 2 groups, the residual one
    [[0], [3, 3]],                                # B: 2 baskets, 2 groups of 1; item 3 repeated once
    [[2, 4], [1], [0, 1], [4], [2]],              # C: 5 baskets: groups of 2 and 3
    [[1]],                                        # D: 1 basket < m: 1 group, weighted r_g^(m-1) anyway
]
# Basket weight = r_b^(n-1-j) * r_g^(m-1-g) / (baskets in group g * real group count):
# A (n=3; groups [0], [1, 2]): 0.25*0.8/(1*2) = 0.1;  0.5*1/(2*2) = 0.125;  1*1/(2*2) = 0.25
# B (n=2; groups [0], [1]):    0.5*0.8/(1*2) = 0.2;   1*1/(1*2) = 0.5
# C (n=5; groups [0, 1], [2, 3, 4]): 0.0625*0.8/(2*2) = 0.0125; 0.125*0.8/4 = 0.025;
#                              0.25/(3*2) = 1/24; 0.5/6 = 1/12; 1/6
# D (n=1; one group, g = 0 of m = 2): 1 * 0.8^(2-1-0) / (1*1) = 0.8
# Vectors over items 0..4, in units of 1/240:
#   A = (0.1, 0.1+0.125+0.25, 0.125, 0, 0)            = (24, 114, 30, 0, 0)
#   B = (0.2, 0, 0, 0.5, 0)                            = (48, 0, 0, 120, 0)
#   C = (1/24, 0.025+1/24, 0.0125+1/6, 0, 0.0125+1/12) = (10, 16, 43, 0, 23)
#   D = (0, 0.8, 0, 0, 0)                              = (0, 192, 0, 0, 0)
UNIT = 1 / 240
VECTORS = np.array([[24, 114, 30, 0, 0], [48, 0, 0, 120, 0], [10, 16, 43, 0, 23], [0, 192, 0, 0, 0]]) * UNIT
# Squared distances (units of 1/240²):
#   A-B 24²+114²+30²+120² = 28872   A-C 14²+98²+13²+23² = 10498   A-D 24²+78²+30² = 7560
#   B-C 38²+16²+43²+120²+23² = 18478   B-D 48²+192²+120² = 53568   C-D 10²+176²+43²+23² = 33454
# Two nearest others: A -> D, C;  B -> C, A;  C -> A, B;  D -> A, C.
# pred = 0.5 * own + 0.25 * (n1 + n2), units of 1/240:
#   A: (12, 57, 15, 0, 0) + (10, 208, 43, 0, 23)/4  = (14.5, 109, 25.75, 0, 5.75)
#   B: (24, 0, 0, 60, 0)  + (34, 130, 73, 0, 23)/4  = (32.5, 32.5, 18.25, 60, 5.75)
#   C: (5, 8, 21.5, 0, 11.5) + (72, 114, 30, 120, 0)/4 = (23, 36.5, 29, 30, 11.5)
#   D: (0, 96, 0, 0, 0)   + (34, 130, 73, 0, 23)/4  = (8.5, 128.5, 18.25, 0, 5.75)
EXPECTED_EXCLUDING_SELF = np.array([[14.5, 109, 25.75, 0, 5.75], [32.5, 32.5, 18.25, 60, 5.75],
                                    [23, 36.5, 29, 30, 11.5], [8.5, 128.5, 18.25, 0, 5.75]]) * UNIT
# With the user as its own first neighbour: pred = 0.75 * own + 0.25 * nearest other:
#   A: 0.75 A + 0.25 D = (18, 85.5+48, 22.5, 0, 0)            = (18, 133.5, 22.5, 0, 0)
#   B: 0.75 B + 0.25 C = (36+2.5, 4, 10.75, 90, 5.75)          = (38.5, 4, 10.75, 90, 5.75)
#   C: 0.75 C + 0.25 A = (7.5+6, 12+28.5, 32.25+7.5, 0, 17.25) = (13.5, 40.5, 39.75, 0, 17.25)
#   D: 0.75 D + 0.25 A = (6, 144+28.5, 7.5, 0, 0)              = (6, 172.5, 7.5, 0, 0)
EXPECTED_WITH_SELF = np.array([[18, 133.5, 22.5, 0, 0], [38.5, 4, 10.75, 90, 5.75],
                               [13.5, 40.5, 39.75, 0, 17.25], [6, 172.5, 7.5, 0, 0]]) * UNIT


def test_tifu_basket_weights():
    assert H.tifu_basket_weights(3, PARAMS) == pytest.approx([0.1, 0.125, 0.25])
    assert H.tifu_basket_weights(2, PARAMS) == pytest.approx([0.2, 0.5])
    assert H.tifu_basket_weights(5, PARAMS) == pytest.approx([0.0125, 0.025, 1 / 24, 1 / 12, 1 / 6])
    assert H.tifu_basket_weights(1, PARAMS) == pytest.approx([0.8])


def test_tifu_user_vectors():
    assert H.tifu_user_vectors(TIFU_BASKETS, 5, PARAMS).toarray() == pytest.approx(VECTORS)


def test_nearest_neighbours_by_hand():
    x = H.tifu_user_vectors(TIFU_BASKETS, 5, PARAMS)
    rows, dist = H.nearest_neighbours(x, x, 2, self_row=np.arange(4))
    assert rows.tolist() == [[3, 2], [2, 0], [0, 1], [0, 2]]
    assert dist == pytest.approx(np.sqrt([[7560, 10498], [18478, 28872], [10498, 18478], [7560, 33454]]) * UNIT)
    rows, dist = H.nearest_neighbours(x, x, 2, self_row=np.arange(4), exclude_self=False)
    assert rows.tolist() == [[0, 3], [1, 2], [2, 0], [3, 0]]
    assert dist[:, 0].tolist() == [0.0] * 4


def test_tifu_knn_scores_by_hand():
    scores = H.tifu_knn_scores(TIFU_BASKETS, 5, PARAMS)
    assert scores.dtype == np.float32
    assert scores == pytest.approx(EXPECTED_EXCLUDING_SELF, abs=1e-7)
    assert H.tifu_knn_scores(TIFU_BASKETS, 5, PARAMS, exclude_self=False) == pytest.approx(EXPECTED_WITH_SELF, abs=1e-7)
    # A's list: 1, 2, 0, 4, 3; C's: 1, 3, 2, 0, 4
    assert rank_items(scores)[[0, 2]].tolist() == [[1, 2, 0, 4, 3], [1, 3, 2, 0, 4]]


def test_tifu_knn_scores_a_subset_with_everyone_as_neighbours():
    scores = H.tifu_knn_scores(TIFU_BASKETS, 5, PARAMS, query_users=np.array([2, 0]), block_users=1)
    assert scores == pytest.approx(EXPECTED_EXCLUDING_SELF[[2, 0]], abs=1e-7)


def test_users_without_baskets_are_not_neighbours():
    # E (no baskets) would sit at distance |v| from everyone; it is left out of the pool, so the others
    # keep their neighbours, and E itself gets the mean of the two smallest vectors: C (|C|² = 2974) and
    # A (|A|² = 14472) -> 0.5 * (A + C) / 2
    scores = H.tifu_knn_scores(TIFU_BASKETS + [[]], 5, PARAMS)
    assert scores[:4] == pytest.approx(EXPECTED_EXCLUDING_SELF, abs=1e-7)
    assert scores[4] == pytest.approx(0.25 * (VECTORS[0] + VECTORS[2]), abs=1e-7)


def test_k_is_capped_at_the_pool():
    # 4 users, k = 10: the other 3 are every user's neighbours
    params = H.TifuKnnParams(group_count=2, within_decay=0.5, group_decay=0.8, k=10, alpha=0.5)
    scores = H.tifu_knn_scores(TIFU_BASKETS, 5, params)
    others = (VECTORS.sum(axis=0)[None, :] - VECTORS) / 3
    assert scores == pytest.approx(0.5 * VECTORS + 0.5 * others, abs=1e-7)


def test_nearest_neighbours_ties_go_to_the_lower_row():
    pool = sparse.csr_matrix([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 0.0]])   # row 2 is row 0's twin
    # (0.5, 0.5) is at squared distance 0.5 from all four rows: the ties fill from the left
    rows, dist = H.nearest_neighbours(sparse.csr_matrix([[0.5, 0.5]]), pool, 3)
    assert rows.tolist() == [[0, 1, 2]] and dist == pytest.approx(np.full((1, 3), math.sqrt(0.5)))
    # row 2 as the query: without itself its twin (distance 0) then row 3 (1); with itself, the
    # lower-row twin first (the same vector, so the same mean)
    q = pool[2]
    assert H.nearest_neighbours(q, pool, 2, self_row=np.array([2]))[0].tolist() == [[0, 3]]
    assert H.nearest_neighbours(q, pool, 2, self_row=np.array([2]), exclude_self=False)[0].tolist() == [[0, 2]]


def test_params_are_validated():
    with pytest.raises(ValueError):
        H.TifuKnnParams(alpha=1.5)
    with pytest.raises(ValueError):
        H.TifuKnnParams(group_count=0)


# TIFU-KNN against a slow transcription of the reference's steps.

def _reference_group(vectors: list[np.ndarray], m: int) -> tuple[list[np.ndarray], int]:
    """The steps of the reference's group_history_list, with its float arithmetic, one vector at a time."""
    n = len(vectors)
    if n < m:
        return list(vectors), n
    est = n / m
    base = int(np.floor(n / m))
    residual = est - base
    extra = int(np.round(residual * m))
    groups = []
    if residual == 0:
        for i in range(m):
            groups.append(sum(vectors[i * base + j] for j in range(base)) / base)
        return groups, m
    for i in range(m - extra):
        groups.append(sum(vectors[i * base + j] for j in range(base)) / base)
    last = (m - extra) * base - 1
    bigger = int(np.ceil(est))
    if n - (m - extra) * base >= est:           # always true here; the reference checks it
        for i in range(m - extra, m):
            first = last + 1 + (i - (m - extra)) * bigger
            groups.append(sum(vectors[first + j] for j in range(bigger)) / bigger)
    return groups, m


def _reference_vector(baskets, V, p: H.TifuKnnParams) -> np.ndarray:
    """temporal_decay_sum_history for one user: decayed 0/1 baskets, grouped, group-decayed, averaged."""
    n = len(baskets)
    decayed = []
    for idx, basket in enumerate(baskets, start=1):
        v = np.zeros(V)
        v[list(basket)] = p.within_decay ** (n - idx)
        decayed.append(v)
    groups, real = _reference_group(decayed, p.group_count)
    total = np.zeros(V)
    for idx in range(real):
        total += groups[idx] * p.group_decay ** (p.group_count - 1 - idx)
    return total / real


@pytest.mark.parametrize("seed", range(8))
def test_tifu_knn_matches_the_reference_steps_on_random_nights(seed):
    rng = np.random.default_rng(seed)
    V, n_users = 12, 30
    baskets = [[rng.choice(V, size=rng.integers(1, 5)).tolist() for _ in range(rng.integers(1, 16))]
               for _ in range(n_users)]
    params = H.TifuKnnParams(group_count=int(rng.integers(1, 6)), within_decay=0.9, group_decay=0.7,
                             k=int(rng.integers(1, 8)), alpha=0.6)
    expected_vectors = np.array([_reference_vector(b, V, params) for b in baskets])
    assert H.tifu_user_vectors(baskets, V, params).toarray() == pytest.approx(expected_vectors, abs=1e-12)
    # brute force with the documented tie rule: sort by (distance, row), the query itself left out
    d = np.sqrt(((expected_vectors[:, None, :] - expected_vectors[None, :, :]) ** 2).sum(-1))
    np.fill_diagonal(d, np.inf)
    nearest = np.lexsort((np.broadcast_to(np.arange(n_users), d.shape), d), axis=1)[:, :params.k]
    expected = params.alpha * expected_vectors + (1 - params.alpha) * expected_vectors[nearest].mean(axis=1)
    got = H.tifu_knn_scores(baskets, V, params, block_users=7)
    assert got == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("exclude_self", [True, False])
def test_nearest_neighbours_equal_a_full_sort_with_many_ties(seed, exclude_self):
    # small integer vectors over few items: many rows at equal distances, and twins
    rng = np.random.default_rng(seed)
    pool = sparse.random(80, 6, density=0.3, random_state=seed, data_rvs=lambda n: rng.integers(1, 3, n)).tocsr()
    queries = rng.choice(80, 30, replace=False)
    k = int(rng.integers(1, 40))
    dense = pool.toarray()
    d = ((dense[queries][:, None, :] - dense[None, :, :]) ** 2).sum(-1)
    d[np.arange(30), queries] = np.inf if exclude_self else 0.0     # 0: ahead of a twin with a higher row only
    expected = np.lexsort((np.broadcast_to(np.arange(80), d.shape), d), axis=1)[:, :k]
    rows, dist = H.nearest_neighbours(pool[queries], pool, k, self_row=queries, exclude_self=exclude_self,
                                      block_rows=7)
    assert rows.tolist() == expected.tolist()
    assert dist == pytest.approx(np.sqrt(np.maximum(np.take_along_axis(d, expected, axis=1), 0.0)))


@pytest.mark.parametrize("exclude_self", [True, False])
def test_nearest_neighbours_over_a_large_sparse_pool_equal_a_full_sort(exclude_self, monkeypatch):
    # a pool far larger than k plus the rows a query shares an item with (most neighbours share none), with
    # many equal norms (empty rows, one item once) and integer weights, so that distances tie across the
    # rows that share an item and the rows that do not: the search must settle those ties as a full sort
    searched, queried = [], 0
    full = H._dense_neighbours
    monkeypatch.setattr(H, "_dense_neighbours", lambda dots, *a: searched.append(dots.shape[0]) or full(dots, *a))
    monkeypatch.setattr(H, "SPARSE_BELOW", 1.0)      # the sparse search for every block, however many pairs share
    for seed in range(6):
        rng = np.random.default_rng(seed)
        n, V = 1_500, 300
        per_row = rng.choice([0, 1, 1, 1, 2, 3], n)
        row = np.repeat(np.arange(n), per_row)
        pool = sparse.csr_matrix((rng.integers(1, 3, len(row)).astype(float), (row, rng.zipf(1.3, len(row)) % V)),
                                 shape=(n, V))
        queries = rng.choice(n, 80, replace=False)
        k = int(rng.integers(1, 60))
        dense = pool.toarray()
        d = (dense[queries] ** 2).sum(1)[:, None] + (dense ** 2).sum(1)[None, :] - 2 * dense[queries] @ dense.T
        d[np.arange(len(queries)), queries] = np.inf if exclude_self else 0.0
        expected = np.lexsort((np.broadcast_to(np.arange(n), d.shape), d), axis=1)[:, :k]
        rows, dist = H.nearest_neighbours(pool[queries], pool, k, self_row=queries, exclude_self=exclude_self,
                                          block_rows=16)
        assert rows.tolist() == expected.tolist(), seed
        assert dist == pytest.approx(np.sqrt(np.take_along_axis(d, expected, axis=1)))
        queried += len(queries)
    assert 0 < sum(searched) < queried / 4           # some ties needed the full search, most did not


@pytest.mark.parametrize("seed", range(3))
def test_nearest_neighbours_equal_the_brute_force_search_bit_for_bit_on_tifu_vectors(seed, monkeypatch):
    # TIFU-like float weights: the sparse search must give the brute-force search's rows and distances exactly
    monkeypatch.setattr(H, "SPARSE_BELOW", 1.0)
    rng = np.random.default_rng(seed)
    n, V = 2_000, 400
    baskets = [[rng.zipf(1.4, rng.integers(1, 4)) % V for _ in range(rng.choice([1, 1, 2, 3, 6]))] for _ in range(n)]
    vectors = H.tifu_user_vectors(baskets, V, H.TifuKnnParams(group_count=3, k=50))
    queries = rng.choice(n, 200, replace=False)
    for exclude_self in (True, False):
        rows, dist = H.nearest_neighbours(vectors[queries], vectors, 50, self_row=queries, exclude_self=exclude_self)
        q_sq = np.asarray(vectors[queries].multiply(vectors[queries]).sum(1)).ravel()
        p_sq = np.asarray(vectors.multiply(vectors).sum(1)).ravel()
        brute_rows, brute_d2 = H._dense_neighbours(vectors[queries] @ vectors.T.tocsr(), q_sq, p_sq, queries,
                                                   exclude_self, 50)
        assert rows.tolist() == brute_rows.tolist()
        assert np.array_equal(dist, np.sqrt(brute_d2))
