"""Score every active user of a run date: top-K candidates into ``candidates/user_candidates``
(partition ``run_date``; one row per user per rank).

    spark-submit --master local[*] jobs/score.py --lake ./lake --run-date 2011-12-09
    spark-submit jobs/score.py --lake ./lake --run-date 2011-12-09 --model-version 20111209-0 --k 50
    warmstart score --run-date 2011-12-09 [--model-version V] [--k K] [key=value ...]

Reads ``bronze/items`` (the catalogue), ``features/user_sequences`` and ``features/user_features``
(as_of_date = run date), ``bronze/events`` (exclusions, popular lists), ``features/item_daily`` (the
model's recent-popularity column, when it has one) and a model version from the
registry (``paths.models``, default LATEST). The catalogue is embedded once on the driver (it has to be
broadcast anyway) in item_id order; users are scored on the executors by ``mapInArrow`` (see
``scoring/candidates.py``), each Python worker loading the model once.

Idempotent per run date: the run_date partition is replaced, and every value written is a function of
the inputs: ``generated_at`` is the point-in-time cut of the inputs (run_date + 1 day, 00:00 UTC; events
strictly before it were used), not the wall clock (that is in the lineage record). The commit carries
``{"run_date", "k", "catalogue_items", "active_users", "model_version", "run_id"}`` as Delta userMetadata;
``jobs/publish.py`` reads K and the catalogue size from it.
"""
from __future__ import annotations

import datetime as dt
import functools
import json
import sys
from dataclasses import dataclass

import numpy as np
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from features.tables import EVENTS, ITEM_DAILY, ITEMS, USER_CANDIDATES, USER_FEATURES, USER_SEQUENCES
from jobs import lake, runtime
from jobs import train as train_job
from scoring import candidates as cand


@dataclass(frozen=True)
class ScoreArgs(runtime.JobArgs):
    run_date: dt.date | None = None
    model_version: str = "latest"
    k: int | None = None


def generated_at(run_date: dt.date) -> dt.datetime:
    """The inputs' point-in-time cut: deterministic, so a rerun writes identical rows."""
    return dt.datetime.combine(run_date + dt.timedelta(days=1), dt.time())


def load_model(models_root: str, name: str, version: str):
    """The registry's model, or a one-line usage error if there is none."""
    from training.registry import RegistryError, load_model as registry_load

    try:
        return registry_load(models_root, name, version)
    except RegistryError as exc:
        raise runtime.UsageError(str(exc)) from None


def _partition(spark: SparkSession, args: ScoreArgs, table, as_of: dt.date, required: bool):
    """One as_of_date partition of a feature table and the version read, or (None, None)."""
    if not lake.exists(spark, args.lake, table):
        if required:
            raise runtime.UsageError(f"{table.name} not found under {args.lake}; run `warmstart features "
                                     f"--run-date {as_of}` first")
        return None, None
    version = lake.version(spark, args.lake, table)
    df = lake.read(spark, args.lake, table, version).where(F.col("as_of_date") == F.lit(as_of))
    if required and df.limit(1).count() == 0:
        raise runtime.UsageError(f"{table.name} has no as_of_date={as_of} partition; run `warmstart features "
                                 f"--run-date {as_of}` first")
    return df, version


