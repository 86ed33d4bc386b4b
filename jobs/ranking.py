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

import datetime as dt
import logging
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import pandas as pd
from pyspark.sql import SparkSession
from pyspark.sql import types as T

from features.historical import as_of_join, user_item_features
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
                 transformer_rows: TransformerRows, tifu: H.TifuKnnParams, pools_: R.Pools,
                 rows: dict[dt.date, np.ndarray] | None = None) -> dict[dt.date, NightFrame]:
    """The candidates of every night's judged users (or of ``rows[d]``, pool rows) with labels and
    features, one Spark pass for all."""
    frames = {}
    for d, night in sorted(nights.items()):
        transformer = _transformer_frame(transformer_rows(d), night, catalogue)
        wanted = night.evaluated if rows is None or d not in rows else rows[d]
        frame = R.candidates(night, wanted, transformer=transformer, tifu=tifu,
                             cooccurrence=R.cooccurrence_model(night), pools=pools_)
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
    ``features.historical.get_historical_features`` taken apart so that the driver receives each user's and
    each item's columns once per night (joined to the candidates here) rather than once per candidate."""
    item_ids = np.asarray(catalogue, dtype=object)
    keys = pd.concat([pd.DataFrame({"user_id": night.user_ids[f["row"].to_numpy()].astype(str),
                                    "item_id": item_ids[f["item"].to_numpy()], "as_of_date": d,
                                    "row": f["row"].to_numpy(np.int64), "item": f["item"].to_numpy(np.int64)})
                      for d, (night, f) in frames.items()], ignore_index=True)
    rows = spark.createDataFrame(keys, schema=_KEYS).persist()
    try:
        pairs = _numeric(user_item_features(rows, lake.read(spark, lake_root, EVENTS), lake.read(spark, lake_root, ITEMS)),
                         ("as_of_date", "row", "item"))
        users = _numeric(as_of_join(rows.select("user_id", "as_of_date").distinct(),
                                    lake.read(spark, lake_root, USER_FEATURES), "user_id", prefix="user_"),
                         ("as_of_date", "user_id"))
        items = _numeric(as_of_join(rows.select("item_id", "as_of_date").distinct(),
                                    lake.read(spark, lake_root, ITEM_FEATURES), "item_id", prefix="item_"),
                         ("as_of_date", "item_id"))
    finally:
        rows.unpersist()
    out = {}
    for d, (night, f) in frames.items():
        mine = f.assign(user_id=night.user_ids[f["row"].to_numpy()].astype(str), item_id=item_ids[f["item"].to_numpy()])
        merged = (mine.merge(pairs[pairs["as_of_date"] == d].drop(columns="as_of_date"), on=["row", "item"],
                             how="left", validate="one_to_one")
                  .merge(users[users["as_of_date"] == d].drop(columns="as_of_date"), on="user_id", how="left",
                         validate="many_to_one")
                  .merge(items[items["as_of_date"] == d].drop(columns="as_of_date"), on="item_id", how="left",
                         validate="many_to_one"))
        if len(merged) != len(f):
            raise RuntimeError(f"feature join changed the candidate count of {d}: {len(f)} -> {len(merged)}")
        out[d] = merged.drop(columns=["user_id", "item_id"]).sort_values(["row", "item"], kind="stable").reset_index(drop=True)
    return out


_KEYS = T.StructType([T.StructField("user_id", T.StringType()), T.StructField("item_id", T.StringType()),
                      T.StructField("as_of_date", T.DateType()), T.StructField("row", T.LongType()),
                      T.StructField("item", T.LongType())])


def _numeric(features, keys: tuple[str, ...]) -> pd.DataFrame:
    """The key columns and every numeric feature column (as float32) of a Spark frame, collected."""
    numeric = [f.name for f in features.schema.fields
               if isinstance(f.dataType, NUMERIC) and f.name not in keys and f.name not in ("row", "item")]
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


def rank_users(spark: SparkSession, lake_root: str, config, d: dt.date, scored: pd.DataFrame, ranker,
               k: int, chunk_users: int = 5_000) -> pd.DataFrame:
    """The scorer's rows (``user_id, rank, item_id, score, strategy``, the transformer's top N per user)
    re-ranked for night D: every user the model scored who bought something before the cut-off gets its
    top ``k`` of the ranker's candidates (strategy ``ranker``, score = the ranker's); others get nothing
    here (the caller keeps their rows)."""
    from jobs.backtest import read_purchases
    from scoring.candidates import MODEL, RANKED

    catalogue, recommendable, purchases, _ = read_purchases(spark, lake_root, config, through=d)
    night = B.night(purchases, d, 1, recommendable)
    model_rows = scored[scored["strategy"] == MODEL]
    rows = np.flatnonzero(pd.Index(night.user_ids).isin(set(model_rows["user_id"])))
    out = []
    for start in range(0, len(rows), chunk_users):     # bounds the driver: ~300 candidates x ~120 columns a user
        # (20,000 users in one chunk passed 19 GB on a 24 GB machine: bench/results/ranker.md)
        part = rows[start:start + chunk_users]
        mine = model_rows[model_rows["user_id"].isin(set(night.user_ids[part]))]
        transformer = mine if "transformer" in ranker.retrievers else None
        frame = night_frames(spark, lake_root, {d: night}, catalogue, lambda _: transformer, ranker.tifu,
                             ranker.pools, rows={d: part})[d].frame
        missing = sorted(set(ranker.features) - set(frame.columns))
        if missing:
            raise RuntimeError(f"ranker {ranker.name}/{ranker.version} wants features the lake does not give: "
                               f"{', '.join(missing[:5])}")
        top = R.top_rows(frame, R.predict(ranker.booster, frame, ranker.features), k)
        out.append(pd.DataFrame({"user_id": night.user_ids[top["row"].to_numpy()].astype(str),
                                 "rank": top["rank"].to_numpy(np.int32),
                                 "item_id": np.asarray(catalogue, dtype=object)[top["item"].to_numpy()],
                                 "score": top["score"].to_numpy(np.float32), "strategy": RANKED}))
        log.info("ranked %d of %d users of %s (%d candidates)", min(start + chunk_users, len(rows)), len(rows), d,
                 len(frame))
    return pd.concat(out, ignore_index=True) if out else pd.DataFrame(
        {"user_id": [], "rank": [], "item_id": [], "score": [], "strategy": []})
