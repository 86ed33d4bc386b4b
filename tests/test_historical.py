"""features/historical.py on hand-written rows with hand-computed expected values: the exact as-of join
(latest partition on or before the row's date, never a later one; nulls before every partition and for a
key missing from the chosen one), the user × item features (baskets, the cut-off instant, two nights of
the same pair), their declared schema, and leakage (planted future events and feature partitions change
no output row).
"""
from __future__ import annotations

import datetime as dt

import pytest
from pyspark.sql import types as T
from pyspark.testing import assertDataFrameEqual

from features.historical import as_of_join, get_historical_features, user_item_features
from features.tables import EVENTS, ITEMS, USER_ITEM_FEATURES

D = dt.date(2024, 1, 10)          # cut-off 2024-01-11 00:00
E = dt.date(2024, 1, 20)          # a later night for the same pairs; cut-off 2024-01-21 00:00
S, L, I, DB, DT = T.StringType(), T.LongType(), T.IntegerType(), T.DoubleType(), T.DateType()

pytestmark = pytest.mark.usefixtures("interpreted_sql")    # tiny inputs: see conftest


def ts(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text)


def day(text: str) -> dt.date:
    return dt.date.fromisoformat(text)


def schema(*fields: tuple[str, T.DataType]) -> T.StructType:
    return T.StructType([T.StructField(name, dtype, True) for name, dtype in fields])


def event(user, item, event_type, at, quantity=1, price=None):
    at = ts(at)
    return {"event_id": f"{user}|{item}|{event_type}|{at.isoformat()}|{quantity}", "user_id": user, "item_id": item,
            "event_type": event_type, "event_ts": at, "event_date": at.date(), "quantity": quantity,
            "price": price, "session_id": None, "source": "test", "ingested_at": ts("2024-02-01 01:00:00"),
            "run_id": "test"}


def item(item_id, category):
    return {"item_id": item_id, "title": None, "description": None, "category": category, "brand": None,
            "price": None, "updated_at": ts("2023-01-01 00:00:00")}


# ---- as-of join: a small user feature table with three partitions ----

USER_FEATURE_SCHEMA = schema(("user_id", S), ("as_of_date", DT), ("count_purchases_7d", L), ("top_category", S))
USER_FEATURE_ROWS = [
    ("u1", day("2024-01-05"), 1, "A"),
    ("u2", day("2024-01-05"), 7, "B"),     # u2 only here: absent from 01-09, the partition chosen for D
    ("u1", day("2024-01-09"), 2, "A"),
    ("u1", day("2024-01-12"), 3, "C"),     # after D, different values: must never reach a D row
]
AS_OF_ROWS_SCHEMA = schema(("user_id", S), ("as_of_date", DT), ("label", I))
AS_OF_ROWS = [
    ("u1", D, 1),                  # latest partition <= D is 01-09, not the later 01-12
    ("u1", D, 0),                  # a duplicate candidate row stays two rows
    ("u1", day("2024-01-09"), 1),  # as_of equal to a partition date: that partition
    ("u1", day("2024-01-01"), 0),  # before every partition: nulls
    ("u2", D, 1),                  # key missing from the chosen partition (only in an older one): nulls
    ("u3", D, 0),                  # key in no partition: nulls
    ("u1", E, 1),                  # after every partition: the last one
]
EXPECTED_AS_OF = [
    ("u1", D, 1, day("2024-01-09"), 2, "A"),
    ("u1", D, 0, day("2024-01-09"), 2, "A"),
    ("u1", day("2024-01-09"), 1, day("2024-01-09"), 2, "A"),
    ("u1", day("2024-01-01"), 0, None, None, None),
    ("u2", D, 1, None, None, None),
    ("u3", D, 0, None, None, None),
    ("u1", E, 1, day("2024-01-12"), 3, "C"),
]


def test_as_of_join_takes_the_latest_partition_on_or_before_each_row(spark):
    rows = spark.createDataFrame(AS_OF_ROWS, AS_OF_ROWS_SCHEMA)
    features = spark.createDataFrame(USER_FEATURE_ROWS, USER_FEATURE_SCHEMA)
    expected = spark.createDataFrame(EXPECTED_AS_OF, schema(
        ("user_id", S), ("as_of_date", DT), ("label", I),
        ("user_features_as_of", DT), ("user_count_purchases_7d", L), ("user_top_category", S)))
    assertDataFrameEqual(as_of_join(rows, features, "user_id", prefix="user_"), expected)


def test_as_of_join_selects_columns_and_refuses_to_overwrite(spark):
    rows = spark.createDataFrame(AS_OF_ROWS, AS_OF_ROWS_SCHEMA)
    features = spark.createDataFrame(USER_FEATURE_ROWS, USER_FEATURE_SCHEMA)
    joined = as_of_join(rows, features, "user_id", prefix="user_", columns=["top_category"])
    assert joined.columns == ["user_id", "as_of_date", "label", "user_features_as_of", "user_top_category"]
    with pytest.raises(ValueError, match="user_top_category"):
        as_of_join(joined, features, "user_id", prefix="user_", columns=["top_category"])