def run(spark: SparkSession, args: ScoreArgs) -> dict:
    if args.run_date is None:
        raise runtime.UsageError("give --run-date D")
    cfg = args.config
    k = int(args.k or cfg.get("score.k", 100))
    if k < 1:
        raise runtime.UsageError(f"--k must be >= 1, got {k}")
    d = args.run_date
    for table in (ITEMS, EVENTS):
        if not lake.exists(spark, args.lake, table):
            raise runtime.UsageError(f"{table.name} not found under {args.lake}; run `warmstart ingest` first")
    sequences, sequences_version = _partition(spark, args, USER_SEQUENCES, d, required=True)
    user_features, user_features_version = _partition(spark, args, USER_FEATURES, d, required=False)
    items_version = lake.version(spark, args.lake, ITEMS)
    events_version = lake.version(spark, args.lake, EVENTS)
    items = lake.read(spark, args.lake, ITEMS, items_version)
    events = lake.read(spark, args.lake, EVENTS, events_version)
    not_recommended = list(cfg.get("score.exclude_categories") or [])
    if not_recommended:        # postage, fees, manual adjustments: in the catalogue, never a recommendation
        items = items.where(F.col("category").isNull() | ~F.col("category").isin(not_recommended))

    name = cfg.get("score.model_name", "warmstart-seqrec")
    model = load_model(args.models_root, name, args.model_version)

    # The catalogue goes through the driver once: it is broadcast to every executor anyway.
    catalogue = items.select(*ITEMS.columns).orderBy("item_id").toPandas()
    if catalogue.empty:
        raise runtime.UsageError(f"{ITEMS.name} is empty under {args.lake}; nothing to recommend")
    item_ids = catalogue["item_id"].astype(str).tolist()
    item_index = {item: i for i, item in enumerate(item_ids)}
    recent, daily_version = None, None
    if model.model.cfg.recent_days:
        # the recent popularity of the day these candidates serve (D + 1): the items' purchases on the
        # model's recent_days days up to D, one more column of the item matrix
        days = model.model.cfg.recent_days
        target_types = model.config.get("train", {}).get("target_event_types") or ["purchase"]
        daily_version, log_counts, _ = train_job.recent_popularity(args.lake, d, item_index, days, target_types,
                                                                   since=d - dt.timedelta(days=days - 1))
        recent = log_counts[-1]
    matrix = np.ascontiguousarray(model.item_embeddings(catalogue, recent=recent), dtype=np.float32)
    if matrix.shape != (len(item_ids), model.width) or not np.isfinite(matrix).all():
        raise runtime.WarmstartError(f"model {name}/{model.version} gave item embeddings of shape {matrix.shape} "
                                     f"(want ({len(item_ids)}, {model.width})) or non-finite values")

    excluded = cand.exclusions(events, d, list(cfg.get("score.exclude_event_types") or []))
    users = cand.scoring_users(sequences, user_features, excluded,
                               segment_column=cfg.get("score.segment_column"),
                               fallback_for_cold_start=bool(cfg.get("score.fallback_for_cold_start", True)))
    users = users.persist()
    try:
        active_users = users.count()
        popular = cand.popular_items(events, items, users.select("user_id", "segment"), d,
                                     window_days=int(cfg.get("score.popular_window_days", 30)),
                                     event_types=list(cfg.get("score.popular_event_types") or ["purchase"]),
                                     top_n=k + _max_exclusions(users))
        lists = cand.fallback_lists([tuple(r) for r in popular.collect()], item_index)

        sc = spark.sparkContext
        spec = cand.ScorerSpec(
            cache_key=f"{name}/{model.version}/{args.run_id}",
            loader=functools.partial(_worker_model, args.models_root, name, model.version),
            k=k, block_bytes=int(cfg.get("score.block_bytes", cand.BLOCK_BYTES)),
            torch_threads=int(cfg.get("score.torch_threads", 1)), embed_batch=int(cfg.get("score.embed_batch", 512)))
        bcs = [sc.broadcast(item_ids), sc.broadcast(matrix), sc.broadcast(lists)]
        partitions = int(cfg.get("score.partitions") or spark.conf.get("spark.sql.shuffle.partitions"))
        spark.conf.set("spark.sql.execution.arrow.maxRecordsPerBatch", str(int(cfg.get("score.arrow_batch_users", 4096))))
        # Fixed partitioning and order make every batch's composition, hence every float, repeatable.
        ordered = users.repartition(partitions, "user_id").sortWithinPartitions("user_id")
        rows = (cand.candidate_rows(ordered, spec, *bcs)
                .withColumn("model_version", F.lit(model.version))
                .withColumn("generated_at", F.lit(generated_at(d)).cast("timestamp"))
                .withColumn("run_date", F.lit(d)))
        metadata = {"run_date": d.isoformat(), "k": k, "catalogue_items": len(item_ids), "active_users": active_users,
                    "model_name": name, "model_version": model.version, "run_id": args.run_id}
        out_version = lake.replace_partition(spark, args.lake, USER_CANDIDATES, rows, d,
                                             user_metadata=json.dumps(metadata, sort_keys=True))
        for bc in bcs:
            bc.unpersist()
    finally:
        users.unpersist()

    written = lake.read(spark, args.lake, USER_CANDIDATES, out_version).where(F.col("run_date") == F.lit(d))
    per_strategy = {r["strategy"]: (r["users"], r["rows"]) for r in
                    written.groupBy("strategy").agg(F.countDistinct("user_id").alias("users"),
                                                    F.count("*").alias("rows")).collect()}
    summary = {
        "run_date": d.isoformat(), "model": f"{name}/{model.version}", "k": k,
        "catalogue_items": len(item_ids),
        "vocabulary_items_not_in_catalogue": len(set(model.item_ids) - set(item_ids)),
        "catalogue_items_not_in_vocabulary": len(set(item_ids) - set(model.item_ids)),
        "active_users": active_users,
        "users_model": per_strategy.get(cand.MODEL, (0, 0))[0],
        "users_popular_fallback": per_strategy.get(cand.POPULAR_FALLBACK, (0, 0))[0],
        "rows_written": sum(r for _, r in per_strategy.values()),
        "user_candidates_version": out_version,
    }
    runtime.record_lineage(args, run_date=d,
                           inputs={ITEMS.name: items_version, EVENTS.name: events_version,
                                   USER_SEQUENCES.name: sequences_version, USER_FEATURES.name: user_features_version,
                                   **({ITEM_DAILY.name: daily_version} if daily_version is not None else {}),
                                   "model": f"{name}/{model.version}"},
                           outputs={USER_CANDIDATES.name: out_version}, summary=summary)
    return summary


def _max_exclusions(users) -> int:
    """Longest exclusion list among fallback users: the popular lists must be that much longer than K."""
    row = users.where("use_fallback").agg(F.max(F.size("excluded_item_ids"))).first()
    return int(row[0] or 0)


def _worker_model(models_root: str, name: str, version: str):
    """Runs on the executors (once per Python worker): the same pinned version the driver resolved."""
    from training.registry import load_model as registry_load

    return registry_load(models_root, name, version)


def main(argv: list[str] | None = None) -> int:
    parser = runtime.job_parser("score", "write top-K candidates for every active user of a run date")
    parser.add_argument("--run-date", type=runtime.parse_date, required=True)
    parser.add_argument("--model-version", default="latest", help="registry version (default: LATEST)")
    parser.add_argument("--k", type=int, help="candidates per user (default: score.k)")
    return runtime.run_job("score", parser, lambda ns, common: runtime.dataclass_from(ScoreArgs, ns, common), run, argv)


if __name__ == "__main__":
    sys.exit(main())
