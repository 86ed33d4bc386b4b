"""Score every active user of a run date: top-K candidates into ``candidates/user_candidates``
(partition ``run_date``; one row per user per rank).

    spark-submit --master local[*] jobs/score.py --lake ./lake --run-date 2011-12-09
    spark-submit jobs/score.py --lake ./lake --run-date 2011-12-09 --model-version 20111209-0 --k 50
    warmstart score --run-date 2011-12-09 [--model-version V] [--k K] [key=value ...]

Reads ``bronze/items`` (the catalogue), ``features/user_sequences`` and ``features/user_features``
(as_of_date = run date), ``bronze/events`` (exclusions, popular lists), ``features/item_daily`` (the
model's recent-popularity column, when it has one) and a model version from the registry
(``paths.models``, name ``train.name``, default version LATEST). The catalogue is embedded once on the
driver (it has to be broadcast anyway) in item_id order; users are scored on the executors by
``mapInArrow`` (see ``scoring/candidates.py``), each Python worker loading the model once.

Idempotent per run date: the run_date partition is replaced, and every value written is a function of
the inputs: ``generated_at`` is the point-in-time cut of the inputs (``features.contract.cutoff``: run_date
+ 1 day, 00:00 UTC; events strictly before it were used), not the wall clock (that is in the lineage
record). The commit carries ``{"run_date", "k", "catalogue_items", "active_users", "model_name",
"model_version", "run_id"}`` as Delta userMetadata; ``jobs/publish.py`` reads K and the catalogue size
from it.
"""
from __future__ import annotations

import contextlib
import datetime as dt
import functools
import json
import sys
from dataclasses import dataclass

import numpy as np
import pandas as pd
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from features.contract import cutoff
from features.tables import EVENTS, ITEM_DAILY, ITEMS, USER_CANDIDATES, USER_FEATURES, USER_SEQUENCES
from jobs import chaos, lake, runtime
from training import inputs as train_inputs
from scoring import candidates as cand


@dataclass(frozen=True)
class ScoreArgs(runtime.JobArgs):
    run_date: dt.date | None = None
    model_version: str = "latest"
    k: int | None = None


def load_model(models_root: str, name: str, version: str):
    """The registry's model, or a one-line usage error if there is none."""
    from training.registry import RegistryError, load_model as registry_load

    try:
        return registry_load(models_root, name, version)
    except RegistryError as exc:
        raise runtime.UsageError(str(exc)) from None


@dataclass(frozen=True)
class _Inputs:
    """What a run date is scored from, and the Delta versions read (for the lineage record)."""

    items: DataFrame                    # the recommendable catalogue: bronze/items less score.exclude_categories
    events: DataFrame                   # bronze/events: exclusions and popular lists
    sequences: DataFrame                # features/user_sequences, as_of_date = run date
    user_features: DataFrame | None     # features/user_features, as_of_date = run date, when the table exists
    versions: dict[str, int | None]


@dataclass(frozen=True)
class _Catalogue:
    """The catalogue as the scorer sees it, in item_id order (the tie-break)."""

    item_ids: list[str]
    item_index: dict[str, int]          # item_id -> row of matrix
    matrix: np.ndarray                  # (m, d) float32 item embeddings
    versions: dict[str, int | None]     # features/item_daily's, when the model reads recent popularity


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
    k = args.k or args.config.score.k
    if k < 1:
        raise runtime.UsageError(f"--k must be >= 1, got {k}")
    inputs = _read_inputs(spark, args)
    name = args.config.train.name
    model = load_model(args.models_root, name, args.model_version)
    catalogue = _embed_catalogue(args, inputs.items, model)
    ranker = _load_ranker(args)
    out_version, active_users, ranking = _write_candidates(spark, args, k, inputs, model, catalogue, ranker)
    chaos.point("score.after_write")      # the partition is committed; the lineage record is not
    summary = _summary(spark, args, k, model, catalogue.item_ids, active_users, out_version)
    used = {"model": f"{name}/{model.version}"}
    if ranker is not None:
        summary["ranker"] = used["ranker"] = f"{ranker.name}/{ranker.version}"
        summary["ranking_candidates"] = int(ranking.pop("candidates", 0))
        summary["ranking_worker_seconds"] = {part: round(s, 1) for part, s in ranking.items()}
    runtime.record_lineage(args, run_date=args.run_date, inputs={**inputs.versions, **catalogue.versions, **used},
                           outputs={USER_CANDIDATES.name: out_version}, summary=summary)
    return summary


