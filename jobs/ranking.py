"""The two-stage ranker's Spark side: a night's candidates (training/ranker.py) with the point-in-time
feature-table columns attached (features/historical.py), the training set of the labelled nights before
D, the fitted ranker and its lists. Called by the backtest (jobs/backtest.py), which judges those lists
beside the transformer's own and the heuristics'.

Every input of night d is fitted before ``cutoff(d)``: the retrievers on the purchases before it, the
transformer's candidates from the model trained for d, the features as of d (an exact as-of join, never
a later partition). Training nights are d = D - every_days * j (j = 1 .. training_nights): their labels
(purchases in the ``every_days`` after each) end at ``cutoff(D)``, so nothing is fitted on events after D.
"""
from __future__ import annotations

import contextlib
import datetime as dt
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import numpy as np
import pandas as pd
import pyarrow as pa
from pyspark.accumulators import AccumulatorParam
from pyspark.sql import SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from features.historical import as_of_join, user_item_parts
from features.tables import EVENTS, ITEM_FEATURES, ITEMS, USER_FEATURES
from jobs import lake
from jobs.config import RankerConfig
from training import backtest as B
from training import heuristics as H
from training import ranker as R

log = logging.getLogger("warmstart.ranking")

NUMERIC = (T.IntegerType, T.LongType, T.DoubleType, T.FloatType, T.ShortType, T.DecimalType, T.BooleanType)
# Feature groups left out one at a time by the ablation (columns by prefix or name).
ABLATIONS = {
    "without transformer features": ("transformer_",),
    "without user x item features": ("ui_", "item_rebuy_rate", "item_buyers"),
    "without recent popularity": ("recent_log1p_7d", "popular_", "item_count_purchases_7d", "item_trend_7d_vs_30d",
                                  "item_popularity_rank_30d"),
    "without feature tables": ("user_", "item_", "ui_"),
}


@dataclass
class NightFrame:
    """One night's candidates for its judged users, with features and labels."""
    night: B.Night
    frame: pd.DataFrame          # row, item, label, qid and feature columns


TransformerRows = Callable[[dt.date], pd.DataFrame | None]   # d -> rows user_id, item_id, score, rank


def pools(cfg: RankerConfig) -> R.Pools:
    return R.Pools(cfg.transformer_n, cfg.neighbour_n, cfg.popular_n)


def training_set(purchases: pd.DataFrame, recommendable: np.ndarray, d: dt.date, cfg: RankerConfig) -> dict[dt.date, B.Night]:
    """The labelled nights before D (:func:`training_nights`), each judged on the ``every_days`` after it."""
    return {x: B.night(purchases, x, cfg.every_days, recommendable) for x in training_nights(d, cfg)}


def tune_tifu(validation: B.Night, k: int) -> H.TifuKnnParams:
    """TIFU-KNN's parameters for the ranker's retriever: the grid point best on the validation night."""
    return H.tifu_params(B.tune("tifu_knn", B.SCORERS["tifu_knn"], validation, H.TIFU_GRID, k).params)


def night_frames(spark: SparkSession, lake_root: str, nights: dict[dt.date, B.Night], catalogue: list[str],
                 transformer_rows: TransformerRows, tifu: H.TifuKnnParams, pools_: R.Pools) -> dict[dt.date, NightFrame]:
    """The candidates of every night's judged users with labels and features (a :class:`NightLookup`
    collected per night): the ranker's training and test rows. The ranked score builds its candidates per
    chunk of users from one broadcast :class:`RankContext` instead (:func:`rank_users`)."""
    frames = {}
    for d, night in sorted(nights.items()):
        transformer = _transformer_frame(transformer_rows(d), night, catalogue)
        cooccurrence, tifu_pool = fit_retrievers(night, tifu)
        frame = R.candidates(night, night.evaluated, transformer=transformer, tifu=tifu, cooccurrence=cooccurrence,
                             pools=pools_, tifu_pool=tifu_pool)
        frames[d] = frame.assign(label=R.labels(frame, night))
        log.info("ranker night %s: %d users, %d candidates", d, len(night.evaluated), len(frame))
    attached = attach_features(spark, lake_root, {d: (nights[d], f) for d, f in frames.items()}, catalogue)
    out, qid = {}, 0
    for d in sorted(frames):
        f = attached[d]
        f["qid"] = pd.factorize(f["row"], sort=True)[0] + qid
        qid = int(f["qid"].max()) + 1 if len(f) else qid
        out[d] = NightFrame(nights[d], f)
    return out


