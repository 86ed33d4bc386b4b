"""The next-week backtest's pure part (DESIGN.md, "Model"): a night's histories and targets, the heuristic
baselines' lists tuned on the validation night, the metrics of any set of top-K lists, and the pooled
comparison with a paired bootstrap. Called by ``jobs/backtest.py`` (which reads the lake, fits ALS in
Spark and produces the model's lists through the scoring job); no I/O, no Spark.

A night D: everything is fitted on purchases strictly before ``cutoff(D)`` (D + 1 day, 00:00 UTC); the
targets are the distinct recommendable items each user bought in [cutoff(D), cutoff(D) + horizon); the
users judged are those with a purchase before the cut-off and at least one target. Its validation night
is D - horizon, whose target window ends where D's history does: tuning never sees D's targets.
"""
from __future__ import annotations

import datetime as dt
import hashlib
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import pandas as pd

from features.contract import cutoff
from training import heuristics as H
from training import metrics as M
from training.baselines import cooccurrence_scores, fit_cooccurrence
from training.stats import bootstrap_means, paired_bootstrap

RECENT_DAYS = 7           # the model's recent-popularity window (train.model.recent_days)
POPULAR_DAYS = 30         # the popularity baseline's window (score.popular_window_days)


@dataclass(frozen=True)
class Night:
    as_of: dt.date
    horizon_days: int
    user_ids: np.ndarray                 # (P,) every user with a purchase before the cut-off (the fitting pool)
    baskets: list[list[np.ndarray]]      # per pool user, baskets oldest first, as catalogue indices
    evaluated: np.ndarray                # (n,) pool rows of the users judged
    targets: list[np.ndarray]            # per judged user, the distinct recommendable items bought in the window
    recent_log1p: np.ndarray             # (V,) log1p(purchases over the RECENT_DAYS days before the cut-off)
    popular: np.ndarray                  # (V,) distinct buyers over the POPULAR_DAYS days before the cut-off
    recommendable: np.ndarray            # (V,) bool: what the lists may hold (the scorer's catalogue)

    @property
    def num_items(self) -> int:
        return len(self.recommendable)

    @property
    def judged_baskets(self) -> list[list[np.ndarray]]:
        return [self.baskets[i] for i in self.evaluated]

    @property
    def past_items(self) -> list[np.ndarray]:
        return [np.unique(np.concatenate(b)) if b else np.zeros(0, np.int64) for b in self.judged_baskets]


