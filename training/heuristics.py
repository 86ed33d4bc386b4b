"""Next-basket heuristics for the next-week backtest (Li et al., "A Next Basket Recommendation Reality
Check", TOIS 2023): the simple baselines that paper finds hard to beat, scored over the whole catalogue.

- :func:`window_popularity`: distinct buyers per item over a window before the cut-off (G-TopFreq),
  from :func:`distinct_buyers`.
- :func:`p_topfreq`: the user's own past items by how many baskets held them (P-TopFreq), then everything
  else by a fallback score, so the list is always full.
- :func:`past_items_recent`: the user's basket counts plus a weighted log of last week's sales.
- :func:`tifu_knn_scores`: TIFU-KNN (Hu, He, Gao & Zhang, SIGIR 2020) as the authors' reference code
  computes it (see that function's docstring for what was matched). Its differences from the reference,
  on purpose: k is capped at the pool size (the reference raises); equal distances go to the lower pool
  row (sklearn's brute search leaves them unspecified); users with no baskets score only through their
  neighbours (the reference would give NaN); the ranking's ties go to the lower item index (the
  reference's argsort()[::-1] puts the higher index first); items neither the user nor its neighbours
  bought score 0.

Inputs: ``baskets_per_user`` is one list per user of baskets in time order (oldest first), each basket a
collection of catalogue indices 0..V-1 (duplicates inside a basket ignored), all strictly before the
night's cut-off. Every ``*_scores``-like function returns (n_users, V) float32, higher is better, and is
ranked with :func:`training.metrics.rank_items` (ties go to the lower item index). Pure numpy / scipy,
no I/O; called by the backtest job and the tests.
"""
from __future__ import annotations

from dataclasses import dataclass
from itertools import chain
from typing import Sequence

import numpy as np
from scipy import sparse

Baskets = Sequence[Sequence[Sequence[int]]]


@dataclass(frozen=True)
class _Flat:
    """Every distinct (user, basket, item) of a night, ordered by user, then basket, then item."""
    user: np.ndarray            # (E,) int64
    position: np.ndarray        # (E,) int64, the basket's position in the user's history, 0 = oldest
    item: np.ndarray            # (E,) int64
    n_baskets: np.ndarray       # (n_users,) int64, empty baskets included


def _flatten(baskets_per_user: Baskets, num_items: int) -> _Flat:
    n_baskets = np.fromiter((len(u) for u in baskets_per_user), np.int64, count=len(baskets_per_user))
    total = int(n_baskets.sum())
    sizes = np.fromiter((len(b) for u in baskets_per_user for b in u), np.int64, count=total)
    items = np.fromiter(chain.from_iterable(chain.from_iterable(baskets_per_user)), np.int64,
                        count=int(sizes.sum()))
    if items.size and (items.min() < 0 or items.max() >= num_items):
        raise ValueError(f"item indices must lie in 0..{num_items - 1}")
    basket = np.repeat(np.arange(total, dtype=np.int64), sizes)
    # one key per (basket, item): drops duplicates inside a basket and sorts by basket, then item
    key = _distinct(basket * num_items + items)
    basket, item = key // num_items, key % num_items
    user_of_basket = np.repeat(np.arange(len(n_baskets), dtype=np.int64), n_baskets)
    first_basket = np.cumsum(n_baskets) - n_baskets
    position_of_basket = np.arange(total, dtype=np.int64) - first_basket[user_of_basket]
    return _Flat(user_of_basket[basket], position_of_basket[basket], item, n_baskets)


def _distinct(keys: np.ndarray) -> np.ndarray:
    """Sorted distinct values; sort and compare, as np.unique's hash path is ~20x slower on 2M keys."""
    keys = np.sort(keys)
    return keys[np.r_[True, keys[1:] != keys[:-1]]] if keys.size else keys


def _basket_counts(flat: _Flat, num_items: int) -> sparse.csr_matrix:
    """(n_users, V) number of the user's baskets that held each item."""
    ones = np.ones(len(flat.item), np.float64)
    return sparse.csr_matrix((ones, (flat.user, flat.item)), shape=(len(flat.n_baskets), num_items))