def fit_retrievers(night: B.Night, tifu: H.TifuKnnParams) -> tuple[Any, H.TifuPool]:
    """The night's item co-occurrence model and TIFU-KNN pool, fitted on every pool user's history."""
    return R.cooccurrence_model(night), H.tifu_pool(night.baskets, night.num_items, tifu)


def _transformer_frame(rows: pd.DataFrame | None, night: B.Night, catalogue: list[str]) -> pd.DataFrame | None:
    """The model's rows as (pool row, catalogue index, score, rank); users and items outside the night's
    pool or the catalogue are left out."""
    if rows is None:
        return None
    row_of = pd.Series(np.arange(len(night.user_ids)), index=pd.Index(night.user_ids))
    index = pd.Series(np.arange(len(catalogue)), index=pd.Index(catalogue))
    out = pd.DataFrame({"row": rows["user_id"].map(row_of), "item": rows["item_id"].astype(str).map(index),
                        "score": rows["score"].astype(np.float32), "rank": rows["rank"].astype(np.float32)})
    return out.dropna(subset=["row", "item"]).astype({"row": np.int64, "item": np.int64})


def attach_features(spark: SparkSession, lake_root: str, frames: dict[dt.date, tuple[B.Night, pd.DataFrame]],
                    catalogue: list[str]) -> dict[dt.date, pd.DataFrame]:
    """Each frame with the user, item and user x item features as of its night (numeric columns only):
    one :class:`NightLookup` per night, collected once for the night's users and then joined in arrays."""
    out = {}
    for d, (night, f) in frames.items():
        users = night.user_ids[np.unique(f["row"].to_numpy(np.int64))]
        out[d] = night_lookup(spark, lake_root, d, users, catalogue).attach(f, night.user_ids)
    return out