def _read_inputs(spark: SparkSession, args: ScoreArgs) -> _Inputs:
    d = args.run_date
    for table in (ITEMS, EVENTS):
        if not lake.exists(spark, args.lake, table):
            raise runtime.UsageError(f"{table.name} not found under {args.lake}; run `warmstart ingest` first")
    sequences, sequences_version = _partition(spark, args, USER_SEQUENCES, d, required=True)
    user_features, user_features_version = _partition(spark, args, USER_FEATURES, d, required=False)
    items_version = lake.version(spark, args.lake, ITEMS)
    events_version = lake.version(spark, args.lake, EVENTS)
    items = lake.read(spark, args.lake, ITEMS, items_version)
    not_recommended = list(args.config.score.exclude_categories)
    if not_recommended:        # postage, fees, manual adjustments: in the catalogue, never a recommendation
        items = items.where(F.col("category").isNull() | ~F.col("category").isin(not_recommended))
    return _Inputs(items=items, events=lake.read(spark, args.lake, EVENTS, events_version), sequences=sequences,
                   user_features=user_features,
                   versions={ITEMS.name: items_version, EVENTS.name: events_version,
                             USER_SEQUENCES.name: sequences_version, USER_FEATURES.name: user_features_version})


def _embed_catalogue(args: ScoreArgs, items: DataFrame, model) -> _Catalogue:
    """The catalogue's embeddings, computed once on the driver: it is broadcast to every executor anyway."""
    catalogue = items.select(*ITEMS.columns).orderBy("item_id").toPandas()
    if catalogue.empty:
        raise runtime.UsageError(f"{ITEMS.name} is empty under {args.lake}; nothing to recommend")
    item_ids = catalogue["item_id"].astype(str).tolist()
    item_index = {item: i for i, item in enumerate(item_ids)}
    recent, versions = None, {}
    if model.model.cfg.recent_days:
        # the recent popularity of the day these candidates serve (D + 1): the items' purchases on the
        # model's recent_days days up to D, one more column of the item matrix
        d, days = args.run_date, model.model.cfg.recent_days
        target_types = model.config.get("train", {}).get("target_event_types") or list(
            args.config.train.target_event_types)
        daily_version, log_counts, _ = train_inputs.recent_popularity(args.lake, d, item_index, days, target_types,
                                                                   since=d - dt.timedelta(days=days - 1))
        recent, versions = log_counts[-1], {ITEM_DAILY.name: daily_version}
    matrix = np.ascontiguousarray(model.item_embeddings(catalogue, recent=recent), dtype=np.float32)
    if matrix.shape != (len(item_ids), model.width) or not np.isfinite(matrix).all():
        raise runtime.WarmstartError(f"model {model.name}/{model.version} gave item embeddings of shape "
                                     f"{matrix.shape} (want ({len(item_ids)}, {model.width})) or non-finite values")
    return _Catalogue(item_ids=item_ids, item_index=item_index, matrix=matrix, versions=versions)


@contextlib.contextmanager
def _scored(spark: SparkSession, args: ScoreArgs, k: int, inputs: _Inputs, model, catalogue: _Catalogue, then=None):
    """Every active user's candidate rows, scored on the executors (a lazy DataFrame, valid inside the
    block), and the number of active users. The job writes them; the backtest collects them. ``then``:
    a second stage on the scorer's batches in the same worker (``candidate_rows``), e.g. the ranker."""
    cfg, d = args.config.score, args.run_date
    excluded = cand.exclusions(inputs.events, d, list(cfg.exclude_event_types))
    users = cand.scoring_users(inputs.sequences, inputs.user_features, excluded,
                               segment_column=cfg.segment_column,
                               fallback_for_cold_start=cfg.fallback_for_cold_start)
    users = users.persist()
    bcs = []
    try:
        active_users = users.count()
        popular = cand.popular_items(inputs.events, inputs.items, users.select("user_id", "segment"), d,
                                     window_days=cfg.popular_window_days,
                                     event_types=list(cfg.popular_event_types),
                                     top_n=k + _max_exclusions(users))
        lists = cand.fallback_lists([tuple(r) for r in popular.collect()], catalogue.item_index)
        sc = spark.sparkContext
        bcs = [sc.broadcast(catalogue.item_ids), sc.broadcast(catalogue.matrix), sc.broadcast(lists)]
        partitions = cfg.partitions or int(spark.conf.get("spark.sql.shuffle.partitions"))
        spark.conf.set("spark.sql.execution.arrow.maxRecordsPerBatch", str(cfg.arrow_batch_users))
        # Fixed partitioning and order make every batch's composition, hence every float, repeatable.
        ordered = users.repartition(partitions, "user_id").sortWithinPartitions("user_id")
        rows = (cand.candidate_rows(ordered, _scorer_spec(args, k, model), *bcs, then=then)
                .withColumn("model_version", F.lit(model.version))
                .withColumn("generated_at", F.lit(cutoff(d)).cast("timestamp"))
                .withColumn("run_date", F.lit(d)))
        yield rows, active_users
    finally:
        for bc in bcs:
            bc.unpersist()
        users.unpersist()


