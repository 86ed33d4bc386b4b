"""Benchmark of the feature build (jobs/build_features.py), in one run on one generated event history:

1. full build as of the last day D (``--full-refresh``: daily layer, rolling state, features, sequences
   from all events),
2. nightly incremental build for D on top of the build for D - 1 (one new day plus the daily layer),
3. DuckDB, the single-machine peer a user might pick instead, computing and writing to Parquet the same
   tables as the full build from the same files (bronze/events' data files and the items' Parquet):
   ``features/user_daily``, ``features/item_daily``, ``features/user_state``, ``features/item_state``,
   ``features/user_features``, ``features/item_features``, ``features/user_sequences``, with the same
   rows and column names, each table's columns taken from its declaration in features/tables.py and
   each step fed by the one before (daily rows -> state -> features), as Spark's chain is.

Where Spark keeps DataSketches HLL sketches (``items_sketch``, ``users_sketch`` in the daily and state
tables), DuckDB keeps the list of distinct ids under the same column name: DuckDB has no mergeable
sketch type (``approx_count_distinct`` gives a number, not a state that can be unioned later), and the
list is the exact form of the same work: built per key and day, unioned across days into the
all-history state, unioned over each window for the windowed distinct counts. Its counts are exact
where Spark's are estimates within the sketch's error (1.6% standard error at lg_config_k=12). A list
grows with its distinct ids where a sketch stays bounded (a popular item's all-history list holds
every user who ever touched it), yet on this generator's data DuckDB's tables come out smaller on disk
than Spark's. The other values are computed the way Spark computes them, to the
last bit (tests/test_bench_features.py compares the two sides). Not reproduced: Delta's transaction log,
the ``features/builds`` row and lineage records; DuckDB reads the events' Parquet files by name, right
for this insert-only table (a table with deleted files would need its Delta log).

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

from features.contract import cutoff  # noqa: E402
from features.state import COUNTS, FINITE_WINDOWS  # noqa: E402
from features.tables import (EVENT_COUNT_NAMES, FEATURE_WINDOWS, ITEM_DAILY, ITEM_FEATURES, ITEM_STATE,  # noqa: E402
                             MONEY, USER_DAILY, USER_FEATURES, USER_SEQUENCES, USER_STATE, Table)


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


# The DuckDB peer. Each statement is built from the tables' declarations (features/tables.py: columns in
# order, FEATURE_WINDOWS, EVENT_COUNT_NAMES), so a column added there fails here until DuckDB computes it.

def _date(d: dt.date) -> str:
    return f"DATE '{d.isoformat()}'"


def _money() -> str:
    return f"DECIMAL({MONEY.precision},{MONEY.scale})"


def _select(table: Table, exprs: dict[str, str]) -> str:
    """``table``'s declared columns in order, each computed by its expression in ``exprs``."""
    missing = [c for c in table.columns if c not in exprs]
    if missing:
        raise KeyError(f"{table.name}: no DuckDB expression for {missing}")
    return ",\n  ".join(f"{exprs[c]} AS {c}" for c in table.columns)


def _in_window(days: int | None, as_of: dt.date, column: str = "event_date") -> str:
    """Within the window of ``days`` ending at as_of (inclusive); None: all history up to as_of."""
    return "TRUE" if days is None else f"{column} > {_date(as_of - dt.timedelta(days=days))}"


def _decimal_mean(total: str, count: str) -> str:
    """``total / count`` as Spark divides a decimal(38, 4) by a long: a decimal(38, 6) rounded half up,
    then a double (null when count is 0). DuckDB divides decimals in double, which differs from it in
    the sixth decimal place, so this divides the exact number of 1e-4 units in integers."""
    units = f"CAST({total} * 10000 AS HUGEINT)"
    rounded = f"sign({units}) * ((abs({units}) * 200 + {count}) // (2 * {count}))"
    return f"CASE WHEN {count} > 0 THEN CAST({rounded} AS DOUBLE) / 1e6 END"


def _type_counts() -> dict[str, str]:
    counts = {f"count_{name}": f"count(*) FILTER (WHERE event_type = '{t}')" for t, name in EVENT_COUNT_NAMES.items()}
    return {**counts, "count_events": "count(*)"}


