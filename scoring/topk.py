"""Exact top-K by dot product, in blocks: the scoring core that ``jobs/score.py`` runs on every Spark
executor (inside ``mapInArrow``) and that ``bench/score.py`` measures.

``topk(users (n, d), items (m, d), k)`` returns, per user, the indices and scores of the K items with
the highest dot product, ordered by score descending then item index ascending. Callers put the item
matrix in ``item_id`` order, so the tie-break is "score desc, item_id asc" — deterministic, and the
same on every machine and for every block size.

How it stays fast and exact without the full (n, m) score matrix:
- users are taken ``block_users`` at a time (sized so the (B, m) block of scores fits ``block_bytes``);
  only that block ever exists;
- columns are grouped ``group`` at a time; the maximum of each group is cheap to get (one vectorised
  pass). Let t be the K-th largest group maximum: K groups hold an element >= t, so every element
  below t has at least K elements strictly above it and cannot be in the top K. torch.topk therefore
  runs over the group maxima (m / group values per row) and then over the few groups that can hold a
  winner, instead of over all m scores;
- ``torch.topk`` is not stable, so ties are settled explicitly: we keep ``K + margin`` groups and take
  the top ``K + 1`` of their elements; if the last kept group maximum still equals t, or the (K+1)-th
  candidate equals the K-th (a tie that may run past the cut), that row is redone exactly with a
  stable sort of its whole row. The K winners are then ordered by a lexsort on (-score, item index).

Excluded items (a user's past purchases) are scored -inf before the selection; a user whose eligible
items are fewer than K gets a shorter list (``counts``).

Pure: numpy / torch in, numpy out. No Spark, no I/O.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

NEG_INF = float("-inf")


@dataclass(frozen=True)
class TopK:
    """Per-user results, rows aligned with the input users."""

    indices: np.ndarray   # (n, k) int64 item indices; -1 past counts[i]
    scores: np.ndarray    # (n, k) float32; -inf past counts[i]
    counts: np.ndarray    # (n,) int32: how many of the k slots hold an eligible item


def topk(users: np.ndarray, items: np.ndarray, k: int, *,
         exclude_indptr: np.ndarray | None = None, exclude_indices: np.ndarray | None = None,
         block_bytes: int = 32 << 20, group: int = 16, margin: int = 4) -> TopK:
    """Top ``k`` items per user by dot product (see the module docstring).

    ``exclude_indptr`` / ``exclude_indices``: CSR lists of item indices to exclude per user
    (user i excludes ``exclude_indices[exclude_indptr[i]:exclude_indptr[i+1]]``)."""
    users = np.ascontiguousarray(users, dtype=np.float32)
    items = np.ascontiguousarray(items, dtype=np.float32)
    if users.ndim != 2 or items.ndim != 2 or users.shape[1] != items.shape[1]:
        raise ValueError(f"users {users.shape} and items {items.shape} must be (n, d) and (m, d)")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    n, m = users.shape[0], items.shape[0]
    if (exclude_indptr is None) != (exclude_indices is None):
        raise ValueError("give both exclude_indptr and exclude_indices, or neither")
    if exclude_indptr is not None and len(exclude_indptr) != n + 1:
        raise ValueError(f"exclude_indptr has {len(exclude_indptr)} entries for {n} users (want n + 1)")

    out_idx = np.full((n, k), -1, dtype=np.int64)
    out_score = np.full((n, k), NEG_INF, dtype=np.float32)
    counts = np.zeros(n, dtype=np.int32)
    if n == 0 or m == 0:
        return TopK(out_idx, out_score, counts)

    groups = -(-m // group)
    padded = groups * group
    item_t = torch.zeros((items.shape[1], padded), dtype=torch.float32)  # (d, m_pad), padding scored -inf
    item_t[:, :m] = torch.from_numpy(items).T
    block = int(max(1, min(n, block_bytes // (4 * padded))))
    scores_buf = torch.empty((block, padded), dtype=torch.float32)
    kk = min(k, m)
    for start in range(0, n, block):
        stop = min(n, start + block)
        b = stop - start
        scores = scores_buf[:b]                                          # (B, m_pad)
        torch.matmul(torch.from_numpy(users[start:stop]), item_t, out=scores)
        if padded > m:
            scores[:, m:] = NEG_INF
        if exclude_indptr is not None:
            lo, hi = int(exclude_indptr[start]), int(exclude_indptr[stop])
            if hi > lo:
                rows = np.repeat(np.arange(b), np.diff(exclude_indptr[start:stop + 1]))
                cols = np.asarray(exclude_indices[lo:hi], dtype=np.int64)
                scores[torch.from_numpy(rows), torch.from_numpy(cols)] = NEG_INF
        idx, val = _select_block(scores, kk, group, margin)
        out_idx[start:stop, :kk] = idx
        out_score[start:stop, :kk] = val
    valid = np.isfinite(out_score)
    out_idx[~valid] = -1
    counts[:] = valid.sum(axis=1)
    return TopK(out_idx, out_score, counts)


def _select_block(scores: torch.Tensor, k: int, group: int, margin: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k of each row of ``scores`` (B, G*group), ties by column index ascending."""
    b, padded = scores.shape
    groups = padded // group
    keep = k + margin
    if groups <= keep:
        return _exact_rows(scores, k)
    group_max = scores.view(b, groups, group).amax(dim=2)               # (B, G)
    top_groups_val, top_groups = torch.topk(group_max, keep, dim=1, sorted=True)
    # A tie reaching the last kept group could hide an equal element in a group we did not keep.
    unsure = top_groups_val[:, keep - 1] >= top_groups_val[:, k - 1]
    cols = (top_groups.unsqueeze(2) * group + torch.arange(group)).reshape(b, keep * group)
    cand = torch.gather(scores, 1, cols)                                 # (B, keep*group)
    cand_val, cand_pos = torch.topk(cand, k + 1, dim=1, sorted=True)
    # An equal score just past the cut might belong to a lower item index than one inside it.
    unsure |= cand_val[:, k] == cand_val[:, k - 1]
    val = cand_val[:, :k].numpy()
    idx = torch.gather(cols, 1, cand_pos[:, :k]).numpy()
    order = np.lexsort((idx, -val), axis=1)                              # score desc, then item index
    idx = np.take_along_axis(idx, order, axis=1)
    val = np.take_along_axis(val, order, axis=1)
    if bool(unsure.any()):
        rows = torch.nonzero(unsure).flatten()
        idx[rows.numpy()], val[rows.numpy()] = _exact_rows(scores[rows], k)
    return idx, val


def _exact_rows(scores: torch.Tensor, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Stable descending sort of whole rows: equal scores keep column (item) order."""
    val, idx = torch.sort(scores, dim=1, descending=True, stable=True)
    return idx[:, :k].numpy().copy(), val[:, :k].numpy().copy()


def brute_force(users: np.ndarray, items: np.ndarray, k: int,
                excluded: list[set[int]] | None = None) -> list[list[int]]:
    """The reference the tests compare against: the full score matrix in float32 (the same
    arithmetic as the blocked matmul) and a lexsort on (item index, -score), per user; excluded items
    and -inf dropped."""
    full = torch.from_numpy(np.ascontiguousarray(users, dtype=np.float32)) @ torch.from_numpy(
        np.ascontiguousarray(items, dtype=np.float32)).T
    result = []
    for i, row in enumerate(full.numpy()):
        order = np.lexsort((np.arange(len(row)), -row))
        skip = excluded[i] if excluded else set()
        result.append([int(j) for j in order if j not in skip and np.isfinite(row[j])][:k])
    return result