def _write_candidates(spark: SparkSession, args: ScoreArgs, k: int, inputs: _Inputs, model, catalogue: _Catalogue,
                      ranker=None) -> tuple[int, int, dict | None]:
    """Every active user's candidates replace the run date's partition: (version written, active users,
    the ranking workers' sums: seconds by part and ``candidates`` ranked; None without a ranker).

    With a ``ranker`` (jobs/ranking.py), every active user with a purchase before the cut-off gets the
    ranker's top K of its candidates (the transformer's top N among them); the other users keep their rows
    (the model's, or the popular fallback). The night's features and retrievers are read and fitted once
    here and broadcast; each Python worker ranks the rows it has just scored, so the transformer's top N
    never leaves it and ranking runs on every executor core."""
    from jobs import ranking

    sc = spark.sparkContext
    context_bc = None if ranker is None else sc.broadcast(
        ranking.rank_context(spark, args.lake, args.config, args.run_date, ranker, k))
    sums = None if ranker is None else sc.accumulator({}, ranking.Sums())
    try:
        wide, then = (k, None) if ranker is None else (max(k, ranker.pools.transformer_n),
                                                       ranking.reranker(context_bc, sums))
        with _scored(spark, args, wide, inputs, model, catalogue, then=then) as (rows, active_users):
            metadata = {"run_date": args.run_date.isoformat(), "k": k, "catalogue_items": len(catalogue.item_ids),
                        "active_users": active_users, "model_name": args.config.train.name,
                        "model_version": model.version, "run_id": args.run_id}
            if ranker is not None:
                metadata.update(ranker_name=ranker.name, ranker_version=ranker.version)
            out_version = lake.replace_partition(spark, args.lake, USER_CANDIDATES, rows, args.run_date,
                                                 user_metadata=json.dumps(metadata, sort_keys=True))
    finally:
        if context_bc is not None:
            context_bc.unpersist()
    return out_version, active_users, None if sums is None else dict(sums.value)


def _load_ranker(args: ScoreArgs):
    """The ranker that orders the candidates (``score.ranker_version``; LATEST by default), or None when
    ranking is off (``score.rank``) or none is registered: the transformer's own order is written then."""
    from training import ranker as R
    from training.versions import RegistryError, latest_version

    cfg = args.config.score
    name = args.config.ranker.name
    if not cfg.rank or (cfg.ranker_version == "latest" and latest_version(args.models_root, name) is None):
        return None
    try:
        return R.load(args.models_root, name, cfg.ranker_version)
    except RegistryError as exc:
        raise runtime.UsageError(str(exc)) from None


def candidate_lists(spark: SparkSession, args: ScoreArgs) -> tuple[pd.DataFrame, list[str], str]:
    """What ``run`` would write for ``args.run_date``, collected instead of written (the backtest judges
    the product's own lists without touching the candidates table): rows ``user_id, rank, item_id,
    score, strategy``, the recommendable catalogue in the scorer's order, and the model version."""
    k = args.k or args.config.score.k
    inputs = _read_inputs(spark, args)
    model = load_model(args.models_root, args.config.train.name, args.model_version)
    catalogue = _embed_catalogue(args, inputs.items, model)
    with _scored(spark, args, k, inputs, model, catalogue) as (rows, _):
        lists = rows.select("user_id", "rank", "item_id", "score", "strategy").toPandas()
    return lists, catalogue.item_ids, model.version


def _scorer_spec(args: ScoreArgs, k: int, model) -> cand.ScorerSpec:
    name, cfg = args.config.train.name, args.config.score
    return cand.ScorerSpec(
        cache_key=f"{name}/{model.version}/{args.run_id}",
        loader=functools.partial(_worker_model, args.models_root, name, model.version),
        k=k, block_bytes=cfg.block_bytes, torch_threads=cfg.torch_threads, embed_batch=cfg.embed_batch)


def _summary(spark: SparkSession, args: ScoreArgs, k: int, model, item_ids: list[str], active_users: int,
             out_version: int) -> dict:
    """What was written, read back from the version committed."""
    d = args.run_date
    written = lake.read(spark, args.lake, USER_CANDIDATES, out_version).where(F.col("run_date") == F.lit(d))
    per_strategy = {r["strategy"]: (r["users"], r["rows"]) for r in
                    written.groupBy("strategy").agg(F.countDistinct("user_id").alias("users"),
                                                    F.count("*").alias("rows")).collect()}
    return {
        "run_date": d.isoformat(), "model": f"{args.config.train.name}/{model.version}", "k": k,
        "catalogue_items": len(item_ids),
        "vocabulary_items_not_in_catalogue": len(set(model.item_ids) - set(item_ids)),
        "catalogue_items_not_in_vocabulary": len(set(item_ids) - set(model.item_ids)),
        "active_users": active_users,
        "users_model": per_strategy.get(cand.MODEL, (0, 0))[0],
        "users_popular_fallback": per_strategy.get(cand.POPULAR_FALLBACK, (0, 0))[0],
        "users_ranked": per_strategy.get(cand.RANKED, (0, 0))[0],
        "rows_written": sum(r for _, r in per_strategy.values()),
        "user_candidates_version": out_version,
    }


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
    return runtime.run_job("score", parser, ScoreArgs, run, argv)


if __name__ == "__main__":
    sys.exit(main())
