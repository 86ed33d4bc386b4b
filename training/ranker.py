"""The two-stage ranker's pure part (DESIGN.md, "Model"; docs/model.md, "The ranker"): one night's
candidates from several retrievers with their retrieval features, labels from the week after, an
XGBoost ``rank:ndcg`` model fitted on past nights and early-stopped on the night before, and the
re-ranked top-K lists. No Spark, no I/O: ``jobs/ranking.py`` gathers a night's inputs and the
point-in-time feature-table columns (``features/historical.py``) and calls these.

A candidate is one (user, item) of a night: one row per pool row of :class:`training.backtest.Night`
and catalogue index. The retrievers:

- ``transformer``: the sequence model's top ``transformer_n`` (its score and rank; null below that);
- ``past``: every item the user bought before (score: the number of baskets that held it);
- ``tifu_knn``: TIFU-KNN with the night's tuned parameters (top ``neighbour_n``);
- ``cooccurrence``: item co-occurrence over the user's history (top ``neighbour_n``);
- ``popular``: the catalogue's most-bought items of the last 30 days (top ``popular_n``, the same for all).

The neighbour and popular scores are dense over the catalogue, so each candidate carries them whoever
proposed it (a rank is only given within the retriever's top N, null below: "not proposed").
"""
from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from training import heuristics as H
from training.backtest import Night
from training.baselines import cooccurrence_scores, fit_cooccurrence
from training.versions import RegistryError, dump_json, latest_version, read_json, version_dir

RETRIEVERS = ("transformer", "past", "tifu_knn", "cooccurrence", "popular")
RETRIEVAL_FEATURES = ("transformer_score", "transformer_rank", "past_score", "tifu_knn_score", "tifu_knn_rank",
                      "cooccurrence_score", "cooccurrence_rank", "popular_score", "popular_rank",
                      "recent_log1p_7d", "retrievers")


@dataclass(frozen=True)
class Pools:
    """How many candidates each retriever proposes per user."""
    transformer_n: int = 200
    neighbour_n: int = 100
    popular_n: int = 50


def cooccurrence_model(night: Night):
    """The night's item co-occurrence (fitted on every pool user's history before the cut-off)."""
    return fit_cooccurrence(_flat_histories(night.baskets), night.num_items)


def candidates(night: Night, rows: np.ndarray, *, transformer: pd.DataFrame | None, tifu: H.TifuKnnParams,
               cooccurrence, pools: Pools, chunk: int = 4096, tifu_pool: H.TifuPool | None = None) -> pd.DataFrame:
    """The union of the retrievers' candidates for the pool rows ``rows`` of ``night``: columns
    ``row`` (pool row), ``item`` (catalogue index) and :data:`RETRIEVAL_FEATURES`, sorted by row then item.
    ``transformer``: rows ``row, item, score, rank`` (rank 1 = best) of the sequence model's lists, or None.
    ``tifu_pool``: ``H.tifu_pool`` of the night's baskets with ``tifu``, for a caller that calls this per
    chunk of a night's users (computed here otherwise)."""
    rows = np.asarray(rows, np.int64)
    tifu_pool = H.tifu_pool(night.baskets, night.num_items, tifu) if tifu_pool is None else tifu_pool
    by_row = None if transformer is None else transformer.set_index("row")
    frames = []
    for start in range(0, len(rows), chunk):
        part = rows[start:start + chunk]
        own = None if by_row is None else by_row[by_row.index.isin(part)].reset_index()
        frames.append(_chunk(night, part, own, tifu, tifu_pool, cooccurrence, pools))
    out = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["row", "item", *RETRIEVAL_FEATURES])
    key = out["row"].to_numpy(np.int64) * night.num_items + out["item"].to_numpy(np.int64)
    if len(key) and (np.diff(key) > 0).all():           # rows given in order: the chunks come sorted
        return out
    return out.sort_values(["row", "item"], kind="stable").reset_index(drop=True)


