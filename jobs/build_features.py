"""Build the feature tables as of a date: ``features/user_features``, ``features/item_features`` and
``features/user_sequences`` (partition ``as_of_date``), over the daily aggregate layer
``features/user_daily`` / ``features/item_daily`` (partition ``event_date``). Every build is recorded
in ``features/builds`` with the late-event watermark the next build starts from.

    spark-submit --master local[*] jobs/build_features.py --lake ./lake --run-date 2011-12-09
    spark-submit jobs/build_features.py --lake ./lake --run-date 2011-12-09 --full-refresh
    spark-submit jobs/build_features.py --lake ./lake --from 2011-12-01 --to 2011-12-09
    warmstart features --run-date 2011-12-09 [--full-refresh] [--from D --to D] [key=value ...]

Modes (one as_of_date D at a time; ``--from/--to`` runs each date in order):
- **full** (``--full-refresh``, no earlier build in ``features/builds``, or one without a rolling
  state): rebuild every daily partition up to D from ``bronze/events``, sum them into D's state
  (``features/user_state`` / ``features/item_state``); sequences from all events up to D.
- **incremental** (the nightly default): start from the latest build B with as_of_date < D and its
  watermark W = the max ``ingested_at`` that build had seen. Rebuild the daily partitions of the dates
  in (B, D] and of every date <= B that received events ingested after W (late events), roll B's state
  forward by those unseen events minus the daily rows of the days leaving each window
  (features/state.py), and make D's sequences from B's sequences plus exactly the unseen events.
  The feature tables are projected from D's state.
  The ``ingested_at > W`` scan reads only the files of later ingests (Delta skips the rest on file
  statistics). The rule assumes ingest runs one at a time (the nightly flow), so ingested_at grows
  with commit order.

Idempotent per as_of_date: each output partition is replaced, and a rerun for D starts from the same
base build, so it writes the same rows.
"""
from __future__ import annotations

import datetime as dt
import logging
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from features import daily as daily_layer
from features import state
from features.item_features import item_features
from features.sequences import sequences_full, sequences_incremental
from features.tables import (EVENTS, FEATURE_BUILDS, ITEM_DAILY, ITEM_FEATURES, ITEM_STATE, ITEMS, USER_DAILY,
                             USER_FEATURES, USER_SEQUENCES, USER_STATE, Table)
from features.user_features import user_features
from jobs import lake, runtime
from training.progress import Progress

log = logging.getLogger("warmstart.features")


@dataclass(frozen=True)
class BuildFeaturesArgs(runtime.JobArgs):
    run_date: dt.date | None = None
    full_refresh: bool = False
    from_date: dt.date | None = None
    to_date: dt.date | None = None

    def as_of_dates(self) -> list[dt.date]:
        if self.from_date or self.to_date:
            if not (self.from_date and self.to_date):
                raise runtime.UsageError("--from and --to go together")
            if self.from_date > self.to_date:
                raise runtime.UsageError(f"--from {self.from_date} is after --to {self.to_date}")
            if self.run_date and not self.from_date <= self.run_date <= self.to_date:
                raise runtime.UsageError(f"--run-date {self.run_date} is outside --from/--to")
            days = (self.to_date - self.from_date).days
            return [self.from_date + dt.timedelta(days=i) for i in range(days + 1)]
        if not self.run_date:
            raise runtime.UsageError("give --run-date D (or --from D --to D)")
        return [self.run_date]


def _dates_sql(column: str, dates: list[dt.date]) -> str:
    return f"{column} IN ({', '.join(repr(d.isoformat()) for d in dates)})"


def _latest_build_before(spark: SparkSession, args: BuildFeaturesArgs, as_of: dt.date) -> dict[str, Any] | None:
    """The most recent build of the latest as_of_date before ``as_of``: the base of an incremental run."""
    if not lake.exists(spark, args.lake, FEATURE_BUILDS):
        return None
    row = (lake.read(spark, args.lake, FEATURE_BUILDS)
           .where(F.col("as_of_date") < F.lit(as_of))
           .orderBy(F.desc("as_of_date"), F.desc("built_at")).first())
    return row.asDict() if row else None


def _items(spark: SparkSession, args: BuildFeaturesArgs) -> tuple[DataFrame, int | None]:
    if not lake.exists(spark, args.lake, ITEMS):
        return spark.createDataFrame([], ITEMS.schema), None
    v = lake.version(spark, args.lake, ITEMS)
    return lake.read(spark, args.lake, ITEMS, version=v), v


