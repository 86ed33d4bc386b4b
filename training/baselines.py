"""The baselines a Spark shop would otherwise ship, scored with the same protocol as the model (full
ranking over the same catalogue, the same users and held-out baskets; see jobs/evaluate.py):

- ``popularity``: items by how often they occur in the users' histories.
- ``cooccurrence``: item-to-item, cosine-normalised user co-occurrence (C = XᵀX / sqrt(n_i n_j)); a
  user's score is the sum of the rows of C for the items in their history.
- ``repeat``: the user's own past items by frequency, then recency; everything else after them by
  popularity (so the list is always full).
- ``als``: Spark MLlib ALS with implicit feedback (Hu, Koren & Volinsky 2008) on user x item counts;
  the factors are taken out of Spark and scored like the model (dot products).

Histories and targets are catalogue indices (0..V-1). Pure functions over numpy / scipy arrays and one
Spark DataFrame (ALS); no I/O. Every ``*_scores`` returns (n_users, V) float64, higher is better.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
from scipy import sparse

BASELINES = ("popularity", "cooccurrence", "repeat", "als")


def item_counts(histories: Sequence[Sequence[int]], num_items: int) -> np.ndarray:
    flat = np.concatenate([np.asarray(h, dtype=np.int64) for h in histories]) if histories else np.zeros(0, np.int64)
    return np.bincount(flat, minlength=num_items).astype(np.float64)


def _normalised(counts: np.ndarray) -> np.ndarray:
    return counts / counts.max() if counts.max() > 0 else counts


def popularity_scores(counts: np.ndarray, n_users: int) -> np.ndarray:
    return np.broadcast_to(counts, (n_users, counts.shape[0])).astype(np.float64)


def user_item_matrix(histories: Sequence[Sequence[int]], num_items: int) -> sparse.csr_matrix:
    """(users, V) binary: 1 where the user's history holds the item."""
    rows = np.concatenate([np.full(len(h), u) for u, h in enumerate(histories)]) if histories else np.zeros(0)
    cols = np.concatenate([np.asarray(h, dtype=np.int64) for h in histories]) if histories else np.zeros(0)
    x = sparse.csr_matrix((np.ones(len(cols)), (rows, cols)), shape=(len(histories), num_items))
    x.sum_duplicates()
    x.data[:] = 1.0
    return x


def fit_cooccurrence(histories: Sequence[Sequence[int]], num_items: int) -> sparse.csr_matrix:
    """(V, V) cosine co-occurrence of items over users, zero diagonal."""
    x = user_item_matrix(histories, num_items)
    c = (x.T @ x).tocsr().astype(np.float64)
    n = np.sqrt(np.asarray(c.diagonal()).clip(min=1.0))
    c = sparse.diags(1.0 / n) @ c @ sparse.diags(1.0 / n)
    c.setdiag(0.0)
    c.eliminate_zeros()
    return c.tocsr()


def cooccurrence_scores(model: sparse.csr_matrix, histories: Sequence[Sequence[int]], counts: np.ndarray) -> np.ndarray:
    x = user_item_matrix(histories, model.shape[0])
    # popularity * 1e-6 only breaks ties (users whose items co-occur with nothing)
    return np.asarray((x @ model).todense()) + 1e-6 * _normalised(counts)[None, :]


def repeat_scores(histories: Sequence[Sequence[int]], counts: np.ndarray) -> np.ndarray:
    """Past items by frequency, then recency (last position), then everything else by popularity."""
    V = counts.shape[0]
    out = np.tile(1e-3 * _normalised(counts), (len(histories), 1))
    for u, h in enumerate(histories):
        h = np.asarray(h, dtype=np.int64)
        if len(h) == 0:
            continue
        freq = np.bincount(h, minlength=V).astype(np.float64)
        last = np.full(V, -1.0)
        last[h] = np.arange(len(h), dtype=np.float64)        # later assignment wins: last position
        seen = freq > 0
        out[u, seen] = 1.0 + freq[seen] + 0.5 * (last[seen] + 1) / (len(h) + 1)
    return out


def fit_als(interactions, *, rank: int, reg_param: float, alpha: float, max_iter: int, seed: int = 0):
    """Spark MLlib ALS, implicit. ``interactions``: DataFrame (user_idx int, item_idx int, count double);
    ``rank``, ``reg_param``, ``alpha``, ``max_iter``: the ``evaluate.als_*`` settings (jobs/config.py).
    Returns the fitted ``ALSModel`` (its ``userFactors`` / ``itemFactors`` DataFrames hold the vectors)."""
    from pyspark.ml.recommendation import ALS

    als = ALS(userCol="user_idx", itemCol="item_idx", ratingCol="count", implicitPrefs=True, rank=rank,
              regParam=reg_param, alpha=alpha, maxIter=max_iter, seed=seed, coldStartStrategy="nan",
              nonnegative=False)
    return als.fit(interactions)


def factor_scores(user_factors: np.ndarray, item_factors: np.ndarray, item_has_factor: np.ndarray,
                  counts: np.ndarray) -> np.ndarray:
    """Dot products; items ALS never saw rank last (by popularity among themselves)."""
    scores = user_factors @ item_factors.T
    floor = scores.min() - 1.0 if scores.size else 0.0
    missing = ~item_has_factor
    scores[:, missing] = floor + 1e-3 * _normalised(counts)[missing][None, :]
    return scores


def als_factors(spark, histories: Sequence[Sequence[int]], num_items: int, *, rank: int, reg_param: float,
                alpha: float, max_iter: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Implicit ALS (:func:`fit_als`) on the user x item counts of ``histories`` (catalogue indices, one
    list per user): (user factors (n, rank), item factors (V, rank), whether each item got a factor)."""
    import pandas as pd

    rows = [(u, int(i)) for u, h in enumerate(histories) for i in h]
    counts = pd.DataFrame(rows, columns=["user_idx", "item_idx"]).value_counts().reset_index(name="count")
    df = spark.createDataFrame(counts.astype({"user_idx": "int32", "item_idx": "int32", "count": "float64"}))
    model = fit_als(df, rank=rank, reg_param=reg_param, alpha=alpha, max_iter=max_iter, seed=seed)
    users = np.zeros((len(histories), model.rank))
    for row in model.userFactors.collect():
        users[row["id"]] = row["features"]
    items = np.zeros((num_items, model.rank))
    has = np.zeros(num_items, dtype=bool)
    for row in model.itemFactors.collect():
        items[row["id"]], has[row["id"]] = row["features"], True
    return users, items, has