def _daily_sql() -> list[tuple[Table, str]]:
    """features/user_daily and features/item_daily from the ``events`` view (features/daily.py). Where
    Spark keeps an HLL sketch of the day's items (users, for items), this keeps the list of the day's
    distinct ids: DuckDB has no mergeable sketch type, and the list merges across days as the sketch does."""
    price = "CAST(price AS DECIMAL(18,4))"
    amount = f"{price} * CAST(abs(coalesce(quantity, 1)) AS DECIMAL(18,0))"
    purchase = "FILTER (WHERE event_type = 'purchase')"
    user = {"user_id": "user_id", "event_date": "event_date", **_type_counts(),
            "spend": f"CAST(coalesce(sum(CASE event_type WHEN 'purchase' THEN {amount} "
                     f"WHEN 'return' THEN -{amount} END), 0) AS {_money()})",
            "purchase_price_sum": f"CAST(coalesce(sum({price}) {purchase}, 0) AS {_money()})",
            "purchase_price_count": f"count(price) {purchase}",
            "last_event_at": "max(event_ts)", "last_purchase_at": f"max(event_ts) {purchase}",
            "items_sketch": "list(DISTINCT item_id)",
            "category_counts": "coalesce(CAST(histogram(category) AS MAP(VARCHAR, BIGINT)), MAP {})",
            "ingested_through": "max(ingested_at)"}
    item = {"item_id": "item_id", "event_date": "event_date", **_type_counts(),
            "users_sketch": "list(DISTINCT user_id)",
            "price_sum": f"CAST(coalesce(sum({price}), 0) AS {_money()})", "price_count": "count(price)",
            "price_min": "min(price)", "price_max": "max(price)", "first_event_at": "min(event_ts)",
            "ingested_through": "max(ingested_at)"}
    categorised = ("SELECT e.*, i.category FROM events e "
                   "LEFT JOIN (SELECT item_id, category FROM items) i USING (item_id)")
    return [(USER_DAILY, f"SELECT {_select(USER_DAILY, user)} FROM ({categorised}) GROUP BY user_id, event_date"),
            (ITEM_DAILY, f"SELECT {_select(ITEM_DAILY, item)} FROM events GROUP BY item_id, event_date")]


def _window_sums(stems: list[str], as_of: dt.date, cast: str = "BIGINT") -> dict[str, str]:
    """``<stem>_<window>`` summed over the window's daily rows, cast back to the daily column's type
    (DuckDB sums BIGINTs into HUGEINTs, which Parquet would store as doubles)."""
    return {f"{stem}_{w}": f"CAST(coalesce(sum({stem}) FILTER (WHERE {_in_window(days, as_of)}), 0) AS {cast})"
            for w, days in FEATURE_WINDOWS.items() for stem in stems}


def _state_sql(as_of: dt.date) -> list[tuple[Table, str]]:
    """features/user_state and features/item_state of as_of, summed from every daily row, as Spark's full
    build does (features/state.py with an empty previous state). The all-history sketches become the
    union of the days' distinct-id lists."""
    user = {**_window_sums(COUNTS, as_of), **_window_sums(["spend"], as_of, _money()),
            "purchase_price_sum": f"CAST(sum(purchase_price_sum) AS {_money()})",
            "purchase_price_count": "CAST(sum(purchase_price_count) AS BIGINT)",
            "last_event_at": "max(last_event_at)", "last_purchase_at": "max(last_purchase_at)",
            "items_sketch": "list_distinct(flatten(list(items_sketch)))"}
    item = {**_window_sums(COUNTS, as_of),
            "price_sum": f"CAST(sum(price_sum) AS {_money()})", "price_count": "CAST(sum(price_count) AS BIGINT)",
            "price_min": "min(price_min)", "price_max": "max(price_max)", "first_event_at": "min(first_event_at)",
            "users_sketch": "list_distinct(flatten(list(users_sketch)))"}

    def per_key(key: str, daily: str, exprs: dict[str, str]) -> str:
        return f"SELECT {key}, {', '.join(f'{e} AS {c}' for c, e in exprs.items())} FROM {daily} GROUP BY {key}"

    # each category's events (all history) and last event date, from the days' category counts
    categories = """SELECT user_id, map_from_entries(list((category, n))) AS category_counts,
                           map_from_entries(list((category, last_date))) AS category_last_dates
    FROM (SELECT user_id, c.key AS category, sum(c.value) AS n, max(event_date) AS last_date
          FROM (SELECT user_id, event_date, unnest(map_entries(category_counts)) AS c FROM user_daily)
          GROUP BY ALL)
    GROUP BY user_id"""
    user_columns = {c: c for c in USER_STATE.columns} | {
        "as_of_date": _date(as_of), "category_counts": "coalesce(category_counts, MAP {})",
        "category_last_dates": "coalesce(category_last_dates, MAP {})"}
    item_columns = {c: c for c in ITEM_STATE.columns} | {"as_of_date": _date(as_of)}
    return [(USER_STATE, f"""WITH sums AS ({per_key('user_id', 'user_daily', user)}), categories AS ({categories})
SELECT {_select(USER_STATE, user_columns)} FROM sums LEFT JOIN categories USING (user_id)"""),
            (ITEM_STATE, f"SELECT {_select(ITEM_STATE, item_columns)} FROM ({per_key('item_id', 'item_daily', item)})")]