def _state_of(spark: SparkSession, args: BuildFeaturesArgs, table: Table, as_of: dt.date | None) -> DataFrame | None:
    """The state rows of ``as_of`` (an empty frame for None), or None when that partition is missing or
    was written before a column the state now keeps (``Table.added_later``: null there)."""
    if as_of is None:
        return spark.createDataFrame([], table.schema)
    if not lake.exists(spark, args.lake, table):
        return None
    rows = lake.read(spark, args.lake, table).where(F.col("as_of_date") == F.lit(as_of))
    if any(c not in rows.columns for c in table.added_later):
        return None
    first = rows.select(F.lit(True), *[F.col(c).isNotNull() for c in table.added_later]).first()
    return rows if first is not None and all(first) else None


@dataclass(frozen=True)
class _Plan:
    """What one as_of_date's build reads and rebuilds (full: base is None, every event up to as_of unseen)."""
    as_of: dt.date
    mode: str                            # "full" | "incremental"
    base: dict[str, Any] | None          # the features/builds row of the base build B
    events: DataFrame                    # bronze/events at events_version
    events_version: int
    items: DataFrame
    items_version: int | None
    previous: dict[str, DataFrame]       # B's state rows per state table (empty frames for a full build)
    unseen: DataFrame                    # the events B had not seen, up to as_of
    rebuilt: list[dt.date]               # daily partitions to (re)build
    late: list[dt.date]                  # of those, dates <= B that got late events
    where: str | None                    # SQL condition selecting the rebuilt daily partitions
    sequences: DataFrame                 # features/user_sequences rows of as_of
    ingested_through: dt.datetime | None # the watermark the next build starts from

    @property
    def base_date(self) -> dt.date | None:
        return self.base["as_of_date"] if self.base else None


def build_one(spark: SparkSession, args: BuildFeaturesArgs, as_of: dt.date, full_refresh: bool) -> dict[str, Any]:
    """Build the three feature tables for one as_of_date; returns this date's summary."""
    plan = _plan(spark, args, as_of, full_refresh)
    outputs, daily_versions, rows = _write_tables(spark, args, plan)
    build = spark.createDataFrame([{
        "as_of_date": as_of, "run_id": args.run_id, "mode": plan.mode, "base_as_of_date": plan.base_date,
        "events_version": plan.events_version, "ingested_through": plan.ingested_through,
        "rebuilt_dates": plan.rebuilt, "late_dates": plan.late,
        "built_at": dt.datetime.now(dt.timezone.utc).replace(tzinfo=None),
    }], FEATURE_BUILDS.schema)
    outputs[FEATURE_BUILDS.name] = lake.append(spark, args.lake, FEATURE_BUILDS, build)
    return {
        "as_of_date": as_of.isoformat(), "mode": plan.mode,
        "base_as_of_date": plan.base_date.isoformat() if plan.base else None,
        "daily_partitions_rebuilt": len(plan.rebuilt), "late_dates": [d.isoformat() for d in plan.late],
        "rows": rows,
        "inputs": {EVENTS.name: plan.events_version, ITEMS.name: plan.items_version, **daily_versions},
        "outputs": outputs,
    }


def _plan(spark: SparkSession, args: BuildFeaturesArgs, as_of: dt.date, full_refresh: bool) -> _Plan:
    """The base build (none for a full one, or when its state cannot be rolled forward) and the events
    and daily partitions this build covers."""
    events_version = lake.version(spark, args.lake, EVENTS)
    events = lake.read(spark, args.lake, EVENTS, version=events_version)
    items, items_version = _items(spark, args)
    base = None if full_refresh else _latest_build_before(spark, args, as_of)
    states = (USER_STATE, ITEM_STATE)
    previous = {t.name: _state_of(spark, args, t, base["as_of_date"] if base else None) for t in states}
    if any(p is None for p in previous.values()):   # a base built before the state (or its newest column)
        base = None
        previous = {t.name: _state_of(spark, args, t, None) for t in states}
    n = args.config.features.sequence_length
    changes = (_full_changes(events, as_of, n) if base is None
               else _incremental_changes(spark, args, events, base, as_of, n))
    return _Plan(as_of=as_of, mode="full" if base is None else "incremental", base=base, events=events,
                 events_version=events_version, items=items, items_version=items_version, previous=previous,
                 **changes)


def _full_changes(events: DataFrame, as_of: dt.date, n: int) -> dict[str, Any]:
    """Every event up to as_of is unseen; every daily partition up to as_of is rebuilt."""
    unseen = events.where(F.col("event_date") <= F.lit(as_of))
    return {"unseen": unseen, "rebuilt": sorted(r[0] for r in unseen.select("event_date").distinct().collect()),
            "late": [], "where": f"event_date <= '{as_of.isoformat()}'", "sequences": sequences_full(unseen, as_of, n),
            "ingested_through": events.agg(F.max("ingested_at")).first()[0]}


