"""``features/user_features``: one row per user with any event before as_of_date + 1 day, per as_of_date.

Built from the daily aggregate layer (features/daily.py) rather than from raw events, so that the nightly
run touches one new day of events plus compact per-user-day rows. Windows (``1d, 7d, 30d, 90d, all``)
are the days ``[as_of - n + 1, as_of]``; ``all`` is every day up to as_of. Distinct counts are HLL
estimates (exact in practice below a few hundred distinct values; ~1.6% relative standard error above,
at the default lg_config_k=12).

Called by jobs/build_features.py. Pure: DataFrames and the as_of date in, DataFrame out.
"""
from __future__ import annotations

import datetime as dt

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F

from features.tables import EVENT_COUNT_NAMES, FEATURE_WINDOWS, USER_FEATURES

COUNT_STEMS = [*EVENT_COUNT_NAMES.values(), "events"]


def in_window(as_of: dt.date, days: int | None) -> Column:
    """The daily row's event_date falls in the window of ``days`` ending at as_of (None: all history)."""
    if days is None:
        return F.lit(True)
    return F.col("event_date") >= F.lit(as_of - dt.timedelta(days=days - 1))


def windowed_sum(column: str, as_of: dt.date, days: int | None) -> Column:
    return F.coalesce(F.sum(F.when(in_window(as_of, days), F.col(column))), F.lit(0))


def windowed_distinct(sketch: str, as_of: dt.date, days: int | None) -> Column:
    """Estimated distinct values over the window: union of the days' HLL sketches (nulls are skipped)."""
    union = F.hll_union_agg(F.when(in_window(as_of, days), F.col(sketch)))
    return F.coalesce(F.hll_sketch_estimate(union), F.lit(0))


def days_between(as_of: dt.date, ts: str) -> Column:
    return F.datediff(F.lit(as_of), F.to_date(F.col(ts)))


def user_features(user_daily: DataFrame, as_of: dt.date, cold_start_min_events: int) -> DataFrame:
    """Features as of ``as_of`` from ``features/user_daily`` rows (any dates; later ones are ignored)."""
    daily = user_daily.where(F.col("event_date") <= F.lit(as_of))
    aggregates = [
        windowed_sum(f"count_{stem}", as_of, days).alias(f"count_{stem}_{w}")
        for w, days in FEATURE_WINDOWS.items() for stem in COUNT_STEMS
    ]
    aggregates += [windowed_sum("spend", as_of, days).cast("double").alias(f"spend_{w}")
                   for w, days in FEATURE_WINDOWS.items()]
    aggregates += [windowed_distinct("items_sketch", as_of, days).alias(f"distinct_items_{w}")
                   for w, days in FEATURE_WINDOWS.items()]
    aggregates += [windowed_distinct("categories_sketch", as_of, days).alias(f"distinct_categories_{w}")
                   for w, days in FEATURE_WINDOWS.items()]
    per_user = daily.groupBy("user_id").agg(
        *aggregates,
        F.max("last_event_at").alias("last_event_at"),
        F.max("last_purchase_at").alias("last_purchase_at"),
        F.sum("purchase_price_sum").alias("_price_sum"),
        F.sum("purchase_price_count").alias("_price_count"),
    )
    return (per_user.join(top_category(daily), "user_id", "left")
            .withColumn("as_of_date", F.lit(as_of))
            .withColumn("days_since_last_event", days_between(as_of, "last_event_at"))
            .withColumn("days_since_last_purchase", days_between(as_of, "last_purchase_at"))
            .withColumn("avg_purchase_price",
                        F.when(F.col("_price_count") > 0,
                               (F.col("_price_sum") / F.col("_price_count")).cast("double")))
            .withColumn("is_cold_start", F.col("count_events_all") < F.lit(cold_start_min_events))
            .select(*[F.col(c) for c in USER_FEATURES.columns]))


def top_category(daily: DataFrame) -> DataFrame:
    """Per user over all history: the category with most events (ties: the smallest name) and its share of
    the user's events whose item has a known category."""
    per_category = (daily.select("user_id", F.explode("category_counts").alias("category", "n"))
                    .groupBy("user_id", "category").agg(F.sum("n").alias("n")))
    by_count = Window.partitionBy("user_id").orderBy(F.desc("n"), F.asc("category"))
    return (per_category
            .withColumn("_rank", F.row_number().over(by_count))
            .withColumn("_total", F.sum("n").over(Window.partitionBy("user_id")))
            .where(F.col("_rank") == 1)
            .select("user_id", F.col("category").alias("top_category"),
                    (F.col("n") / F.col("_total")).alias("top_category_share")))