@dataclass
class NightLookup:
    """The point-in-time features of one night, held in arrays: what ``features.historical.
    get_historical_features`` joins per candidate row in Spark, collected once per night (a row per user,
    per item, per (user, item) with history, per (user, category)) and assembled here per candidate by
    array indexing. The formulas mirror ``features.historical.user_item_features`` line by line;
    tests/test_ranker_job.py holds the two equal on a generated lake.

    Why not the Spark join per candidate: the candidates (~350 a user) would travel to the JVM and back
    with ~120 columns each; at 20,000 users that was 235 of 278 s of ranking (bench/results/ranker.md)."""
    as_of: dt.date
    users: pd.Index                 # user ids the user arrays are indexed by
    user_features: pd.DataFrame     # (users,) user_* columns, float32
    item_features: pd.DataFrame     # (catalogue,) item_* columns, float32
    user_stats: dict[str, np.ndarray]    # (users,) price sum / count, purchases with a known category
    item_stats: dict[str, np.ndarray]    # (catalogue,) buyers, rebuyers, price sum / count, category code
    pair_keys: np.ndarray           # sorted user * V + item of the pairs with any visible event
    pair_stats: dict[str, np.ndarray]    # aligned with pair_keys: events, baskets, days since last purchase
    category_keys: np.ndarray       # sorted user * C + category code
    category_purchases: np.ndarray  # aligned with category_keys
    _buffer: np.ndarray | None = field(default=None, repr=False)   # attach(reuse=True)'s feature block

    def attach(self, frame: pd.DataFrame, night_users: np.ndarray, reuse: bool = False) -> pd.DataFrame:
        """``frame`` (``row`` into ``night_users``, ``item`` into the catalogue, anything else) with the
        user x item, user and item columns, sorted by (row, item) like the Spark join's output. ``reuse``:
        the feature columns go into the block the last ``reuse`` call filled (a caller that is done with
        that frame: the ranked score's chunks), not a new one."""
        user = self.users.get_indexer(night_users.astype(str))[frame["row"].to_numpy(np.int64)]
        if (user < 0).any():
            raise ValueError(f"NightLookup({self.as_of}) lacks {int((user < 0).sum())} candidate rows' users")
        item = frame["item"].to_numpy(np.int64)
        ui = self._user_item(user, item)
        names = [*ui, *self.user_features.columns, *self.item_features.columns]
        # One float32 block filled a column at a time (each column contiguous), put beside the candidates without
        # a copy. A DataFrame built from ~110 arrays, or a copy of one (reset_index), merges its blocks into new
        # arrays of ~1 GB per 5,000 users: that was most of the join's time (numpy asks for huge pages for such
        # arrays, and a host whose memory is fragmented compacts it first).
        block = self._block(len(frame), len(names), reuse)
        for j, values in enumerate(ui.values()):
            block[:, j] = values
        for j, (source, at) in enumerate([*((v, user) for v in _arrays(self.user_features).values()),
                                          *((v, item) for v in _arrays(self.item_features).values())], len(ui)):
            block[:, j] = source[at]
        plain = isinstance(frame.index, pd.RangeIndex) and frame.index.start == 0 and frame.index.step == 1
        out = pd.concat([frame if plain else frame.reset_index(drop=True),
                         pd.DataFrame(block, columns=names, copy=False)], axis=1, copy=False)
        key = frame["row"].to_numpy(np.int64) * len(self.item_features) + item
        if len(key) and not (np.diff(key) > 0).all():      # the retrievers' union comes sorted: no copy then
            out = out.sort_values(["row", "item"], kind="stable").reset_index(drop=True)
        return out

    def _block(self, rows: int, columns: int, reuse: bool) -> np.ndarray:
        """A (rows, columns) float32 block, column-major; with ``reuse`` the previous one's memory where it
        is large enough (fresh arrays of this size are slow to fault in on a host short of huge pages)."""
        if not reuse:
            return np.empty((rows, columns), np.float32, order="F")
        if self._buffer is None or self._buffer.shape[0] < rows or self._buffer.shape[1] != columns:
            self._buffer = np.empty((rows, columns), np.float32, order="F")
        return self._buffer[:rows]

    def _user_item(self, user: np.ndarray, item: np.ndarray) -> dict[str, np.ndarray]:
        n_items, n_categories = len(self.item_features), int(self.item_stats["category"].max(initial=-1)) + 2
        at, found = R.positions(user * n_items + item, self.pair_keys)
        events, baskets, days = (_at(self.pair_stats[c], at, found)
                                 for c in ("events", "baskets", "days_since_last_purchase"))
        category = self.item_stats["category"][item]
        in_category = np.where(category >= 0, np.nan_to_num(
            _value_at(user * n_categories + category, self.category_keys, self.category_purchases)), np.nan)
        categorised = self.user_stats["categorised"][user]
        user_mean = _mean(self.user_stats["price_sum"], self.user_stats["price_count"])[user]
        item_mean = _mean(self.item_stats["price_sum"], self.item_stats["price_count"])[item]
        buyers = self.item_stats["buyers"][item]
        with np.errstate(divide="ignore", invalid="ignore"):
            values = {    # features/historical.py user_item_features, in its order; nulls are NaN
                "ui_baskets_with_item": np.nan_to_num(baskets),
                "ui_events_with_item": np.nan_to_num(events),
                "ui_days_since_last_purchase": days,
                "ui_category_share": np.where(categorised != 0, in_category / categorised, np.nan),
                "ui_price_vs_user_mean": np.where(user_mean != 0, item_mean / user_mean, np.nan),
                "item_rebuy_rate": np.where(buyers != 0, self.item_stats["rebuyers"][item] / buyers, np.nan),
                "item_buyers": np.nan_to_num(buyers),
            }
        return {c: v.astype(np.float32) for c, v in values.items()}     # as _numeric casts the Spark side


def _at(values: np.ndarray, at: np.ndarray, found: np.ndarray) -> np.ndarray:
    """values[at] where found, NaN elsewhere (float64)."""
    out = np.full(len(at), np.nan)
    out[found] = values[at[found]]
    return out


