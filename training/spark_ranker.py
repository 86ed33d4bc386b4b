"""The ranker's paths through Spark, for candidate sets that outgrow one machine, and the simple scorer it
is compared with. ``jobs/ranking.fit_for`` trains here with ``ranker.engine = xgboost-spark``, and the
backtest's ``--ablation`` adds the logistic-regression comparison (``jobs/ranking.fit_logreg_for``); the
single-process fit stays in :mod:`training.ranker`.

- :func:`fit_xgb_spark` / :func:`predict_spark`: the same ``rank:ndcg`` booster as
  :func:`training.ranker.fit` (early stopping on the validation night with NDCG@10, groups without a
  positive dropped, refitted on both with the best round count), trained by ``xgboost.spark`` on
  ``num_workers`` Spark tasks. ``model.get_booster()`` is a plain xgboost ``Booster``:
  :func:`training.ranker.save` writes it as it writes ranker.fit's, and plain xgboost predicts with it.
- :func:`fit_logreg` / :func:`predict_logreg`: Spark MLlib logistic regression on the same features
  (NaN -> 0 plus a 0/1 missing indicator per feature that has NaNs in train; scaled), ``regParam``
  chosen by the validation night's NDCG@10, refitted on both.
- :func:`candidate_ndcg`: mean NDCG@k of each group's candidates ordered by a score (pure pandas).

Frames: one row per candidate, columns ``row``, ``item``, ``qid`` (one per user and night), ``label``
(0/1) and float feature columns where NaN (null in Spark) means "not proposed". Either pandas frames
(converted here) or Spark DataFrames with those columns.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from training import metrics as M
from training.ranker import TreeParams

KEYS = ("row", "item", "qid", "label")
REG_PARAMS = (0.0, 0.01, 0.1)   # none, mild, strong: the scorer has a handful of inputs
VALID = "is_valid"              # xgboost.spark's validation indicator: a boolean column
FEATURE_ARRAY = "_features"     # the features as one array<float> column, NaN where missing
POSITION = "_position"          # a pandas frame's row order, carried through Spark for the predictions


def _to_spark(spark, frame, features: Sequence[str], keys: Sequence[str] = KEYS):
    """``keys`` and float32 ``features`` as a Spark DataFrame: a pandas frame is converted (its NaNs
    become nulls, which both paths read as missing), a Spark one only narrowed to those columns."""
    if not isinstance(frame, pd.DataFrame):
        return frame.select(*keys, *features)
    columns = {k: frame[k].to_numpy(np.float64 if k == "label" else np.int64) for k in keys}
    columns.update({f: frame[f].to_numpy(np.float32) for f in features})
    return spark.createDataFrame(pd.DataFrame(columns))


def _positioned(spark, frame, features: Sequence[str]):
    """The frame's features with :data:`POSITION`, so that predictions come back in its row order."""
    from pyspark.sql import functions as F

    if isinstance(frame, pd.DataFrame):
        own = pd.DataFrame({POSITION: np.arange(len(frame)), **{f: frame[f].to_numpy() for f in features}})
        return _to_spark(spark, own, features, keys=(POSITION,))
    return frame.select(*features).withColumn(POSITION, F.monotonically_increasing_id())


def _in_order(scored, column) -> np.ndarray:
    out = scored.select(POSITION, column.alias("score")).toPandas()
    return out.sort_values(POSITION, kind="stable")["score"].to_numpy(np.float64)


def _with_feature_array(frame, features: Sequence[str]):
    """:data:`FEATURE_ARRAY`. xgboost.spark takes a list of feature columns too, but then (3.2) fails
    with KeyError 'values' on any Arrow batch without validation rows (or without training rows): a
    partition of several batches sorted by qid has them whenever the nights' qids do not interleave.
    One array column takes the path without that bug. Nulls become NaN, xgboost's ``missing``."""
    from pyspark.sql import functions as F

    nan = F.lit(float("nan")).cast("float")
    return frame.withColumn(FEATURE_ARRAY, F.array(*[F.coalesce(F.col(f).cast("float"), nan) for f in features]))


def _with_positive(frame):
    """Groups with a positive only: the others give rank:ndcg no pair to learn from (as ranker.fit)."""
    from pyspark.sql import functions as F

    has = frame.groupBy("qid").agg(F.max("label").alias("best")).where("best > 0").select("qid")
    return frame.join(has, "qid", "left_semi")


