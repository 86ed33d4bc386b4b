"""Ranking metrics over a full catalogue ranking, for basket targets (a user's held-out basket is a set
of items). Pure numpy; called by the training loop (validation), jobs/evaluate.py and the tests.

Conventions (one row per user):
- ``scores`` (n, V): higher is better; ties are broken by the lower item index, so a ranking is
  deterministic (:func:`rank_items`).
- ``targets``: a list of n sequences of item indices (the held-out basket; duplicates ignored).
- Recall@K = |top-K ∩ T| / |T|.  NDCG@K = DCG@K / IDCG@K with binary gains, DCG = Σ 1/log2(rank+1)
  and IDCG over min(|T|, K) hits.  MRR = 1 / rank of the best-ranked target (full ranking, no cut-off).
- catalogue coverage@K = distinct items in anyone's top-K / V.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np


def rank_items(scores: np.ndarray, k: int | None = None) -> np.ndarray:
    """(n, V) scores -> (n, k or V) item indices, best first; ties go to the lower index."""
    order = np.argsort(-scores, axis=1, kind="stable")
    return order if k is None else order[:, :k]


def target_ranks(scores: np.ndarray, targets: Sequence[Sequence[int]]) -> list[np.ndarray]:
    """1-based rank of each target item in its row's full ranking (same tie rule as rank_items)."""
    out = []
    for row, tgt in zip(scores, targets):
        tgt = np.unique(np.asarray(tgt, dtype=np.int64))
        s = row[tgt]
        # items strictly better, plus equal-scored items with a lower index
        better = (row[None, :] > s[:, None]).sum(1)
        idx = np.arange(row.shape[0])
        ties = ((row[None, :] == s[:, None]) & (idx[None, :] < tgt[:, None])).sum(1)
        out.append(better + ties + 1)
    return out


def recall_at_k(ranks: Sequence[np.ndarray], k: int) -> np.ndarray:
    return np.array([(r <= k).sum() / len(r) if len(r) else 0.0 for r in ranks])


def ndcg_at_k(ranks: Sequence[np.ndarray], k: int) -> np.ndarray:
    out = []
    for r in ranks:
        hits = r[r <= k]
        dcg = (1.0 / np.log2(hits + 1)).sum()
        idcg = (1.0 / np.log2(np.arange(1, min(len(r), k) + 1) + 1)).sum()
        out.append(dcg / idcg if idcg > 0 else 0.0)
    return np.array(out)


def reciprocal_rank(ranks: Sequence[np.ndarray]) -> np.ndarray:
    return np.array([1.0 / r.min() if len(r) else 0.0 for r in ranks])


def catalogue_coverage(top_k: np.ndarray, num_items: int) -> float:
    return float(len(np.unique(top_k)) / num_items) if num_items else 0.0


def metric_sums(scores: np.ndarray, targets: Sequence[Sequence[int]], ks: Sequence[int] = (10, 20)) -> dict[str, float]:
    """Per-batch sums (so shards and batches add up): users, recall@k, ndcg@k, mrr."""
    ranks = target_ranks(scores, targets)
    sums = {"users": float(len(ranks)), "mrr": float(reciprocal_rank(ranks).sum())}
    for k in ks:
        sums[f"recall@{k}"] = float(recall_at_k(ranks, k).sum())
        sums[f"ndcg@{k}"] = float(ndcg_at_k(ranks, k).sum())
    return sums


def finalize(sums: dict[str, float]) -> dict[str, float]:
    """Sums from :func:`metric_sums` (added over batches) -> means."""
    n = sums.get("users", 0.0)
    return {k: (v / n if n else 0.0) for k, v in sums.items() if k != "users"} | {"users": int(n)}


def evaluate_scores(scores: np.ndarray, targets: Sequence[Sequence[int]], ks: Sequence[int] = (10, 20)) -> dict[str, float]:
    """All metrics for one score matrix: means over users plus catalogue coverage@max(ks)."""
    out = finalize(metric_sums(scores, targets, ks))
    out[f"coverage@{max(ks)}"] = catalogue_coverage(rank_items(scores, max(ks)), scores.shape[1])
    return out


# Published top-K lists and the repeat / explore split (Li et al., TOIS 2023). The backtest scores the
# lists as published (item indices, best first), not score matrices. Ranks are float so that a target
# missing from the list can be rank inf: recall_at_k, ndcg_at_k and reciprocal_rank above then need no
# change (inf <= k is False, 1 / inf is 0).

def list_target_ranks(top_lists: Sequence[Sequence[int]], targets: Sequence[Sequence[int]]) -> list[np.ndarray]:
    """1-based position of each distinct target in its user's list, inf where the list lacks it, in
    ascending target-index order (as target_ranks). Lists may differ in length; a list holding an item
    twice is an upstream bug and raises."""
    out = []
    for lst, tgt in zip(top_lists, targets, strict=True):
        lst = np.asarray(lst, dtype=np.int64)
        if len(np.unique(lst)) != len(lst):
            raise ValueError(f"a ranked list repeats an item: {lst.tolist()}")
        tgt = np.unique(np.asarray(tgt, dtype=np.int64))
        where = np.full(len(tgt), np.inf)
        _, at_target, at_list = np.intersect1d(tgt, lst, return_indices=True)
        where[at_target] = at_list + 1.0
        out.append(where)
    return out


def hit_rate_at_k(ranks: Sequence[np.ndarray], k: int) -> np.ndarray:
    """Per user 1.0 if any target is in the top k, else 0.0 (no targets: 0.0); the mean is the hit rate."""
    return np.array([float((r <= k).any()) for r in ranks])


def repeat_targets(targets: Sequence[Sequence[int]], past_items: Sequence[Sequence[int]]) -> list[np.ndarray]:
    """The distinct targets the user bought before (sorted)."""
    return [np.intersect1d(np.asarray(t, np.int64), np.asarray(p, np.int64))
            for t, p in zip(targets, past_items, strict=True)]


def explore_targets(targets: Sequence[Sequence[int]], past_items: Sequence[Sequence[int]]) -> list[np.ndarray]:
    """The distinct targets the user never bought before (sorted). Users left with none have no explore
    task: average explore metrics over the users with at least one (a 0 for them would measure nothing)."""
    return [np.setdiff1d(np.asarray(t, np.int64), np.asarray(p, np.int64))
            for t, p in zip(targets, past_items, strict=True)]


def explore_lists(ranked_lists: Sequence[Sequence[int]], past_items: Sequence[Sequence[int]],
                  k: int) -> list[np.ndarray]:
    """Each list with the user's past items removed, then its top k. Pass lists longer than k (e.g.
    rank_items(scores) in full) for k explore items: from a published top-k the remainder is shorter."""
    out = []
    for lst, past in zip(ranked_lists, past_items, strict=True):
        lst = np.asarray(lst, dtype=np.int64)
        out.append(lst[~np.isin(lst, np.asarray(past, np.int64))][:k])
    return out


def repeat_share_at_k(top_lists: Sequence[Sequence[int]], past_items: Sequence[Sequence[int]], k: int) -> np.ndarray:
    """Per user, the share of the (up to) k items shown that the user bought before; an empty list is 0."""
    out = []
    for lst, past in zip(top_lists, past_items, strict=True):
        shown = np.asarray(lst, dtype=np.int64)[:k]
        out.append(float(np.isin(shown, np.asarray(past, np.int64)).mean()) if len(shown) else 0.0)
    return np.array(out)