def _incremental_changes(spark: SparkSession, args: BuildFeaturesArgs, events: DataFrame, base: dict[str, Any],
                         as_of: dt.date, n: int) -> dict[str, Any]:
    """The events dated in (B, as_of] and the late ones (dated <= B, ingested after B's watermark)."""
    b, watermark = base["as_of_date"], base["ingested_through"]
    fresh = events if watermark is None else events.where(F.col("ingested_at") > F.lit(watermark))
    late = sorted(r[0] for r in fresh.where(F.col("event_date") <= F.lit(b)).select("event_date").distinct().collect())
    after_base = events.where((F.col("event_date") > F.lit(b)) & (F.col("event_date") <= F.lit(as_of)))
    rebuilt = sorted(set(late) | {r[0] for r in after_base.select("event_date").distinct().collect()})
    previous_sequences = lake.read(spark, args.lake, USER_SEQUENCES).where(F.col("as_of_date") == F.lit(b))
    unseen = after_base.unionByName(fresh.where(F.col("event_date") <= F.lit(b)))
    newest = fresh.agg(F.max("ingested_at")).first()[0]
    return {"unseen": unseen, "rebuilt": rebuilt, "late": late,
            "where": _dates_sql("event_date", rebuilt) if rebuilt else None,
            "sequences": sequences_incremental(previous_sequences, unseen, as_of, n),
            "ingested_through": max((w for w in (watermark, newest) if w is not None), default=None)}


def _write_tables(spark: SparkSession, args: BuildFeaturesArgs,
                  plan: _Plan) -> tuple[dict[str, Any], dict[str, int], dict[str, int]]:
    """Run the three chains (user daily -> state -> features, the same for items, sequences); returns
    (versions written, daily versions read, rows per feature table)."""
    features, as_of, k = args.config.features, plan.as_of, args.config.features.hll_lg_config_k

    def user_chain():
        return _entity(spark, args, plan, USER_DAILY, USER_STATE, USER_FEATURES,
                       lambda e: daily_layer.user_daily(e, plan.items, k), state.user_state,
                       lambda st, d: user_features(st, d, as_of, features.cold_start_min_events))

    def item_chain():
        return _entity(spark, args, plan, ITEM_DAILY, ITEM_STATE, ITEM_FEATURES,
                       lambda e: daily_layer.item_daily(e, k), state.item_state,
                       lambda st, d: item_features(st, d, plan.items, as_of, features.conversion_prior_purchases,
                                                   features.conversion_prior_views))

    def sequence_chain():
        version, rows = _write_counted(spark, args, USER_SEQUENCES, plan.sequences, as_of)
        return {USER_SEQUENCES.name: version}, None, rows

    # The three chains touch different tables: run as concurrent Spark jobs, so one chain's Delta log
    # reads, commits and single-task stages overlap another's work (docs/features.md). An error in any
    # chain fails the build before features/builds records it.
    with ThreadPoolExecutor(3) as pool:
        futures = [pool.submit(chain) for chain in (user_chain, item_chain, sequence_chain)]
        (user_out, user_daily_v, user_rows), (item_out, item_daily_v, item_rows), (seq_out, _, seq_rows) = \
            [f.result() for f in futures]
    return ({**user_out, **item_out, **seq_out}, {USER_DAILY.name: user_daily_v, ITEM_DAILY.name: item_daily_v},
            {USER_FEATURES.name: user_rows, ITEM_FEATURES.name: item_rows, USER_SEQUENCES.name: seq_rows})