def _chunk(night: Night, rows: np.ndarray, transformer: pd.DataFrame | None, tifu: H.TifuKnnParams,
           tifu_pool: H.TifuPool, cooccurrence, pools: Pools) -> pd.DataFrame:
    V, allowed = night.num_items, night.recommendable
    baskets = [night.baskets[r] for r in rows]
    past = H.basket_counts(baskets, V).tocoo()
    neighbours = {
        "tifu_knn": H.tifu_knn_scores(night.baskets, V, tifu, query_users=rows, pool=tifu_pool),
        "cooccurrence": cooccurrence_scores(cooccurrence, _flat_histories(baskets), night.popular).astype(np.float32),
    }
    popular = np.log1p(night.popular.astype(np.float64))
    keys = [rows[past.row] * V + past.col]
    ranks = {}
    for name, scores in neighbours.items():
        top, rank = _top(scores, pools.neighbour_n, allowed)
        keys.append(rows[top[0]] * V + top[1])
        ranks[name] = (rows[top[0]] * V + top[1], rank)
    popular_top = _top(popular[None, :], pools.popular_n, allowed)
    keys.append((rows[:, None] * V + popular_top[0][1][None, :]).ravel())
    if transformer is not None and len(transformer):
        keys.append(transformer["row"].to_numpy(np.int64) * V + transformer["item"].to_numpy(np.int64))
    key = np.unique(np.concatenate(keys))
    key = key[allowed[key % V]]
    row, item = key // V, key % V
    local = np.searchsorted(rows, row) if np.all(np.diff(rows) > 0) else pd.Index(rows).get_indexer(row)
    out = pd.DataFrame({"row": row, "item": item})
    out["transformer_score"], out["transformer_rank"] = _lookup(key, transformer, V)
    out["past_score"] = np.nan_to_num(value_at(local.astype(np.int64) * V + item,
                                                past.row.astype(np.int64) * V + past.col, past.data), nan=0.0)
    for name, scores in neighbours.items():
        out[f"{name}_score"] = scores[local, item]
        out[f"{name}_rank"] = value_at(key, *ranks[name])
    out["popular_score"] = popular[item]
    out["popular_rank"] = value_at(item, popular_top[0][1], popular_top[1])
    out["recent_log1p_7d"] = night.recent_log1p[item]
    proposed = np.column_stack([out["transformer_rank"].notna(), out["past_score"] > 0, out["tifu_knn_rank"].notna(),
                                out["cooccurrence_rank"].notna(), out["popular_rank"].notna()])
    out["retrievers"] = proposed.sum(axis=1).astype(np.float32)
    return out


def _top(scores: np.ndarray, n: int, allowed: np.ndarray) -> tuple[tuple[np.ndarray, np.ndarray], np.ndarray]:
    """((row, item), rank 1..n) of each row's top ``n`` allowed items (ties to the lower index)."""
    s = np.where(allowed[None, :], scores, -np.inf)
    n = min(n, int(allowed.sum()))
    top = np.argpartition(-s, n - 1, axis=1)[:, :n]
    order = np.lexsort((top, -np.take_along_axis(s, top, axis=1)), axis=1)
    top = np.take_along_axis(top, order, axis=1)
    keep = np.isfinite(np.take_along_axis(s, top, axis=1))
    row = np.repeat(np.arange(s.shape[0]), n).reshape(top.shape)
    rank = np.tile(np.arange(1, n + 1, dtype=np.float32), (s.shape[0], 1))
    return (row[keep], top[keep]), rank[keep]


def value_at(key: np.ndarray, known_key: np.ndarray, value: np.ndarray, *, dtype=np.float32,
             presorted: bool = False) -> np.ndarray:
    """``value`` of each ``key`` among the unique ``known_key`` (NaN where absent), as ``dtype``.
    ``presorted``: ``known_key`` is sorted already (jobs/ranking.py's night lookup), no argsort."""
    out = np.full(len(key), np.nan, dtype)
    if not len(known_key):
        return out
    if presorted:
        sorted_key, sorted_value = known_key, np.asarray(value, dtype)
    else:
        order = np.argsort(known_key, kind="stable")
        sorted_key, sorted_value = known_key[order], np.asarray(value, dtype)[order]
    at, found = positions(key, sorted_key)
    out[found] = sorted_value[at[found]]
    return out


