"""The planted-signal candidate frames the Spark ranker tests learn from, and a small job that
tests/test_spark_cluster.py spark-submits to its standalone cluster: ``fit_xgb_spark`` with two workers
on those frames, its result written as JSON to the path given::

    spark-submit --master spark://127.0.0.1:PORT --py-files warmstart-py.zip tests/cluster_ranker_job.py OUT.json
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd

FEATURES = ["signal", "noise"]
ITEMS = 20


def planted(n_users: int, first_qid: int, seed: int) -> pd.DataFrame:
    """``n_users`` groups of 20 candidates: an item is bought when its ``signal`` plus a little noise
    (sd 0.2) is past 1.0 (~16% of them), so the highest signal is the likeliest buy and the order takes
    more than one split to learn; ``noise`` is unrelated. Half the items with signal below -0.5 were
    "not proposed" (signal NaN): missing says "weak", which a ranker has to learn from the NaN itself."""
    rng = np.random.default_rng(seed)
    signal = rng.normal(size=(n_users, ITEMS))
    label = (signal + 0.2 * rng.normal(size=signal.shape) > 1.0).astype(np.float32)
    shown = np.where((signal < -0.5) & (rng.random(signal.shape) < 0.5), np.nan, signal)
    return pd.DataFrame({"row": np.repeat(np.arange(n_users), ITEMS), "item": np.tile(np.arange(ITEMS), n_users),
                         "qid": np.repeat(np.arange(n_users) + first_qid, ITEMS),
                         "signal": shown.ravel().astype(np.float32),
                         "noise": rng.normal(size=n_users * ITEMS).astype(np.float32), "label": label.ravel()})


def first_item_precision(frame: pd.DataFrame, score: np.ndarray) -> float:
    """Over the groups with a positive: the share whose best-scored candidate is bought (random ~0.16)."""
    from training.ranker import top_rows

    first = top_rows(frame, score, 1).merge(frame[["row", "item", "label"]], on=["row", "item"])
    has = frame.groupby("row")["label"].max() > 0
    return float(first.set_index("row")["label"][has[has].index].mean())


def main(argv: list[str]) -> int:
    from pyspark.sql import SparkSession

    from training.ranker import TreeParams
    from training.spark_ranker import fit_xgb_spark, predict_spark

    spark = SparkSession.builder.appName("warmstart-cluster-ranker").getOrCreate()
    train, valid, test = planted(200, 0, seed=1), planted(100, 1000, seed=2), planted(100, 2000, seed=3)
    model, info = fit_xgb_spark(spark, train, valid, FEATURES, TreeParams(max_rounds=50, early_stopping_rounds=10),
                                num_workers=2)
    score = predict_spark(model, spark, test, FEATURES)
    result = {"master": spark.sparkContext.master, "info": info,
              "first_item_precision": first_item_precision(test, score)}
    Path(argv[0]).write_text(json.dumps(result, indent=2))
    spark.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
