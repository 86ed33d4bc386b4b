"""Fit the two-stage ranker for night D and register it as ``models/<ranker.name>/<version>/``
(model.json in XGBoost's own format, its feature list, the retrievers' settings, metrics and lineage).

    spark-submit jobs/train_ranker.py --lake ./lake --run-date 2011-12-09
    warmstart train-ranker --run-date 2011-12-09 [--no-promote] [key=value ...]

Training set: the ``ranker.training_nights`` nights D - 7, D - 14, ... (``ranker.every_days`` apart), each
with its judged users' candidates (jobs/ranking.py), labelled by what they bought in the days after it;
the newest night early-stops the trees, then all of them fit the registered model. Every input of a
night d is fitted before ``cutoff(d)``: purchases, features as of d (built here when the lake has none),
and the transformer's candidates from the model version registered for a run date on or before d (its
score and rank features are left out of the ranker when some night had no such version; the summary
says so). Purchases after D are never read. ``ranker.engine = xgboost-spark`` trains the same booster with
``xgboost.spark`` on ``ranker.spark_workers`` Spark tasks (training/spark_ranker.py) instead of in the
driver, for training sets past one machine; what is registered is the same plain booster either way.

Idempotent per run date: the version is the run date plus a fingerprint of the inputs' Delta versions,
the configuration and the transformer versions; a registered version is reused. ``LATEST`` of the
ranker moves to the new version unless ``--no-promote``.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import sys
import time
from dataclasses import dataclass
from typing import Any

import pandas as pd
from pyspark.sql import SparkSession

from jobs import build_features, lake, runtime, score, tracking
from jobs.backtest import read_purchases
from features.tables import ITEM_FEATURES, USER_FEATURES

log = logging.getLogger("warmstart.train_ranker")


@dataclass(frozen=True)
class TrainRankerArgs(runtime.JobArgs):
    run_date: dt.date | None = None
    promote: bool = True


def parser():
    p = runtime.job_parser("train-ranker", "fit the two-stage ranker on the nights before D and register it")
    p.add_argument("--run-date", type=runtime.parse_date, required=True)
    p.add_argument("--no-promote", dest="promote", action="store_false", help="register without moving LATEST")
    return p


def transformer_rows(spark: SparkSession, args: runtime.JobArgs, d: dt.date, version: str | None,
                     k: int) -> pd.DataFrame | None:
    """The sequence model's top k for night d (rows user_id, item_id, score, rank) from a registered
    ``version`` (None: no rows)."""
    from scoring.candidates import MODEL as SCORED_BY_MODEL

    if version is None:
        return None
    rows, _, _ = score.candidate_lists(spark, score.ScoreArgs(job="score", lake=args.lake, config=args.config,
                                                              run_id=args.run_id, run_date=d, model_version=version, k=k))
    return rows[rows["strategy"] == SCORED_BY_MODEL]


def run(spark: SparkSession, args: TrainRankerArgs) -> dict[str, Any]:
    from jobs import ranking
    from training import ranker as R
    from training.versions import promote_to, version_as_of, version_dir

    d, cfg = args.run_date, args.config.ranker
    started = time.time()
    catalogue, recommendable, purchases, versions = read_purchases(spark, args.lake, args.config, through=d)
    nights = ranking.training_set(purchases, recommendable, d, cfg)
    if not all(len(n.evaluated) for n in nights.values()):
        # a young lake: nothing to learn from yet, which is no error (score keeps the order it had)
        reason = (f"no purchases after some of the nights {', '.join(map(str, nights))} to learn from "
                  f"(ranker.training_nights={cfg.training_nights})")
        log.warning("ranker not trained: %s", reason)
        return {"run_date": str(d), "skipped": reason, "wall_seconds": round(time.time() - started, 1)}
    # the model a nightly run had on each night: the newest version registered for a run date on or before it
    used = {x: version_as_of(args.models_root, args.config.train.name, x) for x in nights}
    built = [str(x) for x in nights if build_features.ensure(spark, args, x)]
    inputs = {**versions, **{t.name: lake.version(spark, args.lake, t) for t in (USER_FEATURES, ITEM_FEATURES)}}
    version = f"{d:%Y%m%d}-{_fingerprint(args, inputs, used)}"
    validation = ranking.training_nights(d, cfg)[0]
    if (version_dir(args.models_root, cfg.name, version) / "model.json").is_file():
        summary = {"run_date": str(d), "version": version, "reused": True}
    else:
        tifu = ranking.tune_tifu(nights[validation], args.config.score.k)
        frames = ranking.night_frames(spark, args.lake, nights, catalogue,
                                      lambda x: transformer_rows(spark, args, x, used[x], cfg.transformer_n), tifu,
                                      ranking.pools(cfg))
        booster, features, info = ranking.fit_for(frames, d, cfg, spark=spark)
        retrievers = [r for r in R.RETRIEVERS if r != "transformer" or any(f.startswith("transformer_") for f in features)]
        metrics = {**info, "importances": R.importances(booster), "features": len(features),
                   "validation_recall": R.union_recall(frames[validation].frame, nights[validation])}
        lineage = {"run_id": args.run_id, "run_date": str(d), "inputs": inputs, "code_version": runtime.code_version(),
                   "transformer_versions": {str(x): v for x, v in used.items()},
                   "training_nights": [str(x) for x in nights]}
        R.save(args.models_root, cfg.name, version, booster, features, tifu, ranking.pools(cfg), retrievers,
               metrics, lineage)
        summary = {"run_date": str(d), "version": version, "reused": False, "features_built_for": ", ".join(built) or "-",
                   "training_nights": ", ".join(map(str, nights)), "retrievers": ", ".join(retrievers),
                   "transformer_versions": ", ".join(f"{x}: {v or 'none'}" for x, v in used.items()),
                   "features": len(features), "rounds": info["rounds"], "train_groups": info["train_groups"],
                   "train_rows": info["train_rows"],
                   "validation_ndcg@10_in_candidates": info["validation_ndcg@10_in_candidates"]}
    summary["promoted"] = promote_to(args.models_root, cfg.name, version) if args.promote else False
    summary.update(path=str(version_dir(args.models_root, cfg.name, version)), wall_seconds=round(time.time() - started, 1))
    summary.update(tracking.log_version(args, "ranker", cfg.name, version, d))   # MLflow, when on
    runtime.record_lineage(args, run_date=d, inputs={**inputs, **{f"transformer@{x}": v for x, v in used.items()}},
                           outputs={f"models/{cfg.name}": version}, summary=summary)
    return summary


def _fingerprint(args: TrainRankerArgs, inputs: dict, used: dict) -> str:
    payload = json.dumps({"inputs": inputs, "transformer": {str(k): v for k, v in used.items()}, "config": args.config.to_dict()["ranker"],
                          "code": runtime.code_version()}, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:10]


def main(argv: list[str] | None = None) -> int:
    return runtime.run_job("train-ranker", parser(), TrainRankerArgs, run, argv)


if __name__ == "__main__":
    sys.exit(main())