def _value_at(keys: np.ndarray, known: np.ndarray, values: np.ndarray) -> np.ndarray:
    """values[i] where known[i] == key (``known`` sorted, unique), NaN where the key is not there; float64,
    as Spark's ratios are computed before the cast to float."""
    return R.value_at(keys, known, values, dtype=np.float64, presorted=True)


def _mean(total: np.ndarray, count: np.ndarray) -> np.ndarray:
    """total / count, NaN where the count is 0 or unknown (``features.historical._ratio``)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(count != 0, total / count, np.nan)


def _arrays(frame: pd.DataFrame) -> dict[str, np.ndarray]:
    return {c: frame[c].to_numpy() for c in frame.columns}


def night_lookup(spark: SparkSession, lake_root: str, d: dt.date, user_ids: np.ndarray,
                 catalogue: list[str]) -> NightLookup:
    """The :class:`NightLookup` of night ``d`` for ``user_ids`` and the catalogue: the feature tables'
    partitions as of ``d`` (exact as-of join) and the user x item aggregates of the events before its
    cut-off, each collected once."""
    users = pd.Index(pd.unique(np.asarray(user_ids, dtype=str)))
    wanted = spark.createDataFrame(pd.DataFrame({"user_id": users.to_numpy(), "as_of_date": d}), schema=_USER_KEYS)
    catalogue_rows = spark.createDataFrame(pd.DataFrame({"item_id": np.asarray(catalogue, dtype=str), "as_of_date": d}),
                                           schema=_ITEM_KEYS)
    parts = user_item_parts(lake.read(spark, lake_root, EVENTS), lake.read(spark, lake_root, ITEMS),
                            wanted.select("as_of_date").distinct())
    pairs = parts.pairs.persist()
    try:
        mine = lambda df: df.join(wanted.select("user_id"), "user_id", "left_semi")   # noqa: E731
        pair_rows = mine(pairs).select("user_id", "item_id", F.col("_events").cast("double").alias("events"),
                                       F.col("_baskets").cast("double").alias("baskets"),
                                       F.datediff(F.col("as_of_date"), F.col("_last_purchase_date"))
                                       .cast("double").alias("days_since_last_purchase")).toPandas()
        category_rows = (mine(parts.user_categories).where(F.col("_category").isNotNull())
                         .select("user_id", "_category", F.col("_n").cast("double").alias("n")).toPandas())
        user_rows = mine(parts.users).select("user_id", "_user_price_sum", "_user_price_count").toPandas()
        item_rows = parts.items.select("item_id", "_buyers", "_rebuyers", "_item_price_sum",
                                       "_item_price_count").toPandas()
        categories = parts.categories.toPandas()
        user_features = _numeric(as_of_join(wanted, lake.read(spark, lake_root, USER_FEATURES), "user_id",
                                            prefix="user_"), ("as_of_date", "user_id"))
        item_features = _numeric(as_of_join(catalogue_rows, lake.read(spark, lake_root, ITEM_FEATURES), "item_id",
                                            prefix="item_"), ("as_of_date", "item_id"))
    finally:
        pairs.unpersist()
    return _assemble(d, users, list(catalogue), pair_rows, category_rows, user_rows, item_rows, categories,
                     user_features, item_features)


_USER_KEYS = T.StructType([T.StructField("user_id", T.StringType()), T.StructField("as_of_date", T.DateType())])
_ITEM_KEYS = T.StructType([T.StructField("item_id", T.StringType()), T.StructField("as_of_date", T.DateType())])


def _assemble(d: dt.date, users: pd.Index, catalogue: list[str], pair_rows: pd.DataFrame, category_rows: pd.DataFrame,
              user_rows: pd.DataFrame, item_rows: pd.DataFrame, categories: pd.DataFrame,
              user_features: pd.DataFrame, item_features: pd.DataFrame) -> NightLookup:
    """The collected frames as arrays indexed by user position and catalogue index."""
    items = pd.Index(catalogue)
    V = len(items)
    known_categories = pd.Index(sorted(categories["_category"].dropna().unique()))
    category_of = categories.dropna().drop_duplicates("item_id").set_index("item_id")["_category"]
    item_category = known_categories.get_indexer(category_of.reindex(items).to_numpy())     # -1: unknown
    C = len(known_categories) + 1
    u, i = users.get_indexer(pair_rows["user_id"]), items.get_indexer(pair_rows["item_id"])
    keep = (u >= 0) & (i >= 0)
    pair_keys = u[keep].astype(np.int64) * V + i[keep]
    order = np.argsort(pair_keys, kind="stable")
    cu, cc = users.get_indexer(category_rows["user_id"]), known_categories.get_indexer(category_rows["_category"])
    category_keys = cu.astype(np.int64) * C + cc
    corder = np.argsort(category_keys, kind="stable")
    categorised = np.bincount(cu, weights=category_rows["n"].to_numpy(), minlength=len(users))
    has_known = np.bincount(cu, minlength=len(users)) > 0
    ustats = user_rows.set_index("user_id").reindex(users)
    istats = item_rows.set_index("item_id").reindex(items)
    return NightLookup(
        as_of=d, users=users,
        user_features=user_features.set_index("user_id").reindex(users).drop(columns="as_of_date").reset_index(drop=True),
        item_features=item_features.set_index("item_id").reindex(items).drop(columns="as_of_date").reset_index(drop=True),
        user_stats={"price_sum": ustats["_user_price_sum"].to_numpy(np.float64),
                    "price_count": ustats["_user_price_count"].to_numpy(np.float64),
                    # null in Spark when the user has no purchase rows in a known category
                    "categorised": np.where(has_known, categorised, np.nan)},
        item_stats={"buyers": istats["_buyers"].to_numpy(np.float64), "rebuyers": istats["_rebuyers"].to_numpy(np.float64),
                    "price_sum": istats["_item_price_sum"].to_numpy(np.float64),
                    "price_count": istats["_item_price_count"].to_numpy(np.float64), "category": item_category},
        pair_keys=pair_keys[order],
        pair_stats={c: pair_rows[c].to_numpy(np.float64)[keep][order]
                    for c in ("events", "baskets", "days_since_last_purchase")},
        category_keys=category_keys[corder], category_purchases=category_rows["n"].to_numpy(np.float64)[corder])


def _numeric(features, keys: tuple[str, ...]) -> pd.DataFrame:
    """The key columns and every numeric feature column (as float32) of a Spark frame, collected."""
    numeric = [f.name for f in features.schema.fields if isinstance(f.dataType, NUMERIC) and f.name not in keys]
    got = features.select(*keys, *[features[c].cast("float").alias(c) for c in numeric]).toPandas()
    got[numeric] = got[numeric].astype(np.float32)
    return got


def feature_columns(frame: pd.DataFrame, leave_out: tuple[str, ...] = ()) -> list[str]:
    skip = {"row", "item", "label", "qid"}
    return [c for c in frame.columns if c not in skip and not any(c.startswith(p) or c == p for p in leave_out)]


def training_nights(d: dt.date, cfg: RankerConfig) -> list[dt.date]:
    """The labelled nights before D, newest first (the first validates)."""
    return [d - dt.timedelta(days=cfg.every_days * j) for j in range(1, cfg.training_nights + 1)]


def fit_for(frames: dict[dt.date, NightFrame], d: dt.date, cfg: RankerConfig, seed: int = 0,
            leave_out: tuple[str, ...] = (), spark: SparkSession | None = None) -> tuple[Any, list[str], dict]:
    """The ranker for night D: fitted on its training nights' frames (never D's own), in one process or,
    with ``ranker.engine = xgboost-spark``, by xgboost.spark on ``spark`` (the same plain Booster back)."""
    train, valid, features = _fit_inputs(frames, d, cfg, leave_out)
    params = R.TreeParams(max_depth=cfg.max_depth, eta=cfg.eta, max_rounds=cfg.max_rounds,
                          early_stopping_rounds=cfg.early_stopping_rounds, seed=seed)
    if cfg.engine == "xgboost-spark":
        from training.spark_ranker import fit_xgb_spark

        model, info = fit_xgb_spark(spark, train, valid, features, params, num_workers=cfg.spark_workers)
        booster = model.get_booster()
    else:
        booster, info = R.fit(train, valid, features, params)
    info.update(engine=cfg.engine, training_nights=[str(n) for n in training_nights(d, cfg)])
    return booster, features, info


def fit_logreg_for(spark: SparkSession, frames: dict[dt.date, NightFrame], d: dt.date, cfg: RankerConfig):
    """The simple scorer the ranker is compared with: Spark MLlib logistic regression on the same nights
    and features (training/spark_ranker.py). (model, features, info); scores with ``predict_logreg``."""
    from training.spark_ranker import fit_logreg

    train, valid, features = _fit_inputs(frames, d, cfg)
    model, info = fit_logreg(spark, train, valid, features)
    info["training_nights"] = [str(n) for n in training_nights(d, cfg)]
    return model, features, info


def _fit_inputs(frames: dict[dt.date, NightFrame], d: dt.date, cfg: RankerConfig, leave_out: tuple[str, ...] = ()
                ) -> tuple[pd.DataFrame, pd.DataFrame, list[str]]:
    """(train, valid, features) for night D: the newest training night validates, the older ones train;
    the transformer's features are left out when some night had no model as of it."""
    nights = training_nights(d, cfg)
    valid = frames[nights[0]].frame
    train = pd.concat([frames[n].frame for n in nights[1:]], ignore_index=True)
    features = feature_columns(valid, leave_out)
    if not all(frames[n].frame["transformer_rank"].notna().any() for n in nights):
        features = [f for f in features if not f.startswith("transformer_")]     # no model as of some night
    return train, valid, features


