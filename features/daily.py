"""The daily aggregate layer under the feature tables: ``features/user_daily`` (one row per user per
event_date) and ``features/item_daily`` (one row per item per event_date).

Each row summarises one day of ``bronze/events`` with values that merge exactly across days (counts,
decimal sums, min/max) or approximately but losslessly-mergeable (DataSketches HLL sketches from Spark's
``hll_sketch_agg``, unioned later with ``hll_union_agg``). A full build sums every day's rows into the
rolling state (features/state.py); a nightly one adds the new day's rows and subtracts the rows of the
days leaving each window, so it rebuilds only the day's partition (and the partitions of dates that
received late events). Distinct counts over the windows union the sketches of the last 90 days' rows.

Called by jobs/build_features.py. Pure: DataFrames in, DataFrame out.
"""
from __future__ import annotations

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from features.tables import EVENT_COUNT_NAMES, ITEM_DAILY, MONEY, USER_DAILY


def _is(event_type: str) -> Column:
    return F.col("event_type") == F.lit(event_type)


def _type_counts() -> list[Column]:
    counts = [F.count_if(_is(t)).alias(f"count_{name}") for t, name in EVENT_COUNT_NAMES.items()]
    return counts + [F.count(F.lit(1)).alias("count_events")]


def _price() -> Column:
    # Decimal so that sums re-added over days in any order give exactly the same total.
    return F.col("price").cast("decimal(18,4)")


def _line_amount() -> Column:
    """price x quantity of one event line; a missing quantity counts as one unit. Returns carry their
    quantity negative in some sources (Online Retail), positive in others: the sign comes from the
    event type, not the quantity."""
    return _price() * F.abs(F.coalesce(F.col("quantity"), F.lit(1))).cast("decimal(18,0)")


def user_daily(events: DataFrame, items: DataFrame, lg_config_k: int) -> DataFrame:
    """One row per (user_id, event_date) of ``events`` (bronze/events rows), with the items' current
    category from ``items`` (bronze/items) for the category counts.

    One aggregation: the day's known categories are collected (a user's day is a few events) and
    counted per category from that list, instead of a second group-by per category joined back (the
    faster of the two: docs/features.md, "Benchmark")."""
    categorised = events.join(items.select("item_id", "category"), "item_id", "left")
    purchase, ret = _is("purchase"), _is("return")
    return (categorised.groupBy("user_id", "event_date").agg(
        *_type_counts(),
        # a sum of price x quantity widens to decimal(38, 4); a day's spend fits the table's MONEY
        F.coalesce(F.sum(F.when(purchase, _line_amount()).when(ret, -_line_amount())), F.lit(0))
        .cast(MONEY).alias("spend"),
        F.coalesce(F.sum(F.when(purchase, _price())), F.lit(0)).alias("purchase_price_sum"),
        F.count_if(purchase & F.col("price").isNotNull()).alias("purchase_price_count"),
        F.max("event_ts").alias("last_event_at"),
        F.max(F.when(purchase, F.col("event_ts"))).alias("last_purchase_at"),
        F.hll_sketch_agg("item_id", lg_config_k).alias("items_sketch"),
        F.max("ingested_at").alias("ingested_through"),
        F.collect_list("category").alias("_categories"),      # nulls (unknown category) left out
    ).withColumn("category_counts", _occurrences("_categories"))
     .select(*[F.col(c) for c in USER_DAILY.columns]))


def _occurrences(values: str) -> Column:
    """A map of each distinct string of the array column ``values`` to how often it occurs, keys in
    ascending order (an empty map for an empty array)."""
    listed = F.col(values)
    return F.map_from_entries(F.transform(F.array_sort(F.array_distinct(listed)), lambda v: F.struct(
        v.alias("key"), F.size(F.filter(listed, lambda x: x == v)).cast("long").alias("value")))
    ).cast("map<string,bigint>")


def item_daily(events: DataFrame, lg_config_k: int) -> DataFrame:
    """One row per (item_id, event_date) of ``events`` (bronze/events rows)."""
    return (events.groupBy("item_id", "event_date").agg(
        *_type_counts(),
        F.hll_sketch_agg("user_id", lg_config_k).alias("users_sketch"),
        F.coalesce(F.sum(_price()), F.lit(0)).alias("price_sum"),
        F.count("price").alias("price_count"),
        F.min("price").alias("price_min"),
        F.max("price").alias("price_max"),
        F.min("event_ts").alias("first_event_at"),
        F.max("ingested_at").alias("ingested_through"),
    ).select(*[F.col(c) for c in ITEM_DAILY.columns]))

