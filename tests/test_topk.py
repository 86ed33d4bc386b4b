"""scoring.topk: the tiled top-K against a brute-force reference (full score matrix + lexsort on
(-score, item index)), on random data with and without ties, with exclusions, across tile sizes."""
from __future__ import annotations

import numpy as np
import pytest

from scoring.topk import brute_force, topk, topk_with_boosts


def _exact_floats(rng, shape, levels=50):
    """Multiples of 1/8 in [-levels/8, levels/8]: dot products over d <= 16 are exact in float32, so the
    blocked matmul and the reference agree to the bit and ties are real ties."""
    return (rng.integers(-levels, levels + 1, shape) / 8).astype(np.float32)


def _ids(result, i):
    return result.indices[i, :result.counts[i]].tolist()


@pytest.mark.parametrize("n,m,d,k,levels,block_bytes,tile_items", [
    (300, 2000, 8, 100, 50, 1 << 20, 2048),   # one item tile; a few ties among 2000 items
    (300, 2000, 8, 100, 50, 1 << 16, 300),    # 7 item tiles (the last one narrower), 54 users per block
    (200, 3000, 8, 50, 3, 1 << 18, 512),      # heavy ties (values in {-3/8..3/8}) spanning tile borders
    (97, 1000, 16, 10, 50, 4096, 1000),       # one user per block, k small
    (40, 70, 4, 100, 50, 1 << 20, 16),        # catalogue smaller than k: every item, in order
    (50, 1601, 8, 100, 50, 1 << 20, 100),     # m not a multiple of the tile width
])
def test_topk_equals_brute_force_including_ties(n, m, d, k, levels, block_bytes, tile_items):
    rng = np.random.default_rng(n * m + k)
    users, items = _exact_floats(rng, (n, d), levels), _exact_floats(rng, (m, d), levels)
    result = topk(users, items, k, block_bytes=block_bytes, tile_items=tile_items)
    reference = brute_force(users, items, k)
    assert all(_ids(result, i) == reference[i] for i in range(n))
    full = users @ items.T
    for i in range(n):
        np.testing.assert_array_equal(result.scores[i, :result.counts[i]], full[i, reference[i]])


@pytest.mark.parametrize("m,block_bytes,widths", [
    (9000, 4 << 20, {9000}),              # the default: a block of 64 users holds the whole row, one tile
    (9000, 1 << 20, {4096, 808}),         # it does not: 4096-item tiles, the last one narrower
])
def test_default_tiling_equals_brute_force(m, block_bytes, widths, monkeypatch):
    import scoring.topk as T

    seen, scan = set(), T._scan_tile
    monkeypatch.setattr(T, "_scan_tile", lambda tile, *rest: (seen.add(tile.shape[1]), scan(tile, *rest)))
    rng = np.random.default_rng(m)
    users, items = _exact_floats(rng, (150, 8), 20), _exact_floats(rng, (m, 8), 20)
    result = topk(users, items, 100, block_bytes=block_bytes)
    assert seen == widths
    reference = brute_force(users, items, 100)
    assert all(_ids(result, i) == reference[i] for i in range(150))


def test_ties_at_the_cut_keep_the_smallest_item_indices():
    # 40 identical items score the same for every user: the top 10 must be the first ten of them.
    items = np.zeros((200, 4), dtype=np.float32)
    items[:, 0] = -1.0
    items[50:90] = [1.0, 0.0, 0.0, 0.0]
    users = np.array([[1.0, 0.0, 0.0, 0.0], [2.0, 1.0, 0.0, 0.0]], dtype=np.float32)
    for tile_items in (2048, 64, 7):                      # the tied run inside one tile, or across tiles
        result = topk(users, items, 10, tile_items=tile_items)
        assert _ids(result, 0) == list(range(50, 60))
        assert _ids(result, 1) == list(range(50, 60))
        assert result.scores[0].tolist() == [1.0] * 10


def test_duplicated_items_are_ordered_by_index_across_tiles():
    # Gaussian vectors, each item present twice (index j and j + 5000): every pair ties exactly.
    rng = np.random.default_rng(7)
    base = rng.standard_normal((5000, 16)).astype(np.float32)
    items = np.concatenate([base, base])
    users = rng.standard_normal((64, 16)).astype(np.float32)
    result = topk(users, items, 100, tile_items=1024)
    for i in range(64):
        ids = _ids(result, i)
        assert len(ids) == 100
        pairs = [(ids[j], ids[j + 1]) for j in range(0, 100, 2)]
        assert all(b == a + 5000 for a, b in pairs)          # twin right after its lower-index copy
        assert (np.diff(result.scores[i]) <= 0).all()


def test_nan_and_minus_infinity_never_enter_and_minus_zero_ties_with_zero():
    # Every score is <= 0: item 40 scores -0.0, item 41 +0.0 (a tie: the lower index first); NaN items
    # spread over the row (100, 300, 550-564), item 200 -inf. Across one wide tile (the user's first bar
    # comes from group maxima, where a NaN must not count) and narrow ones.
    rng = np.random.default_rng(5)
    users = (rng.integers(1, 9, (20, 4)) / 8).astype(np.float32)
    items = -np.abs(_exact_floats(rng, (600, 4)))
    items[40], items[41] = -0.0, 0.0
    nan_items = [100, 300, *range(550, 565)]
    items[nan_items], items[200] = np.nan, -np.inf
    for tile_items in (600, 64):
        result = topk(users, items, 10, tile_items=tile_items)
        reference = brute_force(users, items, 10)
        assert [_ids(result, i) for i in range(20)] == reference
        assert all(ids[:2] == [40, 41] for ids in reference)
        assert not np.isin(result.indices, [*nan_items, 200]).any()
    full = topk(users, items, 600)
    assert (full.counts == 600 - len(nan_items) - 1).all()     # everything but the NaN and -inf items