def _stacked(train, valid, num_workers: int):
    """Train and valid rows in one frame, as xgboost.spark takes them (:data:`VALID` marks the valid
    rows), in exactly ``num_workers`` partitions hashed by qid, so xgboost.spark keeps them. Left to
    itself it range-partitions by qid: each worker gets a qid range, the later night lands on the last
    worker and the training rows are spread unevenly. Hashing gives every worker a share of both
    nights, whole groups each. The qids become 2q and 2q + 1 so that the refit on both nights, one
    matrix, never merges a train group with a valid group that had the same qid."""
    from pyspark.sql import functions as F

    both = train.withColumn(VALID, F.lit(False)).unionByName(valid.withColumn(VALID, F.lit(True)))
    both = both.withColumn("qid", F.col("qid") * 2 + F.col(VALID).cast("long"))
    return both.repartition(num_workers, "qid")


def _xgb_ranker(features: Sequence[str], params: TreeParams, num_workers: int, rounds: int, early_stopping: bool):
    """ranker.fit's booster settings as a SparkXGBRanker. Each worker gets ``spark.task.cpus`` threads
    (xgboost.spark refuses ``nthread``), so ``params.threads`` does not apply."""
    from xgboost.spark import SparkXGBRanker

    stopping = ({"validation_indicator_col": VALID, "early_stopping_rounds": params.early_stopping_rounds}
                if early_stopping else {})
    return SparkXGBRanker(
        features_col=FEATURE_ARRAY, feature_names=list(features), label_col="label", qid_col="qid",
        num_workers=num_workers, missing=float("nan"), objective="rank:ndcg", eval_metric="ndcg@10",
        n_estimators=rounds, max_depth=params.max_depth, learning_rate=params.eta,
        min_child_weight=params.min_child_weight, subsample=params.subsample,
        colsample_bytree=params.colsample_bytree, tree_method="hist", random_state=params.seed,
        lambdarank_pair_method="topk", lambdarank_num_pair_per_sample=10, **stopping)


def fit_xgb_spark(spark, train, valid, features: Sequence[str], params: TreeParams,
                  num_workers: int = 2, rounds: int | None = None) -> tuple[Any, dict]:
    """:func:`training.ranker.fit` through ``xgboost.spark``: a ``SparkXGBRankerModel`` fitted on
    ``train`` with early stopping on ``valid`` (NDCG@10 over each group's candidates), then refitted on
    both with that many rounds; and the same ``info`` keys as ranker.fit. ``rounds`` given (a count
    already chosen, or a benchmark's fixed work): only the refit, that many rounds. Needs
    ``num_workers`` concurrent task slots (xgboost.spark trains in one barrier stage)."""
    from pyspark.sql import functions as F

    features = list(features)
    both = _stacked(_with_positive(_to_spark(spark, train, features)),
                    _with_positive(_to_spark(spark, valid, features)), num_workers)
    both = _with_feature_array(both, features).cache()
    try:
        sizes = {r[VALID]: r for r in both.groupBy(VALID).agg(F.countDistinct("qid").alias("groups"),
                                                              F.count("*").alias("rows")).collect()}
        if set(sizes) != {False, True}:
            raise ValueError(f"train and valid each need a group with a positive; found {sorted(sizes)} (True: valid)")
        curve: list = []
        if rounds is None:
            first = _xgb_ranker(features, params, num_workers, params.max_rounds, early_stopping=True).fit(both)
            curve = first.training_summary.validation_objective_history.get("ndcg@10", [])
            best = first.get_booster().attr("best_iteration")
            rounds = int(best) + 1 if best is not None else max(len(curve), 1)
        # without the indicator column every row trains: train and valid together, as ranker.fit's refit
        model = _xgb_ranker(features, params, num_workers, rounds, early_stopping=False).fit(both)
    finally:
        both.unpersist()
    return model, {"rounds": rounds, "num_workers": num_workers,
                   "validation_ndcg@10_in_candidates": round(float(curve[rounds - 1]), 6) if curve else None,
                   "train_groups": int(sizes[False]["groups"]), "valid_groups": int(sizes[True]["groups"]),
                   "train_rows": int(sizes[False]["rows"]), "valid_rows": int(sizes[True]["rows"])}


def predict_spark(model, spark, frame, features: Sequence[str]) -> np.ndarray:
    """The ranker's scores of ``frame``'s rows, in its row order (a pandas frame's; a Spark
    DataFrame's partition order)."""
    from pyspark.sql import functions as F

    scored = model.transform(_with_feature_array(_positioned(spark, frame, features), features))
    return _in_order(scored, F.col(model.getPredictionCol()))


