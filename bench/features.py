"""Benchmark of the feature build (jobs/build_features.py), in one run on one generated event history:

1. full build as of the last day D (``--full-refresh``: daily layer + features + sequences from all events),
2. nightly incremental build for D on top of the build for D - 1 (one new day plus the daily layer),
3. the same aggregations done by DuckDB straight from the same Parquet files (bronze/events' data files),
   as the single-machine peer a user might pick instead: windowed counts/spend, approximate distinct
   counts (DuckDB's HLL), last-event times, top category, item statistics and popularity, last-N sequences.

Reports the three wall times and the ratios incremental/full and full/DuckDB, to
bench/results/features.md and bench/results/features.json.

    .venv/bin/python bench/features.py --events 10000000            # the issue's target size
    .venv/bin/python bench/features.py --events 1000000 --threads 2  # a quick run on a 2-core machine

Events come from features/synthetic.generate (sessions, Zipf item popularity, taste categories).
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
RESULTS = REPO / "bench" / "results"


def load_bronze(spark, lake: str, source: Path, last_day: dt.date, first_day: dt.date | None = None) -> int:
    """Write the generated events into bronze/events (Delta, partitioned by event_date) the way ingest
    does, in two commits: all days before the last one ingested earlier, the last day ingested at night.
    ``first_day``: leave out the events before it (a shorter history of the same customers)."""
    from pyspark.sql import functions as F

    from features.tables import EVENTS, ITEMS
    from jobs import lake as lake_io

    events = spark.read.parquet(str(source / "events"))
    if first_day is not None:
        events = events.where(F.to_date("event_ts") >= F.lit(first_day))
    bronze = (events
              .withColumn("event_date", F.to_date("event_ts"))
              .withColumn("event_id", F.sha2(F.concat_ws("|", F.monotonically_increasing_id().cast("string"),
                                                         "user_id", "item_id", "event_ts"), 256))
              .withColumn("source", F.lit("bench")).withColumn("run_id", F.lit("bench")))
    for batch, ingested in ((bronze.where(F.col("event_date") < F.lit(last_day)), "2000-01-01 00:00:00"),
                            (bronze.where(F.col("event_date") >= F.lit(last_day)), "2000-01-02 00:00:00")):
        lake_io.append(spark, lake, EVENTS, batch.withColumn("ingested_at", F.lit(ingested).cast("timestamp")))
    items = spark.read.parquet(str(source / "items"))
    lake_io.append(spark, lake, ITEMS, items.select(*ITEMS.columns))
    return lake_io.read(spark, lake, EVENTS).count()


def timed_build(spark, lake: str, config, as_of: dt.date, full_refresh: bool) -> tuple[float, dict]:
    from jobs import build_features, runtime

    common = runtime.job_args("features", lake, config, run_date=as_of)
    args = build_features.BuildFeaturesArgs(**{f: getattr(common, f) for f in
                                               ("job", "lake", "config", "run_id", "summary_json")},
                                            run_date=as_of, full_refresh=full_refresh)
    started = time.perf_counter()
    summary = build_features.run(spark, args)
    return time.perf_counter() - started, summary


DUCKDB_SQL = """
CREATE TEMP TABLE e AS
SELECT e.user_id, e.item_id, e.event_type, e.event_ts, e.event_date, e.quantity, e.price, i.category,
       CASE e.event_type WHEN 'purchase' THEN 1 WHEN 'return' THEN -1 ELSE 0 END
         * CAST(e.price AS DECIMAL(18,4)) * abs(coalesce(e.quantity, 1)) AS amount
FROM read_parquet('{events}', hive_partitioning = true) e
LEFT JOIN read_parquet('{items}') i USING (item_id)
WHERE e.event_ts < TIMESTAMP '{next_day}';

COPY (
  WITH per_user AS (
    SELECT user_id, {user_windows},
           max(event_ts) AS last_event_at,
           max(event_ts) FILTER (WHERE event_type = 'purchase') AS last_purchase_at,
           avg(price) FILTER (WHERE event_type = 'purchase') AS avg_purchase_price
    FROM e GROUP BY user_id),
  per_category AS (
    SELECT user_id, category, count(*) AS n, sum(count(*)) OVER (PARTITION BY user_id) AS total,
           row_number() OVER (PARTITION BY user_id ORDER BY count(*) DESC, category) AS r
    FROM e WHERE category IS NOT NULL GROUP BY user_id, category)
  SELECT p.*, c.category AS top_category, c.n / c.total AS top_category_share
  FROM per_user p LEFT JOIN per_category c ON c.user_id = p.user_id AND c.r = 1
) TO '{out}/user_features.parquet' (FORMAT parquet);