def test_exclusions_are_never_returned_and_shorten_lists_only_when_needed():
    rng = np.random.default_rng(3)
    users, items = _exact_floats(rng, (30, 8)), _exact_floats(rng, (120, 8))
    excluded = [set(rng.choice(120, size=rng.integers(0, 40), replace=False).tolist()) for _ in range(30)]
    excluded[0] = set(range(115))           # only 5 eligible items left for user 0
    excluded[1] = set(range(120))           # nothing left for user 1
    indptr = np.concatenate([[0], np.cumsum([len(e) for e in excluded])])
    # In any order within a user (the scorer sorts them), and across several item tiles.
    flat = np.concatenate([rng.permutation(sorted(e)) for e in excluded]).astype(np.int64)
    result = topk(users, items, 20, exclude_indptr=indptr, exclude_indices=flat, block_bytes=4096, tile_items=50)
    reference = brute_force(users, items, 20, excluded)
    assert [_ids(result, i) for i in range(30)] == reference
    assert result.counts[0] == 5 and _ids(result, 0) == [j for j in reference[0]] and set(reference[0]) <= set(range(115, 120))
    assert result.counts[1] == 0 and (result.indices[1] == -1).all()
    assert all(result.counts[i] == 20 for i in range(2, 30))


def test_gaussian_scores_match_a_float64_reference():
    rng = np.random.default_rng(11)
    users = rng.standard_normal((500, 64)).astype(np.float32)
    items = rng.standard_normal((20000, 64)).astype(np.float32)
    result = topk(users, items, 100)
    full = users.astype(np.float64) @ items.astype(np.float64).T
    for i in range(0, 500, 7):
        ref = np.argsort(-full[i], kind="stable")[:100]
        # float32 vs float64 may swap neighbours closer than 1e-4; everything else must agree exactly.
        np.testing.assert_allclose(result.scores[i], full[i, ref], rtol=0, atol=1e-4)
        assert set(_ids(result, i)) ^ set(ref.tolist()) <= {j for j in range(20000)
                                                             if abs(full[i, j] - full[i, ref[-1]]) < 1e-4}


@pytest.mark.parametrize("levels,k", [(50, 20), (3, 10)])
def test_boosts_equal_brute_force_with_exclusions_and_ties(levels, k):
    """Sparse per-user boosts (the repeat head), positive and negative, some on excluded items and
    some outside the dot-product top: the same ids, order and scores as the dense reference."""
    rng = np.random.default_rng(levels + k)
    n, m = 60, 400
    users, items = _exact_floats(rng, (n, 8), levels), _exact_floats(rng, (m, 8), levels)
    boosts = [dict(zip(rng.choice(m, size=rng.integers(0, 30), replace=False).tolist(),
                       (rng.integers(-16, 40, 30) / 4).tolist())) for _ in range(n)]
    boosts[0] = {}                                         # a user without history
    boosts[1] = {j: 1000.0 for j in range(m - 5, m)}       # boosted far above every dot product
    excluded = [set(rng.choice(m, size=rng.integers(0, 20), replace=False).tolist()) for _ in range(n)]
    excluded[1] |= {m - 1}                                 # an excluded item stays out, boosted or not
    b_indptr = np.concatenate([[0], np.cumsum([len(b) for b in boosts])])
    b_idx = np.array([j for b in boosts for j in b], dtype=np.int64)
    b_val = np.array([v for b in boosts for v in b.values()], dtype=np.float32)
    x_indptr = np.concatenate([[0], np.cumsum([len(e) for e in excluded])])
    x_idx = np.array([j for e in excluded for j in e], dtype=np.int64)
    result = topk_with_boosts(users, items, k, b_indptr, b_idx, b_val, exclude_indptr=x_indptr,
                              exclude_indices=x_idx, tile_items=128)
    reference = brute_force(users, items, k, excluded, boosts)
    assert [_ids(result, i) for i in range(n)] == reference
    lifted = set(range(m - 5, m)) - excluded[1]
    assert set(_ids(result, 1)[:len(lifted)]) == lifted and m - 1 not in _ids(result, 1)
    full = users @ items.T
    for i in range(n):
        want = [full[i, j] + np.float32(boosts[i].get(j, 0.0)) for j in reference[i]]
        np.testing.assert_array_equal(result.scores[i, :result.counts[i]], np.array(want, np.float32))
    plain = topk_with_boosts(users, items, k, np.zeros(n + 1, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32))
    assert [_ids(plain, i) for i in range(n)] == brute_force(users, items, k)


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="must be"):
        topk(np.zeros((2, 3)), np.zeros((4, 5)), 2)
    with pytest.raises(ValueError, match="k must be"):
        topk(np.zeros((2, 3)), np.zeros((4, 3)), 0)
    with pytest.raises(ValueError, match="n \\+ 1"):
        topk(np.zeros((2, 3)), np.zeros((4, 3)), 2, exclude_indptr=np.array([0, 1]), exclude_indices=np.array([1]))
