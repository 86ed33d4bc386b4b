"""The rolling state under the feature tables: ``features/user_state`` and ``features/item_state``, one
row per user / item per as_of_date with every windowed sum, the all-history aggregates, and what the
distinct counts need. user_features and item_features are a per-row projection of it.

D's state comes from an earlier build B's state (B < D) without re-reading the history. For a window of
n days (1d, 7d, 30d, 90d):

    state_D = state_B + (events B had not seen, dated after B - n) - (daily rows of the days (B - n, D - n])

"Events B had not seen" are those dated in (B, D] and the late ones (dated <= B, ingested after B's
watermark); they come in as per-(key, event_date) aggregates made by features/daily.py. The daily rows
of the leaving days are read after this run has rebuilt its daily partitions, so they include any late
events of those days: adding the unseen events of a leaving day and subtracting the whole day removes
exactly what B had counted. The all-history window has no leaving days. A full build is the same
formula with an empty state and every event unseen, so the two share one code path.

Values that only merge (last times, first event, price min/max, all-history category counts, each
category's last event date and the HLL sketches) take the merge of B's value and the new events': ingest
only ever inserts events, so nothing B counted goes away.

Distinct counts cannot be subtracted. Distinct categories, a small domain, are exact: over all history
the keys of the state's category counts, over a window of n days the categories whose last event date
(``category_last_dates``) is in the window. Distinct items (users, for items) come from HLL sketches:
over all history the state's sketch; over the 1, 7, 30 and 90-day windows :func:`windowed_distinct`
unions the daily sketches of the last 90 days, each day once, in disjoint bands that are then unioned
cumulatively. That part of a nightly run follows the longest window (90 days of daily rows), not the
length of the history.

Called by jobs/build_features.py. Pure: DataFrames and dates in, DataFrame out.
"""
from __future__ import annotations

import datetime as dt

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from features.tables import EVENT_COUNT_NAMES, FEATURE_WINDOWS, ITEM_STATE, USER_STATE, Table

COUNTS = [f"count_{name}" for name in [*EVENT_COUNT_NAMES.values(), "events"]]
FINITE_WINDOWS = {w: days for w, days in FEATURE_WINDOWS.items() if days is not None}


def leaving_dates(base: dt.date, as_of: dt.date) -> list[dt.date]:
    """The days that leave some finite window between B's and D's: (B - n, D - n] for each window n."""
    return sorted({base + dt.timedelta(days=i - n) for n in FINITE_WINDOWS.values()
                   for i in range(1, (as_of - base).days + 1)})


def window_changes(unseen: DataFrame, leaving: DataFrame | None, key: str, stems: list[str],
                   as_of: dt.date, base: dt.date | None) -> DataFrame:
    """Per key, the signed change of ``<stem>_<window>`` for every stem and window. ``unseen``: per
    (key, event_date) aggregates of the events the base had not seen; ``leaving``: daily rows of the
    leaving days (None without a base)."""
    signed = unseen.select(key, "event_date", *stems, F.lit(1).alias("_sign"))
    if leaving is not None:
        signed = signed.unionByName(leaving.select(key, "event_date", *stems, F.lit(-1).alias("_sign")))
    date, plus, minus = F.col("event_date"), F.col("_sign") == 1, F.col("_sign") == -1
    sums = []
    for w, days in FEATURE_WINDOWS.items():
        if days is None:
            counted = plus
        elif base is None:
            counted = plus & (date > F.lit(as_of - dt.timedelta(days=days)))
        else:
            counted = ((plus & (date > F.lit(base - dt.timedelta(days=days))))
                       | (minus & (date > F.lit(base - dt.timedelta(days=days)))
                          & (date <= F.lit(as_of - dt.timedelta(days=days)))))
        sums += [F.sum(F.when(counted, F.col("_sign") * F.col(stem))).alias(f"{stem}_{w}") for stem in stems]
    return signed.groupBy(key).agg(*sums)


def windowed_distinct(daily: DataFrame, key: str, sketches: dict[str, str], as_of: dt.date) -> DataFrame:
    """Per ``key`` with daily rows in the longest finite window: ``<stem>_<window>`` for every finite
    window. ``sketches`` maps a sketch column of ``daily`` (features/user_daily or item_daily rows) to
    its output stem: the estimated distinct count of the union of the days' sketches."""
    windows = sorted(FINITE_WINDOWS.items(), key=lambda w: w[1])
    date = F.col("event_date")
    band = F.lit(len(windows) - 1)
    for i, (_, days) in reversed(list(enumerate(windows[:-1]))):
        band = F.when(date > F.lit(as_of - dt.timedelta(days=days)), F.lit(i)).otherwise(band)
    recent = (daily.where((date > F.lit(as_of - dt.timedelta(days=windows[-1][1]))) & (date <= F.lit(as_of)))
              .withColumn("_band", band))
    in_band = [F.col("_band") == i for i in range(len(windows))]
    per_band = recent.groupBy(key).agg(
        *[F.hll_union_agg(F.when(in_band[i], F.col(sketch))).alias(f"_{sketch}_{i}")
          for sketch in sketches for i in range(len(windows))])
    out = []
    for sketch, stem in sketches.items():
        union = None
        for i, (w, _) in enumerate(windows):
            part = F.col(f"_{sketch}_{i}")
            union = part if union is None else F.when(union.isNull(), part).when(part.isNull(), union) \
                .otherwise(F.hll_union(union, part))
            out.append(F.coalesce(F.hll_sketch_estimate(union), F.lit(0)).alias(f"{stem}_{w}"))
    return per_band.select(key, *out)


