"""bench/features.py's DuckDB peer writes the same tables as Spark's full build: both sides run on one
small generated history (the bench's own functions: load_bronze, timed_build, timed_duckdb) and every
table is compared row for row: user_daily, item_daily, user_state, item_state, user_features,
item_features, user_sequences.

Same row keys and column names in every table. Every value is equal exactly (counts, decimal spend and
prices, times, maps, ranks, sequences, and the doubles, which DuckDB computes the way Spark does)
except the distinct counts that Spark estimates with HLL sketches: Spark's estimate must be within
three standard errors of the sketch (1.04 / sqrt(2^12) = 1.6% at lg_config_k=12) of DuckDB's exact
count, where DuckDB keeps the list of distinct ids in the sketch's place.
"""
from __future__ import annotations

import datetime as dt
import math

import duckdb
import pytest
from conftest import load_bench
from pyspark.sql import functions as F

from features import synthetic
from features.tables import (ITEM_DAILY, ITEM_FEATURES, ITEM_STATE, USER_DAILY, USER_FEATURES, USER_SEQUENCES,
                             USER_STATE, Table)
from jobs import lake as lake_io

START = dt.date(2024, 1, 1)
DAYS = 100                                    # longer than the 90-day window: its edge is exercised
LAST = START + dt.timedelta(days=DAYS - 1)
HLL_TOLERANCE = 3 * 1.04 / math.sqrt(2 ** 12)
# Spark's HLL sketch columns, and the feature columns estimated from them
SKETCHES = {"items_sketch", "users_sketch"}
ESTIMATED = ("distinct_items_", "distinct_users_")

# tiny inputs (see conftest); slow: a Spark full build with its Delta writes, over 2 min on this machine
pytestmark = [pytest.mark.usefixtures("interpreted_sql"), pytest.mark.slow]


@pytest.fixture(scope="module")
def bench():
    return load_bench("features")


@pytest.fixture(scope="module")
def built(spark, config, bench, tmp_path_factory) -> tuple[str, str]:
    """(lake, DuckDB's output folder) after both builds as of LAST on the same bronze files. 300 items
    for 60 users: some catalogue items have no event (item_features' catalogue-only rows); about 70
    events a user: the 50-event sequences are cut."""
    work = tmp_path_factory.mktemp("bench-features")
    synthetic.generate(work / "generated", users=60, items=300, days=DAYS, start_date=START, seed=11, events=4000)
    lake = str(work / "lake")
    bench.load_bronze(spark, lake, work / "generated", LAST)
    bench.timed_build(spark, lake, config, LAST, full_refresh=True)
    out = str(work / "duckdb")
    bench.timed_duckdb(lake, str(work / "generated" / "items" / "*.parquet"), LAST, out, 2, config.features)
    return lake, out


def _utc(value):
    """Times as naive UTC: Spark collects naive local times, DuckDB aware ones."""
    return value.astimezone(dt.timezone.utc).replace(tzinfo=None) if isinstance(value, dt.datetime) else value


def _normal(value):
    return [_utc(v) for v in value] if isinstance(value, list) else _utc(value)


def _key(table: Table) -> tuple[str, ...]:
    return (*table.keys, table.partition_by)


def spark_rows(spark, lake: str, table: Table) -> tuple[list[str], dict[tuple, dict]]:
    """The table's columns and its rows of LAST (every row for a daily table) by key; sketches as
    their estimates."""
    df = lake_io.read(spark, lake, table)
    if table.partition_by == "as_of_date":
        df = df.where(F.col("as_of_date") == F.lit(LAST))
    columns = df.columns
    df = df.select(*[F.hll_sketch_estimate(c).alias(c) if c in SKETCHES else F.col(c) for c in columns])
    return columns, {tuple(r[k] for k in _key(table)): {c: _normal(r[c]) for c in columns}
                     for r in (row.asDict() for row in df.collect())}


def duckdb_rows(out: str, table: Table) -> tuple[list[str], dict[tuple, dict]]:
    """The table as DuckDB wrote it (partition column from the folder names); id lists as their lengths."""
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    result = con.execute(f"SELECT * FROM read_parquet('{out}/{table.name}/*/*.parquet', hive_partitioning = true)")
    names = [d[0] for d in result.description]
    rows = [dict(zip(names, r)) for r in result.fetchall()]
    con.close()
    return names, {tuple(r[k] for k in _key(table)): {c: len(v) if c in SKETCHES else _normal(v) for c, v in r.items()}
                   for r in rows}


def _differences(table: Table, spark_side: dict[tuple, dict], duck_side: dict[tuple, dict]) -> list[tuple]:
    """(key, column, Spark's value, DuckDB's) for every value that differs beyond what the column allows."""
    out = []
    for key, expected in spark_side.items():
        got = duck_side[key]
        for c in table.columns:
            s, d = expected[c], got[c]
            if c in SKETCHES or c.startswith(ESTIMATED):
                ok = abs(s - d) <= HLL_TOLERANCE * d
            else:
                ok = s == d and type(s) is type(d) or (s is None and d is None)
            if not ok:
                out.append((key, c, s, d))
    return out


@pytest.mark.parametrize("table", [USER_DAILY, ITEM_DAILY, USER_STATE, ITEM_STATE, USER_FEATURES, ITEM_FEATURES,
                                   USER_SEQUENCES], ids=lambda t: t.name.split("/")[-1])
def test_duckdb_writes_the_tables_of_the_full_build(spark, built, table):
    lake, out = built
    spark_columns, spark_side = spark_rows(spark, lake, table)
    duck_columns, duck_side = duckdb_rows(out, table)
    assert sorted(spark_columns) == sorted(table.columns)
    assert sorted(duck_columns) == sorted(table.columns)
    assert len(spark_side) > 0
    assert set(duck_side) == set(spark_side)
    differences = _differences(table, spark_side, duck_side)
    assert differences == [], f"{len(differences)} values differ, first ones: {differences[:10]}"


def test_the_history_exercises_the_edge_cases(spark, config, built):
    """The comparison above covers catalogue-only items, cut sequences, users without a purchase and
    users whose 90-day window holds fewer items than their history."""
    lake, _ = built
    items = lake_io.read(spark, lake, ITEM_FEATURES).where(F.col("as_of_date") == F.lit(LAST))
    users = lake_io.read(spark, lake, USER_FEATURES).where(F.col("as_of_date") == F.lit(LAST))
    sequences = lake_io.read(spark, lake, USER_SEQUENCES).where(F.col("as_of_date") == F.lit(LAST))
    assert items.where(F.col("first_seen_at").isNull()).count() > 0
    n = config.features.sequence_length
    assert sequences.where(F.col("sequence_length") == n).count() > 0
    assert sequences.where(F.col("sequence_length") < n).count() > 0
    assert users.where(F.col("distinct_items_90d") < F.col("distinct_items_all")).count() > 0
    assert users.where(F.col("last_purchase_at").isNull()).count() > 0