COPY (
  WITH per_item AS (
    SELECT item_id, {item_windows},
           min(price) AS price_min, max(price) AS price_max, avg(price) AS price_mean,
           min(event_ts) AS first_seen_at
    FROM e GROUP BY item_id)
  SELECT *, row_number() OVER (ORDER BY count_purchases_30d DESC, count_events_30d DESC, item_id) AS popularity_rank_30d
  FROM per_item
) TO '{out}/item_features.parquet' (FORMAT parquet);

COPY (
  SELECT user_id, list(item_id ORDER BY event_ts, item_id, event_type) AS item_ids,
         list(event_type ORDER BY event_ts, item_id, event_type) AS event_types,
         list(event_ts ORDER BY event_ts, item_id, event_type) AS event_ts, count(*) AS sequence_length
  FROM (SELECT user_id, item_id, event_type, event_ts,
               row_number() OVER (PARTITION BY user_id ORDER BY event_ts DESC, item_id DESC, event_type DESC) AS r
        FROM e) WHERE r <= {n} GROUP BY user_id
) TO '{out}/user_sequences.parquet' (FORMAT parquet);
"""


def duckdb_sql(events_glob: str, items_path: str, as_of: dt.date, out: str, n: int) -> str:
    from features.tables import EVENT_COUNT_NAMES, FEATURE_WINDOWS

    def since(days):
        return "TRUE" if days is None else f"event_date >= DATE '{(as_of - dt.timedelta(days=days - 1)).isoformat()}'"

    user, item = [], []
    for w, days in FEATURE_WINDOWS.items():
        counts = [f"count(*) FILTER (WHERE {since(days)} AND event_type = '{k}') AS count_{name}_{w}"
                  for k, name in EVENT_COUNT_NAMES.items()]
        counts.append(f"count(*) FILTER (WHERE {since(days)}) AS count_events_{w}")
        user += counts + [f"coalesce(sum(amount) FILTER (WHERE {since(days)}), 0) AS spend_{w}",
                          f"approx_count_distinct(item_id) FILTER (WHERE {since(days)}) AS distinct_items_{w}",
                          f"approx_count_distinct(category) FILTER (WHERE {since(days)}) AS distinct_categories_{w}"]
        item += counts + [f"approx_count_distinct(user_id) FILTER (WHERE {since(days)}) AS distinct_users_{w}"]
    return DUCKDB_SQL.format(events=events_glob, items=items_path, next_day=(as_of + dt.timedelta(days=1)).isoformat(),
                             user_windows=",\n           ".join(user), item_windows=",\n           ".join(item),
                             out=out, n=n)


def stop_jvm(spark) -> None:
    """Stop Spark and end its JVM before DuckDB is timed: a stopped session's JVM stays alive and busy
    for a while (GC, cleanup) and slows DuckDB on the same cores (docs/features.md, "Benchmark")."""
    from pyspark import SparkContext

    gateway = SparkContext._gateway
    spark.stop()
    if gateway is None:
        return
    proc = getattr(gateway, "proc", None)
    gateway.shutdown()
    if proc is not None:
        proc.stdin.close()          # the JVM exits when its launcher's stdin closes
        proc.wait(timeout=60)
    SparkContext._gateway = SparkContext._jvm = None


def timed_duckdb(lake: str, items_path: str, as_of: dt.date, out: str, threads: int, n: int) -> float:
    import duckdb

    Path(out).mkdir(parents=True, exist_ok=True)
    con = duckdb.connect()
    con.execute(f"SET threads = {threads}")
    con.execute("SET memory_limit = '4GB'")
    sql = duckdb_sql(f"{lake}/bronze/events/*/*.parquet", items_path, as_of, out, n)
    started = time.perf_counter()
    con.execute(sql)
    elapsed = time.perf_counter() - started
    con.close()
    return elapsed


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=10_000_000)
    parser.add_argument("--users", type=int, default=None, help="default: events / 100")
    parser.add_argument("--items", type=int, default=None, help="default: events / 500")
    parser.add_argument("--days", type=int, default=90)
    parser.add_argument("--threads", type=int, default=2, help="Spark local[N] and DuckDB threads")
    parser.add_argument("--driver-memory", default="2g")
    parser.add_argument("--workdir", default=None, help="default: a temporary folder, removed at the end")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    from features import synthetic
    from jobs import runtime

    ns = _parse_args(argv)
    users = ns.users or max(100, ns.events // 100)
    items = ns.items or max(50, ns.events // 500)
    start = dt.date(2024, 1, 1)
    last = start + dt.timedelta(days=ns.days - 1)
    work = Path(ns.workdir or tempfile.mkdtemp(prefix="bench-features-"))
    work.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    config = runtime.load_config(overrides={"spark.master": f"local[{ns.threads}]",
                                            "spark.driver_memory": ns.driver_memory,
                                            "spark.shuffle_partitions": max(4, ns.threads * 2),
                                            # Delta's default of 50 tasks to rebuild a snapshot is
                                            # cluster-sized; locally it is fixed overhead on every read.
                                            "spark.conf": {"spark.databricks.delta.snapshotPartitions": ns.threads}})
    t0 = time.perf_counter()
    synthetic.generate(str(work / "generated"), users=users, items=items, days=ns.days, start_date=start,
                       seed=ns.seed, events=ns.events)
    figures = {"generate_s": time.perf_counter() - t0, **_spark_builds(config, work, last)}
    duckdb_s = timed_duckdb(figures.pop("lake"), str(work / "generated" / "items" / "*.parquet"), last,
                            str(work / "duckdb"), ns.threads, config.features.sequence_length)
    result = {
        "events": figures.pop("events"), "users": users, "items": items, "days": ns.days,
        "as_of_date": last.isoformat(), "generator": "features.synthetic.generate (sessions, Zipf item popularity, "
                                                     "taste categories)",
        "threads": ns.threads, "spark_driver_memory": ns.driver_memory,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores visible, load average at end "
                   f"{os.getloadavg()[0]:.1f}",
        **{k: round(v, 1) if isinstance(v, float) else v for k, v in figures.items()}, "duckdb_s": round(duckdb_s, 1),
        "incremental_over_full": round(figures["incremental_build_s"] / figures["full_build_s"], 3),
        "full_over_duckdb": round(figures["full_build_s"] / duckdb_s, 2),
        "aims": {"incremental_over_full": "<= 0.10", "full_over_duckdb": "<= 3"},
    }
    write_results(result)
    if not ns.workdir:
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(result, indent=2))
    return 0


def _spark_builds(config, work: Path, last: dt.date) -> dict:
    """Load bronze, then time the nightly case (the build for D - 1 exists, a full one here; day D
    arrived later) and a full build for D, in seconds; ends Spark's JVM before DuckDB is timed."""
    from jobs import runtime

    spark = runtime.spark_session(config, app_name="bench-features")
    lake = str(work / "lake")
    t0 = time.perf_counter()
    n_events = load_bronze(spark, lake, work / "generated", last)
    load_s = time.perf_counter() - t0
    previous_s, _ = timed_build(spark, lake, config, last - dt.timedelta(days=1), full_refresh=True)
    incremental_s, incremental = timed_build(spark, lake, config, last, full_refresh=False)
    full_s, full = timed_build(spark, lake, config, last, full_refresh=True)
    stop_jvm(spark)
    return {"lake": lake, "events": n_events, "load_bronze_s": load_s, "full_build_s": full_s,
            "full_build_previous_day_s": previous_s, "incremental_build_s": incremental_s,
            "rows": {k: v for k, v in full.items() if k.startswith("rows_")},
            "incremental_daily_partitions_rebuilt": incremental["daily_partitions_rebuilt"]}