def _windowed_distinct(daily: str, key: str, ids: str, stem: str, as_of: dt.date) -> str:
    """Per key with daily rows in the longest finite window: ``<stem>_<window>`` for every finite
    window, the exact distinct ids of the days' lists in it (each id counted by its last day), where
    Spark unions the days' sketches (features.state.windowed_distinct)."""
    longest = dt.timedelta(days=max(FINITE_WINDOWS.values()))
    counts = ", ".join(f"count(*) FILTER (WHERE {_in_window(days, as_of, 'last_date')}) AS {stem}_{w}"
                       for w, days in FINITE_WINDOWS.items())
    return f"""SELECT {key}, {counts} FROM (
    SELECT {key}, id, max(event_date) AS last_date
    FROM (SELECT {key}, event_date, unnest({ids}) AS id FROM {daily}
          WHERE event_date > {_date(as_of - longest)} AND event_date <= {_date(as_of)})
    GROUP BY ALL) GROUP BY {key}"""


def _days_since(as_of: dt.date, ts: str) -> str:
    return f"CAST({_date(as_of)} - CAST({ts} AS DATE) AS INTEGER)"


def _user_features_sql(as_of: dt.date, cold_start_min_events: int) -> str:
    """features/user_features of as_of from user_state and user_daily (features/user_features.py)."""
    recent_categories = ", ".join(f"count(*) FILTER (WHERE {_in_window(days, as_of, 'last_date')}) "
                                  f"AS distinct_categories_{w}" for w, days in FINITE_WINDOWS.items())
    columns = {c: c for c in USER_FEATURES.columns} | {
        "days_since_last_event": _days_since(as_of, "last_event_at"),
        "days_since_last_purchase": _days_since(as_of, "last_purchase_at"),
        **{f"spend_{w}": f"CAST(spend_{w} AS DOUBLE)" for w in FEATURE_WINDOWS},
        **{f"{stem}_{w}": f"coalesce({stem}_{w}, 0)" for w in FINITE_WINDOWS
           for stem in ("distinct_items", "distinct_categories")},
        "distinct_items_all": "len(items_sketch)", "distinct_categories_all": "cardinality(category_counts)",
        "avg_purchase_price": _decimal_mean("purchase_price_sum", "purchase_price_count"),
        "is_cold_start": f"count_events_all < {cold_start_min_events}"}
    windowed = _windowed_distinct("user_daily", "user_id", "items_sketch", "distinct_items", as_of)
    return f"""WITH windowed AS ({windowed}),
top AS (SELECT user_id, first(c.key ORDER BY c.value DESC, c.key) AS top_category,
               max(c.value) / sum(c.value) AS top_category_share
        FROM (SELECT user_id, unnest(map_entries(category_counts)) AS c FROM user_state) GROUP BY user_id),
recent_categories AS (SELECT user_id, {recent_categories}
        FROM (SELECT user_id, unnest(map_values(category_last_dates)) AS last_date FROM user_state) GROUP BY user_id)
SELECT {_select(USER_FEATURES, columns)}
FROM user_state LEFT JOIN windowed USING (user_id) LEFT JOIN top USING (user_id)
     LEFT JOIN recent_categories USING (user_id)"""


