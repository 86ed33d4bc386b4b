"""``get_historical_features``: the ranker's (user, item) candidate rows, one output row per input row, with
each row's point-in-time features as of its own ``as_of_date``:

- the user's ``features/user_features`` row (columns ``user_*``) and the item's ``features/item_features``
  row (``item_*``) from the latest partition on or before the row's as_of_date (:func:`as_of_join`);
- user × item features (``ui_*``, ``item_rebuy_rate``, ``item_buyers``; declared as
  ``features/user_item_features``) computed on the fly from ``bronze/events`` before the row's cut-off
  (:func:`user_item_features`): a stored table would be users × items.

Called through the jobs by the learned ranker (training/ranker.py), for its training rows (labelled
candidates of past nights) and for night D's candidates alike, so both see the same features. Pure:
DataFrames in, DataFrame out; rows pass through unchanged in number and in their other columns.

Scale: rows are ~2M candidates over a few as_of dates. Nothing here joins the big sides on an inequality:
the as-of date mappings are worked out on the distinct dates (a handful of rows, broadcast), then every
big join is an equi-join on (key, date).
"""
from __future__ import annotations

from dataclasses import dataclass

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from features.tables import USER_ITEM_FEATURES

PURCHASE = "purchase"     # features.contract.EVENT_TYPES' buy event


def visible_before_cutoff(as_of_date: str = "as_of_date") -> Column:
    """``event_ts < features.contract.cutoff(as_of_date)`` as a Column: as_of_date + 1 day, 00:00. A date
    casts to midnight in the session time zone, which jobs.runtime.spark_session always sets to UTC."""
    return F.col("event_ts") < F.date_add(F.col(as_of_date), 1).cast("timestamp")


def as_of_join(rows: DataFrame, features: DataFrame, key: str, *, prefix: str,
               columns: list[str] | None = None) -> DataFrame:
    """``rows`` (``key``, ``as_of_date``, anything else) with the ``features`` row of its key from the
    partition with the greatest ``as_of_date`` <= the row's: columns ``prefix + column`` and
    ``{prefix}features_as_of``, that partition's date; nulls when no partition is that old.

    A key absent from the chosen partition gets nulls (``features_as_of`` too), never an older partition's
    row: a feature table's partition holds every key with any event before its cut-off, so a key missing
    there had no data as of then either (or was dropped on purpose), and an older row would be stale.
    ``columns`` defaults to every column but the key and ``as_of_date``."""
    columns = [c for c in features.columns if c not in (key, "as_of_date")] if columns is None else columns
    used = f"{prefix}features_as_of"
    added = [used, *(prefix + c for c in columns)]
    clash = set(added) & set(rows.columns)
    if clash:
        raise ValueError(f"as_of_join would overwrite columns of rows: {sorted(clash)}")
    row_dates = rows.select("as_of_date").distinct()
    partition_dates = features.select(F.col("as_of_date").alias("_partition")).distinct()
    chosen = (row_dates.join(F.broadcast(partition_dates), F.col("_partition") <= F.col("as_of_date"))
              .groupBy("as_of_date").agg(F.max("_partition").alias("_partition")))
    picked = (features.join(F.broadcast(chosen.select("_partition")),
                            features["as_of_date"] == F.col("_partition"), "left_semi")
              .select(F.col(key), F.col("as_of_date").alias("_partition"), F.col("as_of_date").alias(used),
                      *[F.col(c).alias(prefix + c) for c in columns]))
    return (rows.join(F.broadcast(chosen), "as_of_date", "left")
            .join(picked, [key, "_partition"], "left")
            .select(*rows.columns, *added))


def _visible_events(events: DataFrame, dates: DataFrame) -> DataFrame:
    """One row per (event, as_of_date of ``dates``) for the events visible as of that date. The join is on
    an inequality but with a broadcast handful of dates: each event is repeated once per later as_of."""
    narrow = events.select("user_id", "item_id", "event_type", "event_ts", "event_date", "price")
    return narrow.join(F.broadcast(dates), visible_before_cutoff())


def _pair_stats(visible: DataFrame) -> DataFrame:
    """One row per (as_of_date, user_id, item_id) with any visible event."""
    bought = F.col("event_type") == F.lit(PURCHASE)
    return visible.groupBy("as_of_date", "user_id", "item_id").agg(
        F.count(F.lit(1)).alias("_events"),
        F.count(F.when(bought, 1)).alias("_purchases"),
        F.count_distinct(F.when(bought, F.col("event_ts"))).alias("_baskets"),     # an invoice: one event_ts
        F.max(F.when(bought, F.col("event_date"))).alias("_last_purchase_date"),
        F.sum(F.when(bought, F.col("price"))).alias("_price_sum"),
        F.count(F.when(bought, F.col("price"))).alias("_price_count"))


def _user_categories(pairs: DataFrame, categories: DataFrame) -> DataFrame:
    """Per (as_of_date, user_id, _category; null: unknown): purchase events ``_n``, price sum and count."""
    return (pairs.join(categories, "item_id", "left")
            .groupBy("as_of_date", "user_id", "_category").agg(
                F.sum("_purchases").alias("_n"), F.sum("_price_sum").alias("_price_sum"),
                F.sum("_price_count").alias("_price_count")))


def _user_stats(per_category: DataFrame) -> DataFrame:
    """Per (as_of_date, user_id): purchase price sum and count, purchase events with a known category and
    a map of them per category (one row per user, so a candidate needs one join whatever its category)."""
    known = F.col("_category").isNotNull()
    return per_category.groupBy("as_of_date", "user_id").agg(
        F.sum("_price_sum").alias("_user_price_sum"), F.sum("_price_count").alias("_user_price_count"),
        F.sum(F.when(known, F.col("_n"))).alias("_user_categorised"),
        F.map_from_entries(F.collect_list(F.when(known, F.struct("_category", "_n")))).alias("_user_categories"))