# ---- user × item features: u1's history, worked out by hand ----

ITEM_ROWS = [item("i1", "A"), item("i2", "A"), item("i3", "B"),
             item("i4", None)]                                   # no category; i5 is not in the catalogue
EVENTS_ROWS = [
    event("u1", "i1", "purchase", "2024-01-02 10:00:00", price=10.0),   # basket 1 (with i2)
    event("u1", "i2", "purchase", "2024-01-02 10:00:00", price=4.0),    # basket 1: another item
    event("u1", "i4", "purchase", "2024-01-03 12:00:00", price=2.0),    # item without a category
    event("u1", "i1", "purchase", "2024-01-05 09:00:00", quantity=1, price=12.0),  # basket 2: two lines
    event("u1", "i1", "purchase", "2024-01-05 09:00:00", quantity=2, price=12.0),  # of one item, one basket
    event("u1", "i1", "view", "2024-01-06 08:00:00"),
    event("u1", "i3", "purchase", "2024-01-10 23:59:59", price=6.0),    # on D itself: counted for D
    event("u1", "i1", "purchase", "2024-01-11 00:00:00", price=100.0),  # exactly D's cut-off: E only
    event("u2", "i1", "purchase", "2024-01-04 11:00:00", price=8.0),    # i1's one-basket buyer
    event("u2", "i3", "view", "2024-01-08 15:00:00"),                   # viewed, never bought
    event("u4", "i2", "purchase", "2024-01-07 10:00:00", price=0.0),    # a free item: u4's mean price is 0
    event("u4", "i3", "purchase", "2024-01-09 10:00:00", price=None),   # a purchase without a price
]
ROWS_SCHEMA = schema(("user_id", S), ("item_id", S), ("as_of_date", DT), ("label", I))
ROWS = [
    ("u1", "i1", D, 1), ("u1", "i1", E, 0), ("u1", "i3", D, 0), ("u1", "i4", D, 0),
    ("u2", "i3", D, 1), ("u3", "i1", D, 0), ("u1", "i5", D, 0), ("u4", "i2", D, 1),
]
UI_COLUMNS = [c for c in USER_ITEM_FEATURES.columns if c not in ("user_id", "item_id", "as_of_date")]
# As of D, u1 bought 6 purchase events: prices 10+4+2+12+12+6 = 46, mean 46/6; with a known category 5
# (A: i1 x3 + i2, B: i3). i1's purchases: 10, 12, 12 (u1) and 8 (u2), mean 10.5; buyers u1 (2 baskets), u2 (1).
# As of E the cut-off event adds u1's third i1 basket: u1 mean 146/7, A 5 of 6, i1 mean 142/5.
EXPECTED_UI = [
    # user, item, as_of, label, baskets, events, days since purchase, category share, price ratio, rebuy, buyers
    ("u1", "i1", D, 1, 2, 4, 5, 4 / 5, 10.5 / (46 / 6), 1 / 2, 2),
    ("u1", "i1", E, 0, 3, 5, 9, 5 / 6, (142 / 5) / (146 / 7), 1 / 2, 2),
    ("u1", "i3", D, 0, 1, 1, 0, 1 / 5, 6 / (46 / 6), 0.0, 2),      # bought on D: 0 days
    ("u1", "i4", D, 0, 1, 1, 7, None, 2 / (46 / 6), 0.0, 1),       # item without category: share null
    ("u2", "i3", D, 1, 0, 1, None, 0.0, 6 / 8, 0.0, 2),            # u2's one categorised purchase is in A
    ("u3", "i1", D, 0, 0, 0, None, None, None, 1 / 2, 2),          # user without events
    ("u1", "i5", D, 0, 0, 0, None, None, None, None, 0),           # item without events or catalogue row
    ("u4", "i2", D, 1, 1, 1, 3, 1 / 2, None, 0.0, 2),              # user's mean price 0: ratio null
]


def ui_inputs(spark, events=EVENTS_ROWS):
    return (spark.createDataFrame(ROWS, ROWS_SCHEMA), spark.createDataFrame(events, EVENTS.schema),
            spark.createDataFrame(ITEM_ROWS, ITEMS.schema))


@pytest.fixture(scope="module")
def ui_rows(spark):
    """user_item_features on the hand rows, computed once for the checks below."""
    return user_item_features(*ui_inputs(spark)).localCheckpoint()


def test_user_item_features_match_hand_computed_rows(spark, ui_rows):
    expected = spark.createDataFrame(EXPECTED_UI, T.StructType(
        ROWS_SCHEMA.fields + [USER_ITEM_FEATURES.schema[c] for c in UI_COLUMNS]))
    assertDataFrameEqual(ui_rows, expected, rtol=1e-9)