def _item_features_sql(as_of: dt.date, prior_purchases: float, prior_views: float) -> str:
    """features/item_features of as_of from item_state, item_daily and the catalogue
    (features/item_features.py): every item with events, and every catalogue item listed by then."""
    # catalogue-only items count 0 (distinct_users_all comes from the state's list, below)
    filled = [c for c in ITEM_FEATURES.columns if c.startswith(("count_", "distinct_users_"))
              and c != "distinct_users_all"]
    a, b = float(prior_purchases), float(prior_views)
    week, month = (float(FEATURE_WINDOWS[w]) for w in ("7d", "30d"))
    columns = {c: c for c in ITEM_FEATURES.columns} | {
        "as_of_date": _date(as_of),
        "conversion_rate_30d": f"(count_purchases_30d + CAST({a} AS DOUBLE)) "
                               f"/ (greatest(count_views_30d, count_purchases_30d) + CAST({a + b} AS DOUBLE))",
        "return_rate_all": "CASE WHEN count_purchases_all > 0 THEN count_returns_all / count_purchases_all END",
        "popularity_rank_30d": "CAST(row_number() OVER (ORDER BY count_purchases_30d DESC, count_events_30d DESC, "
                               "item_id) AS INTEGER)",
        "trend_7d_vs_30d": f"CASE WHEN count_events_30d > 0 THEN (count_events_7d / CAST({week} AS DOUBLE)) "
                           f"/ (count_events_30d / CAST({month} AS DOUBLE)) END",
        "distinct_users_all": "coalesce(len(users_sketch), 0)",
        "price_mean": _decimal_mean("price_sum", "price_count"),
        "first_seen_at": "first_event_at", "days_since_first_seen": _days_since(as_of, "first_event_at")}
    listed_before = cutoff(as_of).isoformat(sep=" ")
    windowed = _windowed_distinct("item_daily", "item_id", "users_sketch", "distinct_users", as_of)
    return f"""WITH windowed AS ({windowed}),
catalogue AS (SELECT item_id, title, description, category, brand, price AS catalog_price, updated_at FROM items),
ids AS (SELECT item_id FROM item_state
        UNION SELECT item_id FROM catalogue WHERE updated_at < TIMESTAMP '{listed_before}'),
joined AS (SELECT * REPLACE ({', '.join(f'coalesce({c}, 0) AS {c}' for c in filled)})
           FROM ids LEFT JOIN item_state USING (item_id) LEFT JOIN windowed USING (item_id)
                LEFT JOIN catalogue USING (item_id))
SELECT {_select(ITEM_FEATURES, columns)} FROM joined"""


def _sequences_sql(as_of: dt.date, n: int) -> str:
    """features/user_sequences of as_of: the last n events of each user, oldest first (features/sequences.py)."""
    order = "event_ts, item_id, event_type"
    return f"""SELECT user_id, {_date(as_of)} AS as_of_date, list(item_id ORDER BY {order}) AS item_ids,
       list(event_type ORDER BY {order}) AS event_types, list(event_ts ORDER BY {order}) AS event_ts,
       CAST(count(*) AS INTEGER) AS sequence_length
FROM (SELECT user_id, item_id, event_type, event_ts,
             row_number() OVER (PARTITION BY user_id ORDER BY event_ts DESC, item_id DESC, event_type DESC) AS r
      FROM events) WHERE r <= {n} GROUP BY user_id"""


DUCKDB_TABLES = (USER_DAILY, ITEM_DAILY, USER_STATE, ITEM_STATE, USER_FEATURES, ITEM_FEATURES, USER_SEQUENCES)


def duckdb_statements(events_glob: str, items_path: str, as_of: dt.date, out: str, features) -> list[str]:
    """The DuckDB build of every table of a Spark full build as of ``as_of``, in order: each daily and
    state table is kept as a temporary table (the next step reads it) and written to Parquet under
    ``out`` in the lake's layout (``<out>/features/user_daily/event_date=.../*.parquet``)."""
    def write(table: Table, query: str) -> str:
        return (f"COPY ({query}) TO '{out}/{table.name}' "
                f"(FORMAT parquet, PARTITION_BY ({table.partition_by}), OVERWRITE)")

    def keep(table: Table, query: str) -> list[str]:
        temp = table.name.split("/")[-1]
        return [f"CREATE OR REPLACE TEMP TABLE {temp} AS {query}", write(table, f"SELECT * FROM {temp}")]

    steps = [f"""CREATE OR REPLACE TEMP VIEW events AS
SELECT user_id, item_id, event_type, event_ts, event_date, quantity, price, ingested_at
FROM read_parquet('{events_glob}', hive_partitioning = true) WHERE event_date <= {_date(as_of)}""",
             f"CREATE OR REPLACE TEMP VIEW items AS SELECT * FROM read_parquet('{items_path}')"]
    for table, query in _daily_sql() + _state_sql(as_of):
        steps += keep(table, query)
    return steps + [write(USER_FEATURES, _user_features_sql(as_of, features.cold_start_min_events)),
                    write(ITEM_FEATURES, _item_features_sql(as_of, features.conversion_prior_purchases,
                                                            features.conversion_prior_views)),
                    write(USER_SEQUENCES, _sequences_sql(as_of, features.sequence_length))]


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