def _item_stats(pairs: DataFrame) -> DataFrame:
    """Per (as_of_date, item_id): buyers, buyers in >= 2 baskets, purchase price sum and count."""
    return pairs.groupBy("as_of_date", "item_id").agg(
        F.count(F.when(F.col("_baskets") > 0, 1)).alias("_buyers"),
        F.count(F.when(F.col("_baskets") >= 2, 1)).alias("_rebuyers"),
        F.sum("_price_sum").alias("_item_price_sum"), F.sum("_price_count").alias("_item_price_count"))


def _ratio(numerator: Column, denominator: Column) -> Column:
    """numerator / denominator, null when either is null or the denominator is 0."""
    return F.when(denominator != 0, numerator / denominator)


@dataclass(frozen=True)
class UserItemParts:
    """The aggregates the user x item features are made of, per as_of_date (see :func:`user_item_parts`)."""
    pairs: DataFrame              # (as_of_date, user_id, item_id): _events, _purchases, _baskets, _last_purchase_date, ...
    categories: DataFrame         # (item_id): _category
    user_categories: DataFrame    # (as_of_date, user_id, _category): _n purchase events, price sum and count
    users: DataFrame              # (as_of_date, user_id): _user_price_sum/_count, _user_categorised, _user_categories
    items: DataFrame              # (as_of_date, item_id): _buyers, _rebuyers, _item_price_sum/_count


def user_item_parts(events: DataFrame, items: DataFrame, dates: DataFrame) -> UserItemParts:
    """The aggregates of ``bronze/events`` visible as of each ``as_of_date`` of ``dates`` (a handful of
    rows) that :func:`user_item_features` joins to candidate rows. Also collected whole, once per night, by
    the ranker's scoring (jobs/ranking.py ``NightLookup``), which assembles the same columns in arrays."""
    pairs = _pair_stats(_visible_events(events, dates))
    categories = items.select("item_id", F.col("category").alias("_category"))
    per_category = _user_categories(pairs, categories)
    return UserItemParts(pairs, categories, per_category, _user_stats(per_category), _item_stats(pairs))


def user_item_features(rows: DataFrame, events: DataFrame, items: DataFrame) -> DataFrame:
    """``rows`` (``user_id``, ``item_id``, ``as_of_date``, anything else) with the user × item columns of
    ``features/user_item_features`` from the ``bronze/events`` before each row's cut-off and the
    ``bronze/items`` categories; types as declared there."""
    keys = ["as_of_date", "user_id", "item_id"]
    clash = (set(USER_ITEM_FEATURES.columns) - set(keys)) & set(rows.columns)
    if clash:
        raise ValueError(f"user_item_features would overwrite columns of rows: {sorted(clash)}")
    parts = user_item_parts(events, items, rows.select("as_of_date").distinct())
    pairs, categories = parts.pairs, parts.categories
    user_mean = _ratio(F.col("_user_price_sum"), F.col("_user_price_count"))
    item_mean = _ratio(F.col("_item_price_sum"), F.col("_item_price_count"))
    values = {
        # distinct purchase baskets (invoices) of the user that hold the item
        "ui_baskets_with_item": F.coalesce(F.col("_baskets"), F.lit(0)),
        # the user's events of any type on the item
        "ui_events_with_item": F.coalesce(F.col("_events"), F.lit(0)),
        # whole days from the user's last purchase of the item to as_of_date (0: that day); null: never
        "ui_days_since_last_purchase": F.datediff(F.col("as_of_date"), F.col("_last_purchase_date")),
        # the user's purchase events in the item's category / those with a known category
        "ui_category_share": F.when(F.col("_category").isNotNull(), _ratio(
            F.coalesce(F.try_element_at("_user_categories", F.col("_category")), F.lit(0)),
            F.col("_user_categorised"))),
        # the item's mean unit purchase price (all buyers) / the user's mean unit purchase price
        "ui_price_vs_user_mean": _ratio(item_mean, user_mean),
        # the share of the item's buyers who bought it in >= 2 baskets; null: no buyers
        "item_rebuy_rate": _ratio(F.col("_rebuyers"), F.col("_buyers")),
        # distinct users who bought the item
        "item_buyers": F.coalesce(F.col("_buyers"), F.lit(0)),
    }
    types = {f.name: f.dataType for f in USER_ITEM_FEATURES.schema}
    return (rows.join(pairs, keys, "left")
            .join(categories, "item_id", "left")
            .join(parts.users, ["as_of_date", "user_id"], "left")
            .join(parts.items, ["as_of_date", "item_id"], "left")
            .select(*rows.columns, *[v.cast(types[name]).alias(name) for name, v in values.items()]))


def get_historical_features(rows: DataFrame, *, user_features: DataFrame, item_features: DataFrame,
                            events: DataFrame, items: DataFrame) -> DataFrame:
    """``rows`` (``user_id``, ``item_id``, ``as_of_date``, anything else, e.g. a label) with, as of each
    row's as_of_date, the user × item features, the user's features (``user_*``) and the item's
    (``item_*``). ``user_features`` / ``item_features`` are the feature tables (all partitions or those
    around the rows' dates), ``events`` bronze/events (events after the latest cut-off may be pruned
    away), ``items`` bronze/items."""
    with_pairs = user_item_features(rows, events, items)
    with_users = as_of_join(with_pairs, user_features, "user_id", prefix="user_")
    return as_of_join(with_users, item_features, "item_id", prefix="item_")