def positions(key: np.ndarray, known: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(position in ``known``, found) of each key; ``known`` sorted and unique. One search serves every
    column aligned with ``known``."""
    if not len(known):
        return np.zeros(len(key), np.int64), np.zeros(len(key), bool)
    at = np.searchsorted(known, key).clip(max=len(known) - 1)
    return at, known[at] == key


def _lookup(key: np.ndarray, transformer: pd.DataFrame | None, V: int) -> tuple[np.ndarray, np.ndarray]:
    if transformer is None or not len(transformer):
        return np.full(len(key), np.nan, np.float32), np.full(len(key), np.nan, np.float32)
    t_key = transformer["row"].to_numpy(np.int64) * V + transformer["item"].to_numpy(np.int64)
    return value_at(key, t_key, transformer["score"].to_numpy()), value_at(key, t_key, transformer["rank"].to_numpy())


def _flat_histories(baskets_per_user: Sequence[Sequence[np.ndarray]]) -> list[np.ndarray]:
    return [np.concatenate(b) if len(b) else np.zeros(0, np.int64) for b in baskets_per_user]


def labels(frame: pd.DataFrame, night: Night) -> np.ndarray:
    """1 where the candidate's item is among its user's targets (judged rows only; others 0)."""
    V = night.num_items
    target_key = np.concatenate([np.full(len(t), r, np.int64) * V + t
                                 for r, t in zip(night.evaluated, night.targets)]) if len(night.targets) else np.zeros(0, np.int64)
    key = frame["row"].to_numpy(np.int64) * V + frame["item"].to_numpy(np.int64)
    return np.isin(key, target_key).astype(np.float32)


def union_recall(frame: pd.DataFrame, night: Night, score: np.ndarray | None = None,
                 ns: Sequence[int] = (100, 200)) -> dict[str, float]:
    """Mean over judged users of the share of their targets among their candidates (the ranker's
    ceiling), the mean candidate count, and with ``score`` the recall of the top n by that score."""
    y = labels(frame, night)
    n_targets = pd.Series([len(t) for t in night.targets], index=night.evaluated)
    judged = frame[frame["row"].isin(night.evaluated)].assign(y=y[frame["row"].isin(night.evaluated).to_numpy()])
    hits = judged.groupby("row")["y"].sum().reindex(night.evaluated, fill_value=0.0)
    out = {"candidates_per_user": round(float(judged.groupby("row").size().mean()), 1),
           "union_recall": round(float((hits / n_targets).mean()), 4)}
    if score is not None:
        judged = judged.assign(s=score[frame["row"].isin(night.evaluated).to_numpy()])
        order = judged.sort_values(["row", "s", "item"], ascending=[True, False, True], kind="stable")
        place = order.groupby("row").cumcount()
        for n in ns:
            top_hits = order[place < n].groupby("row")["y"].sum().reindex(night.evaluated, fill_value=0.0)
            out[f"recall@{n}"] = round(float((top_hits / n_targets).mean()), 4)
    return out


@dataclass(frozen=True)
class TreeParams:
    """XGBoost's ``rank:ndcg`` settings (training/ranker.py, :func:`fit`)."""
    max_depth: int = 6
    eta: float = 0.05
    min_child_weight: float = 1.0
    subsample: float = 0.8
    colsample_bytree: float = 0.8
    max_rounds: int = 600
    early_stopping_rounds: int = 50
    threads: int = 2
    seed: int = 0


def _dmatrix(frame: pd.DataFrame, features: Sequence[str], label: np.ndarray | None = None):
    import xgboost as xgb

    x = frame[list(features)].astype(np.float32)
    return xgb.DMatrix(x, label=label, qid=frame["qid"].to_numpy(), missing=np.nan, feature_names=list(features))


def fit(train: pd.DataFrame, valid: pd.DataFrame, features: Sequence[str], params: TreeParams) -> tuple[Any, dict]:
    """A ``rank:ndcg`` booster: fitted on ``train`` with early stopping on ``valid`` (NDCG@10 over each
    user's candidates), then refitted on both with that many rounds. Frames carry ``qid`` (one per user
    and night, sorted) and ``label``; groups without a positive teach nothing and are dropped."""
    import xgboost as xgb

    train, valid = _with_positive(train), _with_positive(valid)
    config = {"objective": "rank:ndcg", "eval_metric": "ndcg@10", "max_depth": params.max_depth, "eta": params.eta,
              "min_child_weight": params.min_child_weight, "subsample": params.subsample,
              "colsample_bytree": params.colsample_bytree, "tree_method": "hist", "nthread": params.threads,
              "seed": params.seed, "lambdarank_pair_method": "topk", "lambdarank_num_pair_per_sample": 10}
    history: dict = {}
    d_train = _dmatrix(train, features, train["label"].to_numpy())
    d_valid = _dmatrix(valid, features, valid["label"].to_numpy())
    first = xgb.train(config, d_train, num_boost_round=params.max_rounds, evals=[(d_valid, "valid")],
                      early_stopping_rounds=params.early_stopping_rounds, evals_result=history, verbose_eval=False)
    rounds = first.best_iteration + 1
    both = pd.concat([train, valid.assign(qid=valid["qid"] + train["qid"].max() + 1)], ignore_index=True)
    booster = xgb.train(config, _dmatrix(both, features, both["label"].to_numpy()), num_boost_round=rounds)
    curve = history.get("valid", {}).get("ndcg@10", [])
    return booster, {"rounds": rounds, "validation_ndcg@10_in_candidates": round(float(curve[rounds - 1]), 6) if curve else None,
                     "train_groups": int(train["qid"].nunique()), "valid_groups": int(valid["qid"].nunique()),
                     "train_rows": int(len(train)), "valid_rows": int(len(valid))}


def _with_positive(frame: pd.DataFrame) -> pd.DataFrame:
    has = frame.groupby("qid")["label"].transform("max") > 0
    return frame[has].sort_values(["qid", "item"], kind="stable").reset_index(drop=True)


def predict(booster, frame: pd.DataFrame, features: Sequence[str]) -> np.ndarray:
    """The booster's scores of ``frame``'s rows, its ``features`` in the booster's order (nulls as NaN).
    ``inplace_predict`` on the columns as one float32 array gives the scores a DMatrix would, without
    building one (at 100,000 users 15 s against 72 s: bench/results/ranker.md)."""
    named = booster.feature_names
    if named is not None and list(named) != list(features):       # what a DMatrix with names would check
        raise ValueError(f"the booster was trained on other features than {len(features)} given "
                         f"(first difference: {_first_difference(list(named), list(features))})")
    return booster.inplace_predict(frame[list(features)].to_numpy(np.float32), missing=np.nan)


def _first_difference(a: list[str], b: list[str]) -> str:
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return f"#{i}: {x} vs {y}"
    return f"{len(a)} vs {len(b)} features"


def top_rows(frame: pd.DataFrame, score: np.ndarray, k: int) -> pd.DataFrame:
    """Each row's top ``k`` candidates by ``score`` (ties to the lower item index): columns ``row, item,
    rank`` (1 = best) and ``score``, ordered by row then rank."""
    ordered = frame[["row", "item"]].assign(score=np.asarray(score, np.float32))
    ordered = ordered.sort_values(["row", "score", "item"], ascending=[True, False, True], kind="stable")
    ordered = ordered.assign(rank=ordered.groupby("row").cumcount() + 1)
    return ordered[ordered["rank"] <= k].reset_index(drop=True)


def top_lists(frame: pd.DataFrame, score: np.ndarray, rows: np.ndarray, k: int) -> list[np.ndarray]:
    """Each of ``rows``' top ``k`` candidates by ``score``, best first (ties to the lower item index);
    a row without candidates gets an empty list."""
    ordered = top_rows(frame, score, k)
    by_row = {r: g.to_numpy(np.int64) for r, g in ordered.groupby("row")["item"]}
    empty = np.zeros(0, np.int64)
    return [by_row.get(r, empty) for r in rows]


def category_cap(frame: pd.DataFrame, score: np.ndarray, rows: np.ndarray, k: int, categories: np.ndarray,
                 cap: int) -> list[np.ndarray]:
    """Diversity by a per-category cap: walk each user's candidates best first and take an item while
    its category has fewer than ``cap`` items in the list; fill what is left with the skipped items in
    order (the list stays K long). ``categories``: (V,) category code per catalogue index."""
    full = top_lists(frame, score, rows, max(k * 4, k))
    out = []
    for items in full:
        taken, skipped, seen = [], [], {}
        for i in items:
            c = categories[i]
            if seen.get(c, 0) < cap:
                taken.append(i)
                seen[c] = seen.get(c, 0) + 1
                if len(taken) == k:
                    break
            else:
                skipped.append(i)
        out.append(np.asarray((taken + skipped)[:k], np.int64))
    return out


def intra_list_diversity(lists: Sequence[np.ndarray], categories: np.ndarray, k: int = 10) -> float:
    """Mean over lists of distinct categories in the top k / items in it."""
    shares = [len(set(categories[np.asarray(lst[:k])].tolist())) / len(lst[:k]) for lst in lists if len(lst)]
    return float(np.mean(shares)) if shares else float("nan")


def importances(booster) -> list[tuple[str, float]]:
    """(feature, share of the total gain), largest first (features never split on are left out); a list,
    so that JSON keeps the order."""
    gain = booster.get_score(importance_type="total_gain")
    total = sum(gain.values()) or 1.0
    return [(k, round(float(v) / total, 5)) for k, v in sorted(gain.items(), key=lambda kv: (-kv[1], kv[0]))]


RANKER_FILES = ("model.json", "config.json", "metrics.json", "lineage.json")


@dataclass
class LoadedRanker:
    """A registered ranker: the booster (XGBoost's own JSON format) and what its candidates need."""
    name: str
    version: str
    booster: Any
    features: list[str]
    tifu: H.TifuKnnParams
    pools: Pools
    retrievers: list[str]
    metrics: dict


def save(models_root: str, name: str, version: str, booster, features: Sequence[str], tifu: H.TifuKnnParams,
         pools: Pools, retrievers: Sequence[str], metrics: dict, lineage: dict):
    """Write a ranker version folder whole (a temp folder renamed into place); no pickle."""
    final = version_dir(models_root, name, version)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{version}.", dir=final.parent))
    booster.save_model(str(tmp / "model.json"))
    dump_json(tmp / "config.json", {"features": list(features), "tifu": dataclasses.asdict(tifu),
                                    "pools": dataclasses.asdict(pools), "retrievers": list(retrievers)})
    dump_json(tmp / "metrics.json", metrics)
    dump_json(tmp / "lineage.json", lineage)
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    return final


def load(models_root: str, name: str, version: str = "latest") -> LoadedRanker:
    """A registered ranker (``"latest"`` follows its LATEST pointer)."""
    import xgboost as xgb

    if version == "latest":
        version = latest_version(models_root, name) or ""
        if not version:
            raise RegistryError(f"no LATEST ranker {name!r} under {models_root}; run `warmstart train-ranker` first")
    folder = version_dir(models_root, name, version)
    missing = [f for f in RANKER_FILES if not (folder / f).is_file()]
    if missing:
        raise RegistryError(f"ranker {name}/{version} under {models_root} is missing {', '.join(missing)}")
    booster = xgb.Booster()
    booster.load_model(str(folder / "model.json"))
    config = read_json(folder / "config.json")
    return LoadedRanker(name, version, booster, config["features"], H.TifuKnnParams(**config["tifu"]),
                        Pools(**config["pools"]), config["retrievers"], read_json(folder / "metrics.json"))