def _empty(table: Table, column: str) -> Column:
    return F.create_map().cast(table.schema[column].dataType)


def _merge(previous: DataFrame, change: DataFrame, table: Table, key: str, as_of: dt.date,
           rules: dict[str, str]) -> DataFrame:
    """Full outer join of B's state with the per-key change; ``rules`` says how each non-sum column
    merges: sum, max, min, counts (maps summed per key), latest (maps, the later value per key) or sketch
    (HLL union)."""
    old = previous.select(key, *[F.col(c).alias(f"_old_{c}") for c in previous.columns if c not in (key, "as_of_date")])
    joined = old.join(change, key, "full_outer")

    def merged(c: str) -> Column:
        a, b = F.col(f"_old_{c}"), F.col(c)
        rule = rules.get(c, "sum")
        # A decimal sum widens to decimal(38, 4) and a merged map types its values not null: both are
        # cast back to the declared type.
        declared = table.schema[c].dataType
        if rule == "sum":
            return (F.coalesce(a, F.lit(0)) + F.coalesce(b, F.lit(0))).cast(declared)
        if rule == "max":
            return F.greatest(a, b)
        if rule == "min":
            return F.least(a, b)
        if rule == "counts":
            return F.map_zip_with(F.coalesce(a, _empty(table, c)), F.coalesce(b, _empty(table, c)),
                                  lambda _, x, y: F.coalesce(x, F.lit(0)) + F.coalesce(y, F.lit(0))).cast(declared)
        if rule == "latest":
            return F.map_zip_with(F.coalesce(a, _empty(table, c)), F.coalesce(b, _empty(table, c)),
                                  lambda _, x, y: F.greatest(x, y)).cast(declared)
        if rule == "sketch":
            return F.when(a.isNull(), b).when(b.isNull(), a).otherwise(F.hll_union(a, b))
        raise ValueError(f"unknown merge rule {rule!r} for {c}")

    columns = [c for c in table.columns if c not in (key, "as_of_date")]
    return joined.select(key, F.lit(as_of).alias("as_of_date"), *[merged(c).alias(c) for c in columns])


def user_state(previous: DataFrame, unseen_daily: DataFrame, leaving_daily: DataFrame | None,
               as_of: dt.date, base: dt.date | None) -> DataFrame:
    """``features/user_state`` for as_of. ``previous``: B's state rows (empty for a full build);
    ``unseen_daily``: features/user_daily rows made from only the events B had not seen (every day up to
    as_of for a full build); ``leaving_daily``: user_daily rows of :func:`leaving_dates` (None for a
    full build)."""
    sums = window_changes(unseen_daily, leaving_daily, "user_id", [*COUNTS, "spend"], as_of, base)
    totals = unseen_daily.groupBy("user_id").agg(
        F.sum("purchase_price_sum").alias("purchase_price_sum"),
        F.sum("purchase_price_count").alias("purchase_price_count"),
        F.max("last_event_at").alias("last_event_at"),
        F.max("last_purchase_at").alias("last_purchase_at"),
        F.hll_union_agg("items_sketch").alias("items_sketch"))
    categories = (unseen_daily.select("user_id", "event_date", F.explode("category_counts").alias("category", "n"))
                  .groupBy("user_id", "category").agg(F.sum("n").alias("n"), F.max("event_date").alias("last"))
                  .groupBy("user_id").agg(
                      F.map_from_entries(F.collect_list(F.struct("category", "n"))).alias("category_counts"),
                      F.map_from_entries(F.collect_list(F.struct("category", "last"))).alias("category_last_dates")))
    change = sums.join(totals, "user_id", "left").join(categories, "user_id", "left")
    return _merge(previous, change, USER_STATE, "user_id", as_of, {
        "last_event_at": "max", "last_purchase_at": "max", "category_counts": "counts",
        "category_last_dates": "latest", "items_sketch": "sketch"})


def item_state(previous: DataFrame, unseen_daily: DataFrame, leaving_daily: DataFrame | None,
               as_of: dt.date, base: dt.date | None) -> DataFrame:
    """``features/item_state`` for as_of, from features/item_daily rows; arguments as in :func:`user_state`."""
    sums = window_changes(unseen_daily, leaving_daily, "item_id", COUNTS, as_of, base)
    totals = unseen_daily.groupBy("item_id").agg(
        F.sum("price_sum").alias("price_sum"), F.sum("price_count").alias("price_count"),
        F.min("price_min").alias("price_min"), F.max("price_max").alias("price_max"),
        F.min("first_event_at").alias("first_event_at"),
        F.hll_union_agg("users_sketch").alias("users_sketch"))
    return _merge(previous, sums.join(totals, "item_id", "left"), ITEM_STATE, "item_id", as_of, {
        "price_min": "min", "price_max": "max", "first_event_at": "min", "users_sketch": "sketch"})