def candidate_ndcg(frame: pd.DataFrame, score: np.ndarray, k: int = 10) -> float:
    """Mean over ``frame``'s qid groups with a positive of NDCG@k of the group's candidates ordered by
    ``score`` (ties to the lower item index): binary gains, the ideal being every positive of the
    group first (:func:`training.metrics.ndcg_at_k`). Groups without a positive are left out; NaN if
    none has one."""
    ordered = frame[["qid", "item", "label"]].assign(score=np.asarray(score, np.float64))
    ordered = ordered.sort_values(["qid", "score", "item"], ascending=[True, False, True], kind="stable")
    ordered = ordered.assign(place=ordered.groupby("qid").cumcount() + 1.0)
    ranks = [g.to_numpy() for _, g in ordered[ordered["label"] > 0].groupby("qid")["place"]]
    return float(M.ndcg_at_k(ranks, k).mean()) if ranks else float("nan")


def _features_with_missing(frame, features: Sequence[str]) -> list[str]:
    """The features with a null or NaN somewhere in ``frame`` (one pass)."""
    from pyspark.sql import functions as F

    flags = frame.select([F.max((F.isnan(f) | F.col(f).isNull()).cast("int")).alias(f) for f in features]).first()
    return [f for f in features if flags[f]]


def _fill_statement(features: Sequence[str], indicators: Sequence[str]) -> str:
    """SQL for MLlib's SQLTransformer: each feature with null/NaN -> 0, and a 0/1 indicator for
    ``indicators``. In the pipeline, so that the saved model carries it."""
    filled = [f"coalesce(nanvl(CAST(`{f}` AS DOUBLE), 0D), 0D) AS `{f}__filled`" for f in features]
    missing = [f"CAST(isnan(CAST(`{f}` AS DOUBLE)) OR `{f}` IS NULL AS DOUBLE) AS `{f}__missing`" for f in indicators]
    return f"SELECT *, {', '.join(filled + missing)} FROM __THIS__"


def _logreg_pipeline(features: Sequence[str], indicators: Sequence[str], reg_param: float):
    from pyspark.ml import Pipeline
    from pyspark.ml.classification import LogisticRegression
    from pyspark.ml.feature import SQLTransformer, StandardScaler, VectorAssembler

    inputs = [f"{f}__filled" for f in features] + [f"{f}__missing" for f in indicators]
    return Pipeline(stages=[
        SQLTransformer(statement=_fill_statement(features, indicators)),
        VectorAssembler(inputCols=inputs, outputCol="_raw"),
        StandardScaler(inputCol="_raw", outputCol="_scaled", withMean=True, withStd=True),
        # already scaled: the penalty needs no second standardisation
        LogisticRegression(featuresCol="_scaled", labelCol="label", regParam=reg_param, elasticNetParam=0.0,
                           standardization=False, maxIter=100)])


def _probability(scored):
    from pyspark.ml.functions import vector_to_array

    return vector_to_array(scored["probability"])[1]


def fit_logreg(spark, train, valid, features: Sequence[str],
               reg_params: Sequence[float] = REG_PARAMS) -> tuple[Any, dict]:
    """A ``PipelineModel`` (fill and indicators -> VectorAssembler -> StandardScaler ->
    LogisticRegression) with ``regParam`` chosen from ``reg_params`` by :func:`candidate_ndcg` (k=10) on
    ``valid`` (ties to the stronger penalty), then refitted on train and valid. A pointwise classifier
    learns from the negatives of groups without a positive too, so every row of ``train`` trains."""
    features = list(features)
    train_df, valid_df = _to_spark(spark, train, features).cache(), _to_spark(spark, valid, features).cache()
    try:
        indicators = _features_with_missing(train_df, features)
        by_reg = {}
        for reg in reg_params:
            scored = _logreg_pipeline(features, indicators, reg).fit(train_df).transform(valid_df)
            judged = scored.select("qid", "item", "label", _probability(scored).alias("score")).toPandas()
            by_reg[reg] = candidate_ndcg(judged, judged["score"].to_numpy())
        best = max(reg_params, key=lambda r: (by_reg[r], r))
        model = _logreg_pipeline(features, indicators, best).fit(train_df.unionByName(valid_df))
        rows = {"train_rows": train_df.count(), "valid_rows": valid_df.count()}
    finally:
        train_df.unpersist()
        valid_df.unpersist()
    return model, {"reg_param": best, "validation_ndcg@10_in_candidates": round(by_reg[best], 6),
                   "validation_ndcg@10_by_reg_param": {str(r): round(v, 6) for r, v in by_reg.items()},
                   "missing_indicators": indicators, **rows}


def predict_logreg(model, spark, frame, features: Sequence[str]) -> np.ndarray:
    """The logistic regression's probability of label 1 for ``frame``'s rows, in its row order."""
    scored = model.transform(_positioned(spark, frame, features))
    return _in_order(scored, _probability(scored))