def _entity(spark: SparkSession, args: BuildFeaturesArgs, plan: _Plan, daily_table: Table, state_table: Table,
            features_table: Table, make_daily, make_state, make_features) -> tuple[dict[str, int], int, int]:
    """One entity's chain (user or item): its daily partitions, its state, its feature table.
    Returns (versions written, the daily table's version read, feature rows)."""
    written: dict[str, int] = {}
    if plan.rebuilt:
        rebuilt_events = plan.events.where(F.col("event_date").isin(plan.rebuilt))
        written[daily_table.name] = lake.replace_where(spark, args.lake, daily_table, make_daily(rebuilt_events),
                                                       plan.where)
    lake.ensure(spark, args.lake, daily_table)
    daily_version = lake.version(spark, args.lake, daily_table)
    daily = lake.read(spark, args.lake, daily_table, version=daily_version)
    if plan.late:    # the rebuilt partitions also hold events the base had seen: aggregate the unseen ones alone
        unseen_daily = make_daily(plan.unseen)
    else:            # every event of the rebuilt partitions is unseen: read them back instead of re-aggregating
        unseen_daily = daily.where(F.col("event_date").isin(plan.rebuilt)) if plan.rebuilt else daily.limit(0)
    leaving = (daily.where(F.col("event_date").isin(state.leaving_dates(plan.base_date, plan.as_of)))
               if plan.base else None)
    rolled = make_state(plan.previous[state_table.name], unseen_daily, leaving, plan.as_of, plan.base_date)
    written[state_table.name] = lake.replace_partition(spark, args.lake, state_table, rolled, plan.as_of)
    rolled = lake.read(spark, args.lake, state_table, version=written[state_table.name])
    written[features_table.name], rows = _write_counted(spark, args, features_table, make_features(rolled, daily),
                                                        plan.as_of)
    return written, daily_version, rows


def _write_counted(spark: SparkSession, args: BuildFeaturesArgs, table: Table, df: DataFrame,
                   as_of: dt.date) -> tuple[int, int]:
    """Replace ``table``'s as_of partition with ``df``; returns (version written, rows in the partition)."""
    version = lake.replace_partition(spark, args.lake, table, df, as_of)
    rows = lake.read(spark, args.lake, table, version=version).where(F.col("as_of_date") == F.lit(as_of)).count()
    return version, rows


def run(spark: SparkSession, args: BuildFeaturesArgs) -> dict[str, Any]:
    dates = args.as_of_dates()
    if not lake.exists(spark, args.lake, EVENTS):
        raise runtime.UsageError(f"no bronze/events table under {args.lake}: run `warmstart ingest` first")
    per_date = []
    with Progress("feature builds", len(dates), "days", quiet=len(dates) == 1) as progress:   # one: Spark's lines
        for i, d in enumerate(dates):
            per_date.append(build_one(spark, args, d, full_refresh=args.full_refresh and i == 0))
            progress.update(1, as_of=d.isoformat(), mode=per_date[-1]["mode"])
    last = per_date[-1]
    summary = {
        "as_of_dates": [p["as_of_date"] for p in per_date],
        "modes": [p["mode"] for p in per_date],
        "mode": last["mode"],
        "base_as_of_date": last["base_as_of_date"],
        "daily_partitions_rebuilt": sum(p["daily_partitions_rebuilt"] for p in per_date),
        "late_dates": sorted({d for p in per_date for d in p["late_dates"]}),
        **{f"rows_{t.split('/')[-1]}": c for t, c in last["rows"].items()},
    }
    # One date: the versions read; a range: the versions read per date, in date order.
    inputs = last["inputs"] if len(per_date) == 1 else {
        t: [p["inputs"][t] for p in per_date] for t in last["inputs"]}
    outputs = {t: v for p in per_date for t, v in p["outputs"].items()}  # the last version written
    summary["lineage"] = runtime.record_lineage(args, run_date=dates[-1], inputs=inputs, outputs=outputs,
                                                summary=summary)
    return summary


def ensure(spark: SparkSession, args: runtime.JobArgs, as_of: dt.date) -> bool:
    """Build the features as of ``as_of`` when the lake has no ``features/user_sequences`` partition for
    it (the backtest's and the ranker's past nights); True when it built them."""
    if lake.exists(spark, args.lake, USER_SEQUENCES) and (
            lake.read(spark, args.lake, USER_SEQUENCES).where(F.col("as_of_date") == F.lit(as_of)).limit(1).count()):
        return False
    log.info("no features as of %s: building them", as_of)
    run(spark, BuildFeaturesArgs(job="features", lake=args.lake, config=args.config,
                                 run_id=runtime.new_run_id("features", as_of), run_date=as_of))
    return True


def parser():
    p = runtime.job_parser("features", "build user / item features and user sequences as of a date")
    p.add_argument("--run-date", type=runtime.parse_date, help="as_of_date D: events before D + 1 day")
    p.add_argument("--full-refresh", action="store_true",
                   help="recompute the daily layer and sequences from bronze/events instead of incrementally")
    p.add_argument("--from", dest="from_date", type=runtime.parse_date, help="first as_of_date of a backfill")
    p.add_argument("--to", dest="to_date", type=runtime.parse_date, help="last as_of_date of a backfill")
    return p


def main(argv: list[str] | None = None) -> int:
    return runtime.run_job("features", parser(), BuildFeaturesArgs, run, argv)


if __name__ == "__main__":
    sys.exit(main())
