"""``features/user_sequences``: one row per user with any event before as_of_date + 1 day, per
as_of_date: the user's last N interactions (all event types), oldest first, as parallel arrays
``item_ids``, ``event_types``, ``event_ts``. The training input of the model (training/ reads it).

Order: event_ts, then item_id, then event_type. Online Retail's baskets put many items on one
timestamp; ordering the ties by item_id makes the sequence (and which items the last-N cut keeps)
deterministic and the same whether it is built in full or incrementally.

Two builds give the same rows:
- :func:`sequences_full` from all events up to as_of;
- :func:`sequences_incremental` from an earlier as_of's sequences plus the events that were not in
  them (the days after it, and late events for days up to it). Correct because every event that was
  cut from the earlier sequence is older than all N it kept, so it cannot be among the last N of the
  larger set either.

Called by jobs/build_features.py. Pure: DataFrames and the as_of date in, DataFrame out.
"""
from __future__ import annotations

import datetime as dt

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F

from features.contract import cutoff
from features.tables import USER_SEQUENCES

_STEP = "struct<event_ts:timestamp,item_id:string,event_type:string>"


def _step() -> Column:
    # Field order is the sort order: array_sort compares structs field by field.
    return F.struct("event_ts", "item_id", "event_type")


def _last_n(steps: Column, n: int) -> Column:
    return F.when(F.size(steps) > n, F.slice(steps, F.size(steps) - F.lit(n - 1), F.lit(n))).otherwise(steps)


def _to_table(per_user: DataFrame, as_of: dt.date, n: int) -> DataFrame:
    """``per_user`` has user_id and ``steps`` (an unsorted array of step structs)."""
    steps = _last_n(F.array_sort("steps"), n)

    def field(name: str) -> Column:
        # array_compact drops nothing here (no field is null) but types the array as holding no nulls,
        # as the table declares; arrays_zip in the incremental path makes every field nullable.
        return F.array_compact(F.transform("steps", lambda s: s[name]))

    return (per_user.withColumn("steps", steps)
            .select("user_id", F.lit(as_of).alias("as_of_date"),
                    field("item_id").alias("item_ids"), field("event_type").alias("event_types"),
                    field("event_ts").alias("event_ts"), F.size("steps").alias("sequence_length"))
            .select(*[F.col(c) for c in USER_SEQUENCES.columns]))


def point_in_time(events: DataFrame, as_of: dt.date) -> DataFrame:
    """Events visible as of ``as_of`` (features.contract.cutoff: before as_of_date + 1 day, UTC)."""
    return events.where(F.col("event_ts") < F.lit(cutoff(as_of)))


def sequences_full(events: DataFrame, as_of: dt.date, n: int) -> DataFrame:
    """Last ``n`` interactions per user from ``events`` (bronze/events rows, any dates)."""
    newest_first = Window.partitionBy("user_id").orderBy(F.desc("event_ts"), F.desc("item_id"), F.desc("event_type"))
    last = (point_in_time(events, as_of)
            .withColumn("_rank", F.row_number().over(newest_first))
            .where(F.col("_rank") <= n))
    return _to_table(last.groupBy("user_id").agg(F.collect_list(_step()).alias("steps")), as_of, n)


def sequences_incremental(previous: DataFrame, new_events: DataFrame, as_of: dt.date, n: int) -> DataFrame:
    """``previous``: user_sequences rows of one earlier as_of_date. ``new_events``: bronze/events rows that
    those sequences did not include (later days, late arrivals); events after as_of are ignored. Only the
    users with new events are re-sorted; the others' rows are carried over (cut to ``n`` if it shrank)."""
    added = (point_in_time(new_events, as_of).groupBy("user_id")
             .agg(F.collect_list(_step()).cast(f"array<{_STEP}>").alias("new")))
    # The users with new events are a small share of all: broadcast their ids rather than shuffling
    # every previous sequence to join them.
    touched = F.broadcast(added.select("user_id"))
    earlier = previous.join(touched, "user_id", "left_semi").select(
        "user_id",
        F.transform(F.arrays_zip("event_ts", "item_ids", "event_types"),
                    lambda z: F.struct(z["event_ts"].alias("event_ts"), z["item_ids"].alias("item_id"),
                                       z["event_types"].alias("event_type"))).cast(f"array<{_STEP}>").alias("old"))
    empty = F.array().cast(f"array<{_STEP}>")
    merged = (earlier.join(added, "user_id", "right")
              .select("user_id", F.concat(F.coalesce("old", empty), F.coalesce("new", empty)).alias("steps")))
    carried = (previous.join(touched, "user_id", "left_anti")
               .select("user_id", F.lit(as_of).alias("as_of_date"),
                       *[_last_n(F.col(c), n).alias(c) for c in ("item_ids", "event_types", "event_ts")],
                       F.least("sequence_length", F.lit(n)).alias("sequence_length")))
    return _to_table(merged, as_of, n).unionByName(carried.select(*[F.col(c) for c in USER_SEQUENCES.columns]))