@dataclass
class RankContext:
    """What re-ranking night D's users needs, built once on the driver (:func:`rank_context`) and broadcast
    to the Python workers, which rank the scorer's rows where they are made (:func:`reranker`)."""
    night: B.Night                  # horizon 1: the pool and its baskets before the cut-off, no targets
    users: pd.Index                 # night.user_ids: user id -> pool row
    lookup: NightLookup             # the night's point-in-time features of every pool user
    fitted: tuple[Any, H.TifuPool]  # the co-occurrence model and TIFU-KNN pool (fit_retrievers)
    ranker: Any                     # training.ranker.LoadedRanker
    catalogue: list[str]            # the recommendable catalogue, the retrievers' item order
    k: int
    chunk_users: int                # users ranked at a time: ~380 candidates x ~120 float32 columns each
    threads: int                    # XGBoost's threads per worker (one task per core already)


def rank_context(spark: SparkSession, lake_root: str, config, d: dt.date, ranker, k: int) -> RankContext:
    """Night D's :class:`RankContext`: the purchases before its cut-off, their retrievers and the features
    as of D, each read and fitted once for all users."""
    from jobs.backtest import read_purchases

    catalogue, recommendable, purchases, _ = read_purchases(spark, lake_root, config, through=d)
    night = B.night(purchases, d, 1, recommendable)
    return RankContext(night, pd.Index(night.user_ids), night_lookup(spark, lake_root, d, night.user_ids, catalogue),
                       fit_retrievers(night, ranker.tifu), ranker, list(catalogue), k,
                       config.score.rank_chunk_users, config.score.torch_threads)


