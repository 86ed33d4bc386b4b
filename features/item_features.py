"""``features/item_features``: one row per item per as_of_date, for every item with an event before
as_of_date + 1 day and every catalogue item (``bronze/items``) whose row was updated before then.

A projection of ``features/item_state`` (features/state.py) plus the catalogue's current attributes.
Windows as in features/user_features.py; distinct users are HLL estimates.

- ``conversion_rate_30d`` = (purchases_30d + a) / (max(views_30d, purchases_30d) + a + b): the posterior
  mean of a Beta(a, b) prior (``features.conversion_prior_purchases`` = a, ``features.conversion_prior_views``
  = b; defaults 1 and 49, a 2% prior worth 50 views), so an item with 1 view and 1 purchase does not rank
  above one with 500 views and 100 purchases. A purchase counts as a view when views are fewer (a feed
  without view events, such as Online Retail, or views lost upstream), so the rate stays in [0, 1];
  on such a source it only grows with purchases and is comparable between items of one source only.
- ``popularity_rank_30d``: 1 = most purchases in 30 days; ties by events in 30 days, then item_id.
- ``trend_7d_vs_30d``: daily event rate over 7 days / over 30 days (1 = steady, > 1 = rising).

Called by jobs/build_features.py. Pure: DataFrames and the as_of date in, DataFrame out.
"""
from __future__ import annotations

import datetime as dt

from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F

from features.contract import cutoff
from features.state import windowed_distinct
from features.tables import ITEM_FEATURES
from features.user_features import days_between


def item_features(state: DataFrame, daily: DataFrame, items: DataFrame, as_of: dt.date,
                  prior_purchases: float, prior_views: float) -> DataFrame:
    """Features as of ``as_of`` from the ``features/item_state`` rows of as_of, the ``features/item_daily``
    rows (only the longest finite window's days are read) and ``bronze/items``."""
    windowed = windowed_distinct(daily, "item_id", {"users_sketch": "distinct_users"}, as_of)
    per_item = (state.where(F.col("as_of_date") == F.lit(as_of)).drop("as_of_date")
                .join(windowed, "item_id", "left")
                .withColumn("distinct_users_all", F.coalesce(F.hll_sketch_estimate("users_sketch"), F.lit(0)))
                .withColumnsRenamed({"price_sum": "_price_sum", "price_count": "_price_count",
                                     "first_event_at": "first_seen_at"}))
    catalogue = items.select("item_id", "title", "description", "category", "brand",
                             F.col("price").alias("catalog_price"), "updated_at")
    listed_by_then = catalogue.where(F.col("updated_at") < F.lit(cutoff(as_of))).select("item_id")
    item_ids = per_item.select("item_id").unionByName(listed_by_then).distinct()

    counts = [c for c in ITEM_FEATURES.columns if c.startswith(("count_", "distinct_users_"))]
    with_attrs = (item_ids.join(per_item, "item_id", "left")
                  .join(catalogue.drop("updated_at"), "item_id", "left")
                  .fillna(0, subset=counts))
    a, b = float(prior_purchases), float(prior_views)
    popularity = Window.orderBy(F.desc("count_purchases_30d"), F.desc("count_events_30d"), F.asc("item_id"))
    return (with_attrs
            .withColumn("as_of_date", F.lit(as_of))
            .withColumn("conversion_rate_30d",
                        (F.col("count_purchases_30d") + F.lit(a))
                        / (F.greatest("count_views_30d", "count_purchases_30d") + F.lit(a + b)))
            .withColumn("return_rate_all", F.when(F.col("count_purchases_all") > 0,
                                                  F.col("count_returns_all") / F.col("count_purchases_all")))
            .withColumn("popularity_rank_30d", F.row_number().over(popularity))
            .withColumn("trend_7d_vs_30d", F.when(F.col("count_events_30d") > 0,
                                                  (F.col("count_events_7d") / 7.0) / (F.col("count_events_30d") / 30.0)))
            .withColumn("price_mean", F.when(F.col("_price_count") > 0,
                                             (F.col("_price_sum").cast("decimal(38,4)") / F.col("_price_count")).cast("double")))
            .withColumn("days_since_first_seen", days_between(as_of, "first_seen_at"))
            .select(*[F.col(c) for c in ITEM_FEATURES.columns]))