def timed_duckdb(lake: str, items_path: str, as_of: dt.date, out: str, threads: int,
                 features) -> tuple[float, dict[str, int]]:
    """Run :func:`duckdb_statements` (``features``: jobs.config.FeaturesConfig); returns the seconds it
    took and the rows written per table (counted after the clock stops)."""
    import duckdb

    for table in DUCKDB_TABLES:     # DuckDB's COPY makes the table's own folder, not its parents
        (Path(out) / table.name).parent.mkdir(parents=True, exist_ok=True)
    con = duckdb.connect()
    con.execute(f"SET threads = {threads}")
    con.execute("SET memory_limit = '4GB'")
    con.execute("SET TimeZone = 'UTC'")      # dates of timestamps in UTC, as Spark's session
    statements = duckdb_statements(f"{lake}/bronze/events/event_date=*/*.parquet", items_path, as_of, out, features)
    started = time.perf_counter()
    for statement in statements:
        con.execute(statement)
    elapsed = time.perf_counter() - started
    rows = {f"rows_{t.name.split('/')[-1]}": con.execute(
        f"SELECT count(*) FROM read_parquet('{out}/{t.name}/*/*.parquet')").fetchone()[0] for t in DUCKDB_TABLES}
    con.close()
    return elapsed, rows


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
    load_start = os.getloadavg()[0]
    figures = {"generate_s": time.perf_counter() - t0, **_spark_builds(config, work, last)}
    load_before_duckdb = os.getloadavg()[0]
    duckdb_s, duckdb_rows = timed_duckdb(figures.pop("lake"), str(work / "generated" / "items" / "*.parquet"),
                                         last, str(work / "duckdb"), ns.threads, config.features)
    result = {
        "events": figures.pop("events"), "users": users, "items": items, "days": ns.days,
        "as_of_date": last.isoformat(), "generator": "features.synthetic.generate (sessions, Zipf item popularity, "
                                                     "taste categories)",
        "threads": ns.threads, "spark_driver_memory": ns.driver_memory,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores visible, load average (1 min) "
                   f"{load_start:.1f} before Spark, {load_before_duckdb:.1f} before DuckDB, "
                   f"{os.getloadavg()[0]:.1f} at end",
        **{k: round(v, 1) if isinstance(v, float) else v for k, v in figures.items()}, "duckdb_s": round(duckdb_s, 1),
        "duckdb_rows": duckdb_rows,
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
| full build (`--full-refresh`: daily layer, rolling state, features, sequences) | {r['full_build_s']} |
| nightly incremental build for one day on the {r['days']}-day history | {r['incremental_build_s']} |
| DuckDB, the same tables as the full build, from the same Parquet, written to Parquet | {r['duckdb_s']} |

| ratio | value | aim |
|---|---|---|
| incremental / full | {r['incremental_over_full']} | <= 0.10 ({verdict(r['incremental_over_full'] <= 0.10)}) |
| full / DuckDB (like for like) | {r['full_over_duckdb']} | <= 3 ({verdict(r['full_over_duckdb'] <= 3)}) |

The DuckDB side writes every table the full build writes (`features/user_daily`, `item_daily`,
`user_state`, `item_state`, `user_features`, `item_features`, `user_sequences`) with the same rows and
columns, each from the one before it as in Spark's chain; where Spark keeps HLL sketches it keeps the
exact lists of distinct ids (bench/features.py's docstring says why; tests/test_bench_features.py checks
the two sides agree).

Rows written as of {r['as_of_date']}: Spark {', '.join(f'{k[5:]} {v:,}' for k, v in r['rows'].items())};
DuckDB {', '.join(f'{k[5:]} {v:,}' for k, v in list(r['duckdb_rows'].items())[:4])},
{', '.join(f'{k[5:]} {v:,}' for k, v in list(r['duckdb_rows'].items())[4:])}.
Also measured: generating {r['generate_s']} s, loading bronze {r['load_bronze_s']} s, full build for the previous
day {r['full_build_previous_day_s']} s.
"""
    (RESULTS / "features.md").write_text(md)


if __name__ == "__main__":
    sys.exit(main())
