"""``features/user_features``: one row per user with any event before as_of_date + 1 day, per as_of_date.

A projection of ``features/user_state`` (features/state.py), which the nightly run rolls forward from the
previous build by one day of events. Windows (``1d, 7d, 30d, 90d, all``) are the days
``[as_of - n + 1, as_of]``; ``all`` is every day up to as_of. Distinct items are HLL
estimates (exact in practice below a few hundred distinct values; ~1.6% relative standard error above,
at the default lg_config_k=12); distinct categories are exact (the categories whose last event date, kept
in the state, falls in the window).

Called by jobs/build_features.py. Pure: DataFrames and the as_of date in, DataFrame out.
"""
from __future__ import annotations

import datetime as dt

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from features.state import windowed_distinct
from features.tables import FEATURE_WINDOWS, USER_FEATURES


def days_between(as_of: dt.date, ts: str) -> Column:
    return F.datediff(F.lit(as_of), F.to_date(F.col(ts)))


def user_features(state: DataFrame, daily: DataFrame, as_of: dt.date, cold_start_min_events: int) -> DataFrame:
    """Features as of ``as_of`` from the ``features/user_state`` rows of as_of and the
    ``features/user_daily`` rows (only the longest finite window's days are read)."""
    windowed = windowed_distinct(daily, "user_id", {"items_sketch": "distinct_items"}, as_of)
    columns: dict[str, Column] = {f"spend_{w}": F.col(f"spend_{w}").cast("double") for w in FEATURE_WINDOWS}
    columns["distinct_items_all"] = F.coalesce(F.hll_sketch_estimate("items_sketch"), F.lit(0))
    for w, days in FEATURE_WINDOWS.items():
        if days is None:
            columns[f"distinct_categories_{w}"] = F.size("category_counts").cast("long")
        else:
            since = F.lit(as_of - dt.timedelta(days=days))
            columns[f"distinct_categories_{w}"] = F.size(
                F.map_filter("category_last_dates", lambda _, last: last > since)).cast("long")
    state = (state.where(F.col("as_of_date") == F.lit(as_of))
             .join(windowed, "user_id", "left").fillna(0, subset=windowed.columns[1:]))
    top = top_category("category_counts")
    return (state.withColumns(columns)
            .withColumns({
                "top_category": top["category"], "top_category_share": top["share"],
                "days_since_last_event": days_between(as_of, "last_event_at"),
                "days_since_last_purchase": days_between(as_of, "last_purchase_at"),
                "avg_purchase_price": F.when(F.col("purchase_price_count") > 0,
                                             (F.col("purchase_price_sum").cast("decimal(38,4)")
                                              / F.col("purchase_price_count")).cast("double")),
                "is_cold_start": F.col("count_events_all") < F.lit(cold_start_min_events)})
            .select(*[F.col(c) for c in USER_FEATURES.columns]))


def top_category(counts: str) -> Column:
    """From a map of events per category (all history): a struct of the category with most events (ties:
    the smallest name) and its share of all the events with a known category; null fields when empty."""
    ranked = F.array_sort(F.transform(F.map_entries(counts), lambda e: F.struct(
        (-e["value"]).alias("neg_n"), e["key"].alias("category"), e["value"].alias("n"))))
    total = F.aggregate(F.map_values(counts), F.lit(0).cast("long"), lambda acc, n: acc + n)
    first = F.when(F.size(counts) > 0, ranked[0])
    return F.struct(first["category"].alias("category"), (first["n"] / total).alias("share"))
