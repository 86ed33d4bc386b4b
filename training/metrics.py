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