def basket_counts(baskets_per_user: Baskets, num_items: int) -> sparse.csr_matrix:
    """(n_users, V) how many of each user's baskets held each item (the P-TopFreq count)."""
    return _basket_counts(_flatten(baskets_per_user, num_items), num_items)


def distinct_buyers(user: np.ndarray, item: np.ndarray, day: np.ndarray, num_items: int, *,
                    cutoff_day: int, window_days: int) -> np.ndarray:
    """(V,) int64: how many distinct users bought each item on days cutoff_day - window_days ..
    cutoff_day - 1. ``user``, ``item``, ``day`` are parallel purchase arrays (days as integers, e.g.
    days since 1970-01-01); purchases on or after the cut-off are ignored (point in time)."""
    user, item, day = (np.asarray(a, np.int64) for a in (user, item, day))
    keep = (day >= cutoff_day - window_days) & (day < cutoff_day)
    if not keep.any():
        return np.zeros(num_items, np.int64)
    n_users = int(user[keep].max()) + 1
    pairs = _distinct(item[keep] * n_users + user[keep])                  # one per (item, buyer)
    return np.bincount(pairs // n_users, minlength=num_items).astype(np.int64)


def window_popularity(buyers_per_item: np.ndarray, n_users: int) -> np.ndarray:
    """G-TopFreq: every user gets the same scores, the items' distinct buyers over the window (from
    :func:`distinct_buyers`). Returns a read-only (n_users, V) float32 view of one row, so a 6,000-user
    night costs one catalogue row of memory; ties go to the lower item index when ranked."""
    row = np.asarray(buyers_per_item, np.float32)
    return np.broadcast_to(row, (n_users, row.shape[0]))



def p_topfreq(baskets_per_user: Baskets, num_items: int, fallback: np.ndarray) -> np.ndarray:
    """P-TopFreq with a fill: the user's past items first, by the number of baskets that held them,
    ties by recency (the item whose last basket is more recent first), then by ``fallback``; then every
    other item by ``fallback`` (e.g. 30-day :func:`distinct_buyers`). Remaining ties go to the lower item
    index, so the whole ranking is fixed.

    The scores are the ranking itself, written as integers: V + (past items left below) for past items,
    V - (fallback rank) for the rest. They are exact in float32 up to 2^23 items, so no epsilon can
    swap two items, and only their order means anything.
    """
    V = num_items
    fallback = np.asarray(fallback, np.float64)
    if fallback.shape != (V,):
        raise ValueError(f"fallback must have shape ({V},), got {fallback.shape}")
    fallback_rank = np.empty(V, np.int64)
    fallback_rank[np.argsort(-fallback, kind="stable")] = np.arange(V)      # 0 = best; ties to lower index
    flat = _flatten(baskets_per_user, V)
    n_users = len(flat.n_baskets)
    out = np.tile((V - fallback_rank).astype(np.float32), (n_users, 1))
    if not len(flat.item):
        return out
    # one run per (user, item), its baskets in time order: the run's length is the count, its end the last
    pair = flat.user * V + flat.item
    by_pair = np.lexsort((flat.position, pair))
    pair, position = pair[by_pair], flat.position[by_pair]
    run_end = np.r_[pair[1:] != pair[:-1], True]
    ends = np.flatnonzero(run_end)
    count = np.diff(np.r_[-1, ends])
    last = position[ends]
    user, item = pair[ends] // V, pair[ends] % V
    order = np.lexsort((fallback_rank[item], -last, -count, user))
    user, item = user[order], item[order]
    n_past = np.bincount(user, minlength=n_users)
    place = np.arange(len(user)) - (np.cumsum(n_past) - n_past)[user]     # 0 = the user's best past item
    out[user, item] = (V + n_past[user] - place).astype(np.float32)
    return out


def past_items_recent(baskets_per_user: Baskets, num_items: int, log1p_purchases_7d: np.ndarray,
                      w: float) -> np.ndarray:
    """score(u, i) = (number of u's baskets that held i) + w * log1p(c_i), where c_i is the item's
    purchases over the 7 days before the target day: the caller passes log1p(c) already, as
    training.data.recent_purchase_matrix stores it. Ties go to the lower item index when ranked."""
    recent = np.asarray(log1p_purchases_7d, np.float64)
    if recent.shape != (num_items,):
        raise ValueError(f"log1p_purchases_7d must have shape ({num_items},), got {recent.shape}")
    flat = _flatten(baskets_per_user, num_items)
    out = np.tile((w * recent).astype(np.float32), (len(flat.n_baskets), 1))
    counts = _basket_counts(flat, num_items).tocoo()
    # summed in float64 and rounded once, so float32 adds no error of its own to the order
    out[counts.row, counts.col] = (counts.data + w * recent[counts.col]).astype(np.float32)
    return out



@dataclass(frozen=True)
class TifuKnnParams:
    """TIFU-KNN's hyper-parameters, named as in the paper; the reference code's names in brackets.
    Defaults are the values left commented in the authors' ``main`` (their TaFeng setting)."""
    group_count: int = 7          # m ["group_size"]: the number of groups a history is split into
    within_decay: float = 0.9     # r_b ["within_decay_rate"]: per basket, counted from the user's last basket
    group_decay: float = 0.7      # r_g ["group_decay_rate"]: per group, counted from group m - 1
    k: int = 300                  # neighbours ["num_nearest_neighbors"]
    alpha: float = 0.7            # weight of the user's own vector against the neighbours' mean

    def __post_init__(self):
        if self.group_count < 1 or self.k < 1:
            raise ValueError("group_count and k must be at least 1")
        if self.within_decay <= 0 or self.group_decay <= 0:
            raise ValueError("within_decay and group_decay must be positive")
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError("alpha must lie in [0, 1]")


# The grid tuned on each validation night (the backtest, the ranker's TIFU-KNN retriever), in the
# backtest's short names: m = group_count, rb = within_decay, rg = group_decay.
TIFU_GRID = [{"m": m, "rb": rb, "rg": rg, "k": k, "alpha": a}
             for m in (3, 7) for rb in (0.9, 1.0) for rg in (0.6, 0.9) for k in (100, 300) for a in (0.5, 0.7, 0.9)]


def tifu_params(point) -> TifuKnnParams:
    """A :data:`TIFU_GRID` point as parameters."""
    return TifuKnnParams(group_count=int(point["m"]), within_decay=float(point["rb"]), group_decay=float(point["rg"]),
                         k=int(point["k"]), alpha=float(point["alpha"]))


def _tifu_group_of(n: np.ndarray, position: np.ndarray, m: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For baskets at ``position`` of histories of ``n`` baskets: (group index, baskets in that group,
    groups in that history), the way the reference's group_history_list splits a history."""
    n, position = np.asarray(n, np.int64), np.asarray(position, np.int64)
    short = n < m                                   # one basket per group, and only n groups
    base = np.maximum(n // m, 1)
    residual = n % m                                # the reference rounds (n/m - floor(n/m)) * m: the same
    cut = (m - residual) * base                     # the first m - r groups hold `base` baskets each ...
    early = position < cut
    group = np.where(early, position // base, (m - residual) + (position - cut) // (base + 1))
    size = np.where(early, base, base + 1)          # ... the last r (the most recent) one more
    return (np.where(short, position, group), np.where(short, 1, size), np.where(short, n, m))


def tifu_groups(n_baskets: int, group_count: int) -> list[list[int]]:
    """The basket positions (0 = oldest) of each group, oldest group first, exactly as the reference's
    ``group_history_list`` splits ``n_baskets`` baskets into ``group_count`` groups."""
    position = np.arange(n_baskets)
    group, _, real = _tifu_group_of(np.full(n_baskets, n_baskets), position, group_count)
    n_groups = int(real[0]) if n_baskets else 0
    return [position[group == g].tolist() for g in range(n_groups)]


def tifu_basket_weights(n_baskets: int, params: TifuKnnParams) -> np.ndarray:
    """(n_baskets,) the weight each basket's 0/1 vector gets in the user's TIFU vector (oldest first)."""
    position = np.arange(n_baskets)
    return _tifu_weights(np.full(n_baskets, n_baskets), position, params)


def _tifu_weights(n: np.ndarray, position: np.ndarray, params: TifuKnnParams) -> np.ndarray:
    m = params.group_count
    group, size, real = _tifu_group_of(n, position, m)
    within = np.power(params.within_decay, (n - 1 - position).astype(np.float64))
    between = np.power(params.group_decay, (m - 1 - group).astype(np.float64))
    return within * between / (size * real)


def tifu_user_vectors(baskets_per_user: Baskets, num_items: int, params: TifuKnnParams) -> sparse.csr_matrix:
    """(n_users, V) float64 TIFU vectors (the reference's ``temporal_decay_sum_history``); a user with no
    baskets gets the zero vector (the reference divides by zero groups there and gets NaN)."""
    flat = _flatten(baskets_per_user, num_items)
    weight = _tifu_weights(flat.n_baskets[flat.user], flat.position, params)
    return sparse.csr_matrix((weight, (flat.user, flat.item)), shape=(len(flat.n_baskets), num_items))


# The sparse search handles one (query, row) pair about 12x slower than the brute force's dense block does
# (the 100K-user bench lake: 0.35 against 0.029 us), so it pays only where the pairs that share an item, plus
# k a query, are a small share of all pairs: ~3% on the generated lakes; Online Retail's customers (many
# baskets each) share items with far more of the others.
SPARSE_BELOW = 0.05


def nearest_neighbours(query: sparse.csr_matrix, pool: sparse.csr_matrix, k: int, *,
                       self_row: np.ndarray | None = None, exclude_self: bool = True,
                       block_rows: int = 512) -> tuple[np.ndarray, np.ndarray]:
    """Exact Euclidean k nearest pool rows of every query row -> ((n_q, k') pool rows, (n_q, k')
    distances), nearest first, equal distances to the lower pool row; k' = min(k, pool rows available).

    ``self_row[q]`` is query q's own row in the pool (-1 if it is not there). With ``exclude_self`` that
    row is never a neighbour; without it, its distance is set to exactly 0, so a user is its own first
    neighbour (ahead of any identical twin with a higher row).

    Squared distances are ||q||² + ||p||² - 2 q·p in float64, one block of ``block_rows`` queries at a
    time. Purchase vectors are sparse: every pool row a query shares no item with is at ||q||² + ||p||²,
    so the nearest of those rows are the pool's smallest norms, the same for every query. Where the pairs
    that share an item are few (:data:`SPARSE_BELOW`), a block's queries are compared with the rows they
    share an item with (one sparse product) and with the pool's first rows by (norm, row), enough of them
    to fill k; a query whose k-th distance ties with a row left out is searched over the whole pool.
    Elsewhere the block is the brute force over every pair (:func:`_dense_neighbours`). Either way the
    answer is the brute-force search's, bit for bit (tests/test_heuristics.py); the sparse search's cost
    grows with the pairs that share an item rather than with all pairs (2.2-2.6 -> 0.6-0.8 s per 1,024
    queries over 85,000 generated customers: docs/model.md, "Cost").
    """
    query, pool = sparse.csr_matrix(query, dtype=np.float64), sparse.csr_matrix(pool, dtype=np.float64)
    n_q, n_p = query.shape[0], pool.shape[0]
    self_row = np.full(n_q, -1, np.int64) if self_row is None else np.asarray(self_row, np.int64)
    available = n_p - (1 if exclude_self and (self_row >= 0).any() else 0)
    k = min(k, available)
    if k <= 0:
        return np.zeros((n_q, 0), np.int64), np.zeros((n_q, 0), np.float64)
    q_sq = np.asarray(query.multiply(query).sum(axis=1)).ravel()
    p_sq = np.asarray(pool.multiply(pool).sum(axis=1)).ravel()
    by_norm = _NormOrder(p_sq)
    pool_t = pool.T.tocsr()
    rows_out = np.empty((n_q, k), np.int64)
    dist_out = np.empty((n_q, k), np.float64)
    for start in range(0, n_q, block_rows):
        stop = min(start + block_rows, n_q)
        block = slice(start, stop)
        dots = query[block] @ pool_t
        if dots.nnz + (stop - start) * (k + 2) > SPARSE_BELOW * (stop - start) * n_p:    # dense enough: all pairs
            rows_out[block], dist_out[block] = _dense_neighbours(dots, q_sq[block], p_sq, self_row[block],
                                                                 exclude_self, k)
            continue
        rows, d2, unsure = _sparse_neighbours(dots, q_sq[block], p_sq, by_norm, self_row[block], exclude_self, k)
        if len(unsure):
            at = unsure + start
            rows[unsure], d2[unsure] = _dense_neighbours(query[at] @ pool_t, q_sq[at], p_sq, self_row[at],
                                                         exclude_self, k)
        rows_out[block], dist_out[block] = rows, d2
    return rows_out, np.sqrt(dist_out)


@dataclass(frozen=True)
class _NormOrder:
    """The pool's rows by (squared norm, row): the nearest rows of a query that shares no item with them."""
    rows: np.ndarray            # (n_p,) pool rows in that order
    position: np.ndarray        # (n_p,) each pool row's position in it
    norm: np.ndarray            # (n_p,) the squared norms in that order, ascending
    next_run: np.ndarray        # (n_p,) the first position after position j whose norm differs (n_p: none)

    def __init__(self, p_sq: np.ndarray):
        rows = np.lexsort((np.arange(len(p_sq)), p_sq))
        position = np.empty_like(rows)
        position[rows] = np.arange(len(rows))
        norm = p_sq[rows]
        starts = np.flatnonzero(norm[1:] != norm[:-1]) + 1
        at = np.searchsorted(starts, np.arange(len(norm)), side="right")
        for name, value in (("rows", rows), ("position", position), ("norm", norm),
                            ("next_run", np.append(starts, len(norm))[at])):
            object.__setattr__(self, name, value)


def _sparse_neighbours(dots: sparse.csr_matrix, q_sq: np.ndarray, p_sq: np.ndarray, by_norm: _NormOrder,
                       self_row: np.ndarray, exclude_self: bool, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One block's k nearest from the rows each query shares an item with (``dots``: q·p, only those) and
    the pool's first rows by norm: (rows, squared distances, the block rows whose answer is not proven,
    to be searched in full). Squared distances are computed in the brute-force search's order of
    operations, so every float is the same."""
    B, n_p = dots.shape
    dots = dots.tocoo()
    r, c = dots.row.astype(np.int64), dots.col.astype(np.int64)
    mine = c != self_row[r]                                                # self is added below, as it is
    r, c = r[mine], c[mine]
    d2 = dots.data[mine] * -2.0
    d2 += q_sq[r]
    d2 += p_sq[c]
    np.maximum(d2, 0.0, out=d2)
    # each query's first rows by norm, enough that >= k + 1 of them share no item with it and are not it
    at = by_norm.position[c]
    reach = k + 2 + np.bincount(r, minlength=B)
    width = np.minimum(k + 2 + np.bincount(r[at < reach[r]], minlength=B), n_p)
    offset = np.cumsum(width) - width
    gr = np.repeat(np.arange(B), width)
    gc = by_norm.rows[np.arange(len(gr)) - offset[gr]]
    free = np.ones(len(gr), bool)
    free[(offset[r] + at)[at < width[r]]] = False                          # shares an item: computed above
    me = np.flatnonzero(self_row >= 0)
    mine_at = by_norm.position[self_row[me]]
    free[(offset[me] + mine_at)[mine_at < width[me]]] = False
    gr, gc = gr[free], gc[free]
    # an upper bound on each k-th distance: the farthest of the >= k + 1 rows by norm kept
    near = d2 <= q_sq[r] + by_norm.norm[width[r] - 1]
    r, c, d2 = r[near], c[near], d2[near]
    selves = me if not exclude_self else np.zeros(0, np.int64)
    R = np.concatenate([r, gr, selves])
    C = np.concatenate([c, gc, self_row[selves]])
    gd2 = q_sq[gr] + p_sq[gc]                                              # (-2 * 0 + q²) + p²: the same float
    D = np.concatenate([d2, gd2, np.zeros(len(selves))])
    grid = np.concatenate([np.zeros(len(r), bool), np.ones(len(gr), bool), np.zeros(len(selves), bool)])
    keep = D <= _kth_per_row([(r, d2), (gr, gd2), (selves, np.zeros(len(selves)))], B, k)[R]   # the k nearest, ties
    R, C, D, grid = R[keep], C[keep], D[keep], grid[keep]
    order = np.lexsort((C, D, R))
    first = np.searchsorted(R[order], np.arange(B))
    pick = order[first[:, None] + np.arange(k)[None, :]]                  # every row has >= k candidates
    rows, dist = C[pick], D[pick]
    # proven: every row left out is farther than the k-th, or ties with it only behind the rows chosen
    kth = dist[:, -1]
    cut = np.minimum(width, n_p - 1)
    nxt = q_sq + by_norm.norm[cut]                                         # the first row left out, by norm
    after = by_norm.next_run[cut]
    beyond = np.where(after < n_p, q_sq + by_norm.norm[np.minimum(after, n_p - 1)], np.inf)
    tied_ok = ~((dist == kth[:, None]) & ~(grid[pick] & (p_sq[rows] == by_norm.norm[cut][:, None]))).any(axis=1)
    sure = (width >= n_p) | (nxt > kth) | ((nxt == kth) & tied_ok & (beyond > kth))
    return rows, dist, np.flatnonzero(~sure)


def _kth_per_row(parts: list[tuple[np.ndarray, np.ndarray]], B: int, k: int) -> np.ndarray:
    """(B,) the k-th smallest value of each row (every row has >= k) over ``parts``, each (rows, values)
    sorted by row: one partition of the values laid out a row each, padded with inf."""
    counts = [np.bincount(rows, minlength=B) for rows, _ in parts]
    padded = np.full((B, int(sum(counts).max(initial=k))), np.inf)
    before = np.zeros(B, np.int64)
    for (rows, values), count in zip(parts, counts):
        padded[rows, np.arange(len(rows)) - np.repeat(np.cumsum(count) - count, count) + before[rows]] = values
        before += count
    return np.partition(padded, k - 1, axis=1)[:, k - 1]


def _dense_neighbours(dots: sparse.csr_matrix, q_sq: np.ndarray, p_sq: np.ndarray, self_row: np.ndarray,
                      exclude_self: bool, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The brute-force search of a few queries over the whole pool: (rows, squared distances)."""
    d2 = dots.toarray()                                                    # (B, n_p) q·p
    d2 *= -2.0
    d2 += q_sq[:, None]
    d2 += p_sq[None, :]
    np.maximum(d2, 0.0, out=d2)                                            # rounding can dip below 0
    has_self = np.flatnonzero(self_row >= 0)
    d2[has_self, self_row[has_self]] = np.inf if exclude_self else 0.0
    return _k_smallest(d2, k)


def _k_smallest(d: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per row the k smallest entries, sorted, equal values to the lower column: a partition finds each
    row's k-th value; the entries at or below it (k plus any ties) are sorted by (value, column) and the
    first k kept. Three passes over the (B, n_p) block, the rest on ~k entries a row."""
    B = d.shape[0]
    kth = np.partition(d, k - 1, axis=1)[:, k - 1:k]                       # (B, 1)
    row, col = np.nonzero(d <= kth)                                        # row-major: columns ascending
    val = d[row, col]
    order = np.lexsort((col, val, row))
    row, col, val = row[order], col[order], val[order]
    first = np.searchsorted(row, np.arange(B))
    at = first[:, None] + np.arange(k)[None, :]                            # every row has >= k entries
    return col[at].astype(np.int64), val[at]


@dataclass(frozen=True)
class TifuPool:
    """Every user's TIFU vector and the neighbour pool (the users with a basket): what each call of
    :func:`tifu_knn_scores` on one night's baskets and parameters shares (the ranker scores a night's
    users in chunks)."""
    vectors: sparse.csr_matrix      # (n_users, V)
    pool: sparse.csr_matrix         # (n_pool, V)
    row_in_pool: np.ndarray         # (n_users,) the user's pool row, -1 without baskets


def tifu_pool(baskets_per_user: Baskets, num_items: int, params: TifuKnnParams) -> TifuPool:
    vectors = tifu_user_vectors(baskets_per_user, num_items, params)
    n_baskets = np.fromiter((len(u) for u in baskets_per_user), np.int64, count=len(baskets_per_user))
    pool_users = np.flatnonzero(n_baskets > 0)
    row_in_pool = np.full(vectors.shape[0], -1, np.int64)
    row_in_pool[pool_users] = np.arange(len(pool_users))
    return TifuPool(vectors, vectors[pool_users], row_in_pool)


def tifu_knn_scores(baskets_per_user: Baskets, num_items: int, params: TifuKnnParams, *,
                    query_users: np.ndarray | None = None, exclude_self: bool = True,
                    block_users: int = 512, pool: TifuPool | None = None) -> np.ndarray:
    """TIFU-KNN scores, (len(query_users), V) float32: alpha * own vector + (1 - alpha) * the plain mean
    of the k nearest pool users' vectors. The pool is every user in ``baskets_per_user`` with at least one
    basket (pass everyone with history before the cut-off); ``query_users`` picks the rows to score
    (default all); ``pool``: :func:`tifu_pool` of the same baskets and parameters, computed once by a
    caller that scores in chunks.

    Matched to the authors' code (HaojiHu/TIFUKNN, TIFUKNN.py; the same functions are in Li et al.'s
    methods/tifuknn/tifuknn_new.py, the run the reality-check paper reports):

    - a basket is a 0/1 vector (repeats inside it count once) times r_b^(n-1-j) for basket j of the
      user's n (0 = oldest): the within decay counts from the user's last basket over the whole history,
      not from the end of the basket's group as the paper's formula reads;
    - group_history_list: with n < m every basket is its own group and there are n groups; otherwise m
      groups, the first m - (n mod m) of floor(n/m) consecutive baskets, the last n mod m (the most
      recent) of floor(n/m) + 1; a group is the mean of its baskets' vectors (:func:`tifu_groups`);
    - group g (0 = oldest) is weighted r_g^(m-1-g), with m the configured count even when there are
      fewer groups, so with n < m the newest group gets r_g^(m-n), not 1; the sum is divided by the real
      group count (n when n < m);
    - neighbours: brute-force Euclidean distance between these same vectors, and the prediction mixes
      these same vectors (as temporal_decay_sum_history feeds both KNN and merge_history);
    - the neighbours' mean divides by k, with no distance weighting.

    Self as neighbour: in the reference's evaluation the queried (test) users are a separate slice of
    users from the fitted (training) ones, so a user is never its own neighbour; ``exclude_self=True``
    (the default) reproduces that while every user of the night is in the pool. ``exclude_self=False``
    gives the other reading (the reference's unused KNN_history_record1, which fits and queries the same
    users): the user is its own first neighbour at distance 0, which raises the own weight to
    alpha + (1 - alpha) / k.
    """
    V = num_items
    fitted = tifu_pool(baskets_per_user, V, params) if pool is None else pool
    vectors, pool, row_in_pool = fitted.vectors, fitted.pool, fitted.row_in_pool
    query_users = np.arange(vectors.shape[0]) if query_users is None else np.asarray(query_users, np.int64)
    query = vectors[query_users]
    neighbours, _ = nearest_neighbours(query, pool, params.k, self_row=row_in_pool[query_users],
                                       exclude_self=exclude_self, block_rows=block_users)
    n_q, k = neighbours.shape
    out = np.empty((n_q, V), np.float32)
    for start in range(0, n_q, block_users):
        stop = min(start + block_users, n_q)
        block = neighbours[start:stop]
        # (B, n_pool), (1 - alpha) / k per neighbour: one sparse product gives the weighted mean
        weights = sparse.csr_matrix((np.full(block.size, (1.0 - params.alpha) / max(k, 1)),
                                     (np.repeat(np.arange(stop - start), k), block.ravel())),
                                    shape=(stop - start, pool.shape[0]))
        mixed = (weights @ pool).toarray()                                 # (B, V) float64
        own = query[start:stop].tocoo()
        mixed[own.row, own.col] += params.alpha * own.data                # csr: each (row, col) once
        out[start:stop] = mixed
    return out