def test_the_cut_off_instant_belongs_to_the_next_night(ui_rows):
    """u1's i1 purchase at 2024-01-11 00:00 is D's cut-off: not in D's row, in E's; the same pair on the
    two nights gets each night's own history."""
    pair = {r["as_of_date"]: r for r in ui_rows.where("user_id = 'u1' AND item_id = 'i1'").collect()}
    assert (pair[D]["ui_baskets_with_item"], pair[D]["ui_events_with_item"], pair[D]["ui_days_since_last_purchase"]) \
        == (2, 4, 5)
    assert (pair[E]["ui_baskets_with_item"], pair[E]["ui_events_with_item"], pair[E]["ui_days_since_last_purchase"]) \
        == (3, 5, 9)


def test_user_item_features_produce_the_declared_schema(spark):
    """Names, types and nullability of the user × item columns as declared (the counts never null)."""
    out = user_item_features(*ui_inputs(spark))
    assert [out.schema[c] for c in UI_COLUMNS] == [USER_ITEM_FEATURES.schema[c] for c in UI_COLUMNS]
    assert out.columns == ROWS_SCHEMA.names + UI_COLUMNS


# ---- get_historical_features and leakage ----

ITEM_FEATURE_SCHEMA = schema(("item_id", S), ("as_of_date", DT), ("conversion_rate_30d", DB))
ITEM_FEATURE_ROWS = [("i1", day("2024-01-09"), 0.1), ("i1", day("2024-01-19"), 0.2), ("i3", day("2024-01-09"), 0.3)]
FUTURE_EVENTS = [  # at or after E's cut-off, the latest of any row: no row may see them
    event("u1", "i1", "purchase", "2024-01-21 00:00:00", price=50.0),   # exactly E's cut-off
    event("u2", "i1", "purchase", "2024-01-22 10:00:00", price=9.0),    # would make u2 a rebuyer of i1
    event("u3", "i1", "view", "2024-02-01 10:00:00"),
    event("u1", "i5", "purchase", "2024-03-01 10:00:00", price=1.0),
]
FUTURE_USER_FEATURES = [("u1", day("2024-01-21"), 9, "Z"), ("u3", day("2024-02-01"), 9, "Z")]
FUTURE_ITEM_FEATURES = [("i1", day("2024-01-21"), 0.9), ("i5", day("2024-02-01"), 0.9)]


def historical(spark, events, user_features, item_features):
    rows, events, items = ui_inputs(spark, events)
    return get_historical_features(
        rows, user_features=spark.createDataFrame(user_features, USER_FEATURE_SCHEMA),
        item_features=spark.createDataFrame(item_features, ITEM_FEATURE_SCHEMA), events=events, items=items)


def test_historical_features_join_all_three_groups(spark):
    out = historical(spark, EVENTS_ROWS, USER_FEATURE_ROWS, ITEM_FEATURE_ROWS)
    assert out.columns == ROWS_SCHEMA.names + UI_COLUMNS + [
        "user_features_as_of", "user_count_purchases_7d", "user_top_category",
        "item_features_as_of", "item_conversion_rate_30d"]
    picked = ["user_id", "item_id", "as_of_date", "ui_baskets_with_item", "user_features_as_of",
              "user_count_purchases_7d", "item_features_as_of", "item_conversion_rate_30d"]
    expected = [("u1", "i1", D, 2, day("2024-01-09"), 2, day("2024-01-09"), 0.1),
                ("u1", "i1", E, 3, day("2024-01-12"), 3, day("2024-01-19"), 0.2),
                ("u1", "i3", D, 1, day("2024-01-09"), 2, day("2024-01-09"), 0.3),
                ("u1", "i4", D, 1, day("2024-01-09"), 2, None, None),
                ("u2", "i3", D, 0, None, None, day("2024-01-09"), 0.3),
                ("u3", "i1", D, 0, None, None, day("2024-01-09"), 0.1),
                ("u1", "i5", D, 0, day("2024-01-09"), 2, None, None),
                ("u4", "i2", D, 1, None, None, None, None)]
    assertDataFrameEqual(out.select(*picked), spark.createDataFrame(expected, out.select(*picked).schema))


def test_future_events_and_partitions_do_not_leak(spark):
    """Events at or after every row's cut-off and feature partitions after every row's as_of change no
    output row."""
    without = historical(spark, EVENTS_ROWS, USER_FEATURE_ROWS, ITEM_FEATURE_ROWS)
    planted = historical(spark, EVENTS_ROWS + FUTURE_EVENTS, USER_FEATURE_ROWS + FUTURE_USER_FEATURES,
                         ITEM_FEATURE_ROWS + FUTURE_ITEM_FEATURES)
    assertDataFrameEqual(planted, without, rtol=1e-12)