class Sums(AccumulatorParam):
    """A Spark accumulator of figures by name ({name: number}), summed over the workers' tasks."""

    def zero(self, value: dict) -> dict:
        return {}

    def addInPlace(self, a: dict, b: dict) -> dict:
        for part, seconds in b.items():
            a[part] = a.get(part, 0.0) + seconds
        return a


def reranker(context_bc, sums=None) -> Callable[[Iterator[pa.RecordBatch]], Iterator[pa.RecordBatch]]:
    """The scorer's second stage (``scoring.candidates.candidate_rows(then=...)``): each batch of scored
    rows, ranked by :func:`rank_users` with the broadcast :class:`RankContext`, in the worker that scored
    it. ``sums``: a :class:`Sums` accumulator that gets where the workers' time went (seconds by part)
    and how many candidates they ranked (``candidates``)."""
    def rank_batches(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        from scoring.candidates import candidate_batch

        spent: dict[str, float] = {}
        context = context_bc.value           # loaded once per Python worker
        context.ranker.booster.set_param({"nthread": context.threads})
        for batch in batches:
            out = rank_users(context, batch.to_pandas(), spent)
            yield candidate_batch(out["user_id"].to_numpy(object), out["rank"].to_numpy(np.int32),
                                  out["item_id"].to_numpy(object), out["score"].to_numpy(np.float32),
                                  out["strategy"].to_numpy(object))
        if sums is not None:
            sums.add(spent)
    return rank_batches


def rank_users(context: RankContext, scored: pd.DataFrame, spent: dict[str, float] | None = None) -> pd.DataFrame:
    """The rows to write for the scorer's rows ``scored`` (``user_id, rank, item_id, score, strategy``, the
    transformer's top N of each of its users): every user the model scored who bought something before the
    cut-off gets its top ``k`` of the ranker's candidates (strategy ``ranker``, score = the ranker's);
    the others keep their first ``k`` rows (the model's, or the popular fallback). ``spent``: seconds by
    part, and the number of candidates ranked (``candidates``), are added to it."""
    from scoring.candidates import MODEL, RANKED

    night, ranker, (cooccurrence, tifu_pool) = context.night, context.ranker, context.fitted
    clock = _Stopwatch(spent)
    pool_row = context.users.get_indexer(scored["user_id"])
    mine = (scored["strategy"].to_numpy() == MODEL) & (pool_row >= 0)
    order = np.argsort(pool_row[mine], kind="stable")                        # each chunk's rows one slice
    model_rows, pool_row = scored[mine].iloc[order], pool_row[mine][order]
    rows = np.unique(pool_row)
    out = []
    for start in range(0, len(rows), context.chunk_users):
        part = rows[start:start + context.chunk_users]
        chunk = model_rows.iloc[np.searchsorted(pool_row, part[0]):np.searchsorted(pool_row, part[-1], "right")]
        with clock("retrievers"):
            transformer = _transformer_frame(chunk, night, context.catalogue) if "transformer" in ranker.retrievers else None
            frame = R.candidates(night, part, transformer=transformer, tifu=ranker.tifu, cooccurrence=cooccurrence,
                                 pools=ranker.pools, tifu_pool=tifu_pool)
        with clock("features"):
            frame = context.lookup.attach(frame, night.user_ids, reuse=True)
        clock.count("candidates", len(frame))
        missing = sorted(set(ranker.features) - set(frame.columns))
        if missing:
            raise RuntimeError(f"ranker {ranker.name}/{ranker.version} wants features the lake does not give: "
                               f"{', '.join(missing[:5])}")
        with clock("predict"):
            score = R.predict(ranker.booster, frame, ranker.features)
        with clock("top k"):
            top = R.top_rows(frame, score, context.k)
            out.append(pd.DataFrame({"user_id": night.user_ids[top["row"].to_numpy()].astype(str),
                                     "rank": top["rank"].to_numpy(np.int32),
                                     "item_id": np.asarray(context.catalogue, dtype=object)[top["item"].to_numpy()],
                                     "score": top["score"].to_numpy(np.float32), "strategy": RANKED}))
    ranked = pd.concat(out, ignore_index=True) if out else scored.iloc[:0]
    kept = scored[~scored["user_id"].isin(ranked["user_id"]) & (scored["rank"] <= context.k)]
    return pd.concat([ranked, kept], ignore_index=True)


class _Stopwatch:
    """``with clock(part):`` adds the block's seconds to ``spent[part]``, ``clock.count(name, n)`` adds n to
    ``spent[name]`` (nothing when ``spent`` is None)."""

    def __init__(self, spent: dict[str, float] | None):
        self.spent = spent

    @contextlib.contextmanager
    def __call__(self, part: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            self.count(part, time.perf_counter() - start)

    def count(self, name: str, value: float) -> None:
        if self.spent is not None:
            self.spent[name] = self.spent.get(name, 0.0) + value