def write_results(r: dict) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "features.json").write_text(json.dumps(r, indent=2) + "\n")
    verdict = lambda ok: "meets the aim" if ok else "misses the aim"  # noqa: E731
    md = f"""# Feature build benchmark (bench/features.py)

{r['events']:,} generated events over {r['days']} days ({r['users']:,} users, {r['items']:,} items;
{r['generator']}), as of {r['as_of_date']}. Spark `local[{r['threads']}]` (driver {r['spark_driver_memory']})
with Delta; DuckDB with {r['threads']} threads on the same Parquet files. Machine: {r['machine']}.

| step | wall time (s) |
|---|---|
| full build (`--full-refresh`: daily layer, features, sequences) | {r['full_build_s']} |
| nightly incremental build for one day on the {r['days']}-day history | {r['incremental_build_s']} |
| DuckDB, the same aggregations from Parquet | {r['duckdb_s']} |

| ratio | value | aim |
|---|---|---|
| incremental / full | {r['incremental_over_full']} | <= 0.10 ({verdict(r['incremental_over_full'] <= 0.10)}) |
| full / DuckDB | {r['full_over_duckdb']} | <= 3 ({verdict(r['full_over_duckdb'] <= 3)}) |

Rows written as of {r['as_of_date']}: {', '.join(f'{k[5:]} {v:,}' for k, v in r['rows'].items())}.
Also measured: generating {r['generate_s']} s, loading bronze {r['load_bronze_s']} s, full build for the previous
day {r['full_build_previous_day_s']} s.
"""
    (RESULTS / "features.md").write_text(md)


if __name__ == "__main__":
    sys.exit(main())