def night(purchases: pd.DataFrame, as_of: dt.date, horizon_days: int, recommendable: np.ndarray) -> Night:
    """``purchases``: one row per target-type event, columns ``user_id``, ``item`` (catalogue index; rows
    outside the catalogue already dropped) and ``event_ts`` (naive UTC). A basket is a user's events
    sharing one timestamp (an Online Retail invoice)."""
    start = pd.Timestamp(cutoff(as_of))
    end = start + pd.Timedelta(days=horizon_days)
    before = purchases[purchases["event_ts"] < start]
    baskets, user_ids = _baskets(before)
    window = purchases[(purchases["event_ts"] >= start) & (purchases["event_ts"] < end)]
    window = window[recommendable[window["item"].to_numpy()]]
    wanted = window.groupby("user_id")["item"].apply(lambda s: np.unique(s.to_numpy()))
    row = {u: i for i, u in enumerate(user_ids)}
    judged = sorted((row[u], t) for u, t in wanted.items() if u in row)
    day = ((before["event_ts"] - start) // pd.Timedelta(days=1)).to_numpy()   # -1 = the day before the cut-off
    items, users = before["item"].to_numpy(), before["user_id"].map(row).to_numpy()
    recent = np.bincount(items[day >= -RECENT_DAYS], minlength=len(recommendable))
    popular = H.distinct_buyers(users, items, day, len(recommendable), cutoff_day=0, window_days=POPULAR_DAYS)
    return Night(as_of, horizon_days, user_ids, baskets, np.array([r for r, _ in judged], dtype=np.int64),
                 [t for _, t in judged], np.log1p(recent).astype(np.float32), popular, recommendable)


def _baskets(events: pd.DataFrame) -> tuple[list[list[np.ndarray]], np.ndarray]:
    """Each user's baskets (sorted unique items per timestamp, oldest first), users in sorted order: one
    sort, then the boundaries found in arrays (a groupby per user and basket took 31 s at 100,000 users)."""
    ordered = events.sort_values(["user_id", "event_ts", "item"], kind="stable")
    user, ts, item = (ordered[c].to_numpy() for c in ("user_id", "event_ts", "item"))
    new_user = np.r_[True, user[1:] != user[:-1]] if len(user) else np.zeros(0, bool)
    new_basket = new_user | np.r_[True, ts[1:] != ts[:-1]] if len(user) else new_user
    repeat = ~new_basket & np.r_[False, item[1:] == item[:-1]] if len(user) else new_user
    keep = ~repeat                                      # an item twice in one basket counts once
    item, new_user, new_basket = item[keep], new_user[keep], new_basket[keep]
    baskets = np.split(item, np.flatnonzero(new_basket)[1:])
    first = np.cumsum(new_basket)[np.flatnonzero(new_user)] - 1            # each user's first basket
    bounds = np.r_[first, len(baskets)]
    out = [baskets[bounds[u]:bounds[u + 1]] for u in range(len(first))]
    return out, np.asarray(user[keep][new_user], dtype=object)


def top_lists(scores: np.ndarray, k: int, allowed: np.ndarray,
              excluded: Sequence[np.ndarray] | None = None) -> list[np.ndarray]:
    """Each row's top ``k`` allowed items, best first (ties to the lower index, as the scorer), leaving out
    the user's ``excluded`` items (``score.exclude_event_types``); the same K and exclusions as scoring."""
    scores = np.where(allowed[None, :], scores.astype(np.float32), -np.inf)
    if excluded is not None:
        for u, items in enumerate(excluded):
            scores[u, items] = -np.inf
    k = min(k, scores.shape[1])
    top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    out = []
    for u, row in enumerate(top):
        order = np.lexsort((row, -scores[u, row]))
        ranked = row[order]
        out.append(ranked[np.isfinite(scores[u, ranked])])
    return out


def judge(lists: Sequence[np.ndarray], night_: Night, ks: Sequence[int] = (10, 20)) -> dict[str, np.ndarray]:
    """Per judged user: NDCG / Recall at each k, MRR and hit rate within the list, the share of repeat
    items in the top 10, and explore NDCG@10 / Recall@20 (targets never bought before, against the list
    with past items removed; NaN for users without such a target)."""
    ranks = M.list_target_ranks(lists, night_.targets)
    out: dict[str, np.ndarray] = {"mrr": M.reciprocal_rank(ranks), "hit@10": M.hit_rate_at_k(ranks, 10)}
    for k in ks:
        out[f"ndcg@{k}"] = M.ndcg_at_k(ranks, k)
        out[f"recall@{k}"] = M.recall_at_k(ranks, k)
    past = night_.past_items
    out["repeat_share@10"] = M.repeat_share_at_k(lists, past, 10)
    fresh = M.explore_targets(night_.targets, past)
    fresh_ranks = M.list_target_ranks(M.explore_lists(lists, past, max(ks)), fresh)
    has = np.array([len(t) > 0 for t in fresh])
    out["explore_ndcg@10"] = np.where(has, M.ndcg_at_k(fresh_ranks, 10), np.nan)
    out["explore_recall@20"] = np.where(has, M.recall_at_k(fresh_ranks, 20), np.nan)
    return out


def lists_from_rows(rows: pd.DataFrame, index: Mapping[str, int], user_ids: Sequence[Any]) -> list[np.ndarray]:
    """The candidate rows (``user_id``, ``rank``, ``item_id``: a ``candidates/user_candidates`` partition) as
    one list per user of ``user_ids``, catalogue indices best first; items outside ``index`` are left out
    and a user without rows gets an empty list (every target missed), as the backtest judges them."""
    known = rows[rows["item_id"].isin(index.keys())].sort_values(["user_id", "rank"], kind="stable")
    by_user = {u: np.array([index[i] for i in g["item_id"]], dtype=np.int64) for u, g in known.groupby("user_id")}
    empty = np.zeros(0, np.int64)
    return [by_user.get(u, empty) for u in user_ids]


def digest(lists: Sequence[np.ndarray]) -> str:
    """sha256 of a night's lists (user order and item order): the same lists, the same digest."""
    h = hashlib.sha256()
    for lst in lists:
        h.update(np.asarray(lst, np.int64).tobytes())
        h.update(b"|")
    return h.hexdigest()


def coverage(lists: Sequence[np.ndarray], night_: Night, k: int = 10) -> float:
    """Distinct items in anyone's top k / recommendable items."""
    shown = np.unique(np.concatenate([np.asarray(lst[:k], np.int64) for lst in lists])) if lists else []
    return float(len(shown) / max(int(night_.recommendable.sum()), 1))


Scorer = Callable[[Night, Mapping[str, Any]], np.ndarray]


def _popularity(n: Night, _: Mapping[str, Any]) -> np.ndarray:
    return np.broadcast_to(n.popular.astype(np.float32), (len(n.evaluated), n.num_items))


def _p_topfreq(n: Night, _: Mapping[str, Any]) -> np.ndarray:
    return H.p_topfreq(n.judged_baskets, n.num_items, n.popular.astype(np.float32))


def _past_recent(n: Night, p: Mapping[str, Any]) -> np.ndarray:
    return H.past_items_recent(n.judged_baskets, n.num_items, n.recent_log1p, float(p["w"]))


def _tifu(n: Night, p: Mapping[str, Any]) -> np.ndarray:
    return H.tifu_knn_scores(n.baskets, n.num_items, H.tifu_params(p), query_users=n.evaluated)


def _cooccurrence(n: Night, _: Mapping[str, Any]) -> np.ndarray:
    flat = [np.concatenate(b) if b else np.zeros(0, np.int64) for b in n.baskets]
    model = fit_cooccurrence(flat, n.num_items)
    judged = [flat[i] for i in n.evaluated]
    return cooccurrence_scores(model, judged, n.popular.astype(np.float64)).astype(np.float32)


SCORERS: dict[str, Scorer] = {"popularity_30d": _popularity, "p_topfreq": _p_topfreq, "past_recent": _past_recent,
                              "tifu_knn": _tifu, "cooccurrence": _cooccurrence}


@dataclass
class Tuned:
    method: str
    params: dict[str, Any]
    validation_ndcg10: dict[str, float] = field(default_factory=dict)   # every grid point tried, by its label


def tune(method: str, scorer: Scorer, validation: Night, grid: Sequence[Mapping[str, Any]], k: int) -> Tuned:
    """The grid point with the best mean NDCG@10 on the validation night (ties: the first listed)."""
    tried: dict[str, float] = {}
    best, best_value = dict(grid[0]) if grid else {}, -1.0
    for point in grid or [{}]:
        lists = top_lists(scorer(validation, point), k, validation.recommendable)
        value = float(np.mean(judge(lists, validation)["ndcg@10"])) if len(validation.evaluated) else 0.0
        tried[label(point)] = round(value, 6)
        if value > best_value + 1e-12:
            best, best_value = dict(point), value
    return Tuned(method, best, tried)


def label(point: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in point.items()) or "-"


def summary(per_user: Mapping[str, np.ndarray]) -> dict[str, float]:
    """Means over users (explore figures over the users that have an explore target)."""
    return {m: round(float(np.nanmean(v)), 6) if np.isfinite(v).any() else float("nan") for m, v in per_user.items()}


def interval(values: np.ndarray, *, n_boot: int = 2000, seed: int = 0, clusters: np.ndarray | None = None,
             level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of a mean (NaNs left out)."""
    keep = np.isfinite(values)
    if not keep.any():
        return float("nan"), float("nan")
    means = bootstrap_means(values[keep], n_boot=n_boot, seed=seed,
                            clusters=None if clusters is None else np.asarray(clusters)[keep])
    low, high = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return float(low), float(high)


def compare(a: np.ndarray, b: np.ndarray, clusters: np.ndarray | None = None, seed: int = 0) -> dict[str, float]:
    """a - b over the units both have (NaNs dropped pairwise), with the paired bootstrap 95% interval."""
    keep = np.isfinite(a) & np.isfinite(b)
    d = paired_bootstrap(a[keep], b[keep], seed=seed, clusters=None if clusters is None else clusters[keep])
    return {"diff": round(d.mean_diff, 6), "ci_low": round(d.ci_low, 6), "ci_high": round(d.ci_high, 6),
            "relative": round(d.mean_diff / float(np.mean(b[keep])), 4) if np.mean(b[keep]) else float("nan"),
            "units": d.n, "clusters": d.n_clusters}
