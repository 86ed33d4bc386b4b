"""Feature tables on hand-written bronze rows with hand-computed expected values: user features, item
features, sequences (order and ties), point in time (planted future events), job idempotency and
usage errors. The incremental-vs-full equality on a generated history is in test_features_incremental.py.
"""
from __future__ import annotations

import datetime as dt
import json

import pytest
from delta.tables import DeltaTable
from pyspark.sql import functions as F
from pyspark.testing import assertDataFrameEqual

from features import daily, state
from features.item_features import item_features
from features.sequences import sequences_full, sequences_incremental
from features.tables import (EVENTS, FEATURE_BUILDS, ITEM_DAILY, ITEM_FEATURES, ITEM_STATE, ITEMS, USER_DAILY,
                             USER_FEATURES, USER_SEQUENCES, USER_STATE)
from features.user_features import user_features
from jobs import build_features, lake as lake_io, runtime

D = dt.date(2024, 1, 31)          # the as_of_date of every test here
WINDOWS = ("1d", "7d", "30d", "90d", "all")
INGESTED = dt.datetime(2024, 2, 1, 1, 0)


def ts(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text)


def event(user, item, event_type, at, quantity=None, price=None, ingested_at=INGESTED):
    at = ts(at)
    return {"event_id": f"{user}|{item}|{event_type}|{at.isoformat()}", "user_id": user, "item_id": item,
            "event_type": event_type, "event_ts": at, "event_date": at.date(), "quantity": quantity,
            "price": price, "session_id": None, "source": "test", "ingested_at": ingested_at, "run_id": "test"}


def item(item_id, category, price=None, updated_at="2023-01-01 00:00:00"):
    return {"item_id": item_id, "title": f"title {item_id}", "description": f"about {item_id}",
            "category": category, "brand": "acme", "price": price, "updated_at": ts(updated_at)}


# Each row is there for a named case (comments); D = 2024-01-31, windows start 01-31 / 01-25 / 01-02 / 2023-11-03.
EVENTS_ROWS = [
    event("u1", "i1", "view", "2024-01-31 10:00:00"),                             # 1d
    event("u1", "i1", "purchase", "2024-01-31 10:05:00", quantity=2, price=10.0),  # 1d, spend +20
    event("u1", "i3", "purchase", "2024-01-28 09:00:00", quantity=1, price=5.5),   # 7d, spend +5.5
    event("u1", "i1", "return", "2024-01-10 12:00:00", quantity=-1, price=10.0),   # 30d, negative qty, spend -10
    event("u1", "i2", "click", "2023-11-15 08:00:00"),                             # 90d only
    event("u1", "i4", "view", "2023-06-01 00:00:00"),                              # all only; i4 not in catalogue
    event("u2", "i3", "view", "2024-01-20 23:59:59"),                              # one-event cold-start user
    event("u4", "i1", "view", "2023-12-01 00:00:00"),                              # category tie A vs B
    event("u4", "i3", "view", "2023-12-01 00:00:00"),
]
FUTURE_ROWS = [  # after D: must not appear in D's features or sequences
    event("u1", "i3", "purchase", "2024-02-01 00:00:00", quantity=1, price=99.0),  # exactly D + 1 day
    event("u3", "i1", "view", "2024-02-02 08:00:00"),                              # user with only future events
    event("u1", "i5", "view", "2024-03-01 00:00:00"),
]
ITEM_ROWS = [
    item("i1", "A", 10.0), item("i2", "A", 3.0), item("i3", "B", 5.5),
    item("i5", "C", 1.0),                                     # catalogue only, listed before D
    item("i6", "C", 2.0, updated_at="2024-02-05 00:00:00"),   # listed after D: not an item as of D
]


def write_bronze(spark, lake, events, items=ITEM_ROWS):
    lake_io.append(spark, lake, EVENTS, spark.createDataFrame(events, EVENTS.schema))
    if items:
        lake_io.append(spark, lake, ITEMS, spark.createDataFrame(items, ITEMS.schema))


def run_job(spark, lake, config, run_date=D, **kwargs):
    common = runtime.job_args("features", lake, config, run_date=run_date, **kwargs.pop("overrides", {}))
    args = build_features.BuildFeaturesArgs(**{f: getattr(common, f) for f in
                                               ("job", "lake", "config", "run_id", "summary_json")},
                                            run_date=run_date, **kwargs)
    return build_features.run(spark, args)


def partition(spark, lake, table, as_of=D):
    return lake_io.read(spark, lake, table).where(F.col("as_of_date") == F.lit(as_of))


def windows(stem, values):
    return {f"{stem}_{w}": v for w, v in zip(WINDOWS, values)}


def counts(views=(0,) * 5, clicks=(0,) * 5, add_to_carts=(0,) * 5, purchases=(0,) * 5, returns=(0,) * 5):
    rows = {}
    for stem, values in (("views", views), ("clicks", clicks), ("add_to_carts", add_to_carts),
                         ("purchases", purchases), ("returns", returns)):
        rows.update(windows(f"count_{stem}", values))
    rows.update(windows("count_events", [sum(v[i] for v in (views, clicks, add_to_carts, purchases, returns))
                                         for i in range(5)]))
    return rows


EXPECTED_USERS = [
    {"user_id": "u1", "as_of_date": D,
     **counts(views=(1, 1, 1, 1, 2), clicks=(0, 0, 0, 1, 1), purchases=(1, 2, 2, 2, 2), returns=(0, 0, 1, 1, 1)),
     "last_event_at": ts("2024-01-31 10:05:00"), "last_purchase_at": ts("2024-01-31 10:05:00"),
     "days_since_last_event": 0, "days_since_last_purchase": 0,
     **windows("spend", (20.0, 25.5, 15.5, 15.5, 15.5)),
     **windows("distinct_items", (1, 2, 2, 3, 4)),            # i4 only in "all"
     **windows("distinct_categories", (1, 2, 2, 2, 2)),       # i4 has no category
     "avg_purchase_price": 7.75,                               # (10 + 5.5) / 2: unit prices, not amounts
     "top_category": "A", "top_category_share": 0.8,           # A: 4 events, B: 1; i4 (unknown) left out
     "is_cold_start": False},
    {"user_id": "u2", "as_of_date": D,
     **counts(views=(0, 0, 1, 1, 1)),
     "last_event_at": ts("2024-01-20 23:59:59"), "last_purchase_at": None,
     "days_since_last_event": 11, "days_since_last_purchase": None,
     **windows("spend", (0.0,) * 5), **windows("distinct_items", (0, 0, 1, 1, 1)),
     **windows("distinct_categories", (0, 0, 1, 1, 1)),
     "avg_purchase_price": None, "top_category": "B", "top_category_share": 1.0, "is_cold_start": True},
    {"user_id": "u4", "as_of_date": D,
     **counts(views=(0, 0, 0, 2, 2)),
     "last_event_at": ts("2023-12-01 00:00:00"), "last_purchase_at": None,
     "days_since_last_event": 61, "days_since_last_purchase": None,
     **windows("spend", (0.0,) * 5), **windows("distinct_items", (0, 0, 0, 2, 2)),
     **windows("distinct_categories", (0, 0, 0, 2, 2)),
     "avg_purchase_price": None, "top_category": "A", "top_category_share": 0.5,  # tie: smallest name
     "is_cold_start": True},
]


def catalogue(item_id):
    row = next((r for r in ITEM_ROWS if r["item_id"] == item_id), None)
    if row is None:
        return {"catalog_price": None, "title": None, "description": None, "category": None, "brand": None}
    return {"catalog_price": row["price"], "title": row["title"], "description": row["description"],
            "category": row["category"], "brand": row["brand"]}


EXPECTED_ITEMS = [
    {"item_id": "i1", "as_of_date": D,
     **counts(views=(1, 1, 1, 2, 2), purchases=(1, 1, 1, 1, 1), returns=(0, 0, 1, 1, 1)),
     **windows("distinct_users", (1, 1, 1, 2, 2)),
     "conversion_rate_30d": 2 / 51,                 # (1 purchase + 1) / (1 view + 1 + 49)
     "return_rate_all": 1.0, "popularity_rank_30d": 1,   # ties i3 on purchases, more events in 30d
     "trend_7d_vs_30d": (2 / 7) / (3 / 30),
     "price_min": 10.0, "price_max": 10.0, "price_mean": 10.0,
     "first_seen_at": ts("2023-12-01 00:00:00"), "days_since_first_seen": 61, **catalogue("i1")},
    {"item_id": "i2", "as_of_date": D,
     **counts(clicks=(0, 0, 0, 1, 1)), **windows("distinct_users", (0, 0, 0, 1, 1)),
     "conversion_rate_30d": 1 / 50,                 # the prior mean when there is no evidence
     "return_rate_all": None, "popularity_rank_30d": 3, "trend_7d_vs_30d": None,
     "price_min": None, "price_max": None, "price_mean": None,
     "first_seen_at": ts("2023-11-15 08:00:00"), "days_since_first_seen": 77, **catalogue("i2")},
    {"item_id": "i3", "as_of_date": D,
     **counts(views=(0, 0, 1, 2, 2), purchases=(0, 1, 1, 1, 1)), **windows("distinct_users", (0, 1, 2, 3, 3)),
     "conversion_rate_30d": 2 / 51, "return_rate_all": 0.0, "popularity_rank_30d": 2,
     "trend_7d_vs_30d": (1 / 7) / (2 / 30),
     "price_min": 5.5, "price_max": 5.5, "price_mean": 5.5,
     "first_seen_at": ts("2023-12-01 00:00:00"), "days_since_first_seen": 61, **catalogue("i3")},
    {"item_id": "i4", "as_of_date": D,                # events but no catalogue row
     **counts(views=(0, 0, 0, 0, 1)), **windows("distinct_users", (0, 0, 0, 0, 1)),
     "conversion_rate_30d": 1 / 50, "return_rate_all": None, "popularity_rank_30d": 4, "trend_7d_vs_30d": None,
     "price_min": None, "price_max": None, "price_mean": None,
     "first_seen_at": ts("2023-06-01 00:00:00"), "days_since_first_seen": 244, **catalogue("i4")},
    {"item_id": "i5", "as_of_date": D,                # catalogue only: zero counts, no first-seen
     **counts(), **windows("distinct_users", (0,) * 5),
     "conversion_rate_30d": 1 / 50, "return_rate_all": None, "popularity_rank_30d": 5, "trend_7d_vs_30d": None,
     "price_min": None, "price_max": None, "price_mean": None,
     "first_seen_at": None, "days_since_first_seen": None, **catalogue("i5")},
]

EXPECTED_SEQUENCES_N3 = [
    {"user_id": "u1", "as_of_date": D, "item_ids": ["i3", "i1", "i1"], "event_types": ["purchase", "view", "purchase"],
     "event_ts": [ts("2024-01-28 09:00:00"), ts("2024-01-31 10:00:00"), ts("2024-01-31 10:05:00")],
     "sequence_length": 3},
    {"user_id": "u2", "as_of_date": D, "item_ids": ["i3"], "event_types": ["view"],
     "event_ts": [ts("2024-01-20 23:59:59")], "sequence_length": 1},
    {"user_id": "u4", "as_of_date": D, "item_ids": ["i1", "i3"], "event_types": ["view", "view"],  # tie: item_id
     "event_ts": [ts("2023-12-01 00:00:00")] * 2, "sequence_length": 2},
]


pytestmark = pytest.mark.usefixtures("interpreted_sql")    # tiny inputs: see conftest


@pytest.fixture(scope="module")
def built(spark, config, tmp_path_factory):
    """One full build as of D over the hand rows plus the planted future rows, shared by the checks below."""
    lake = str(tmp_path_factory.mktemp("features") / "lake")
    write_bronze(spark, lake, EVENTS_ROWS + FUTURE_ROWS)
    summary = run_job(spark, lake, config, overrides={"features.sequence_length": 3})
    return lake, summary


def test_user_features_match_hand_computed_rows(spark, built):
    lake, _ = built
    expected = spark.createDataFrame(EXPECTED_USERS, USER_FEATURES.schema)
    assertDataFrameEqual(partition(spark, lake, USER_FEATURES), expected, rtol=1e-9)


def test_item_features_match_hand_computed_rows(spark, built):
    lake, _ = built
    expected = spark.createDataFrame(EXPECTED_ITEMS, ITEM_FEATURES.schema)
    assertDataFrameEqual(partition(spark, lake, ITEM_FEATURES), expected, rtol=1e-9)


def test_sequences_keep_last_n_oldest_first_with_ties_by_item(spark, built):
    lake, _ = built
    expected = spark.createDataFrame(EXPECTED_SEQUENCES_N3, USER_SEQUENCES.schema)
    assertDataFrameEqual(partition(spark, lake, USER_SEQUENCES), expected)


def test_feature_functions_produce_the_declared_schemas(spark):
    """Each feature function's own output, before ``lake.conform`` casts it, has the declared columns in
    order with the declared types; nested nullability is part of the type (arrays without null
    elements, as training reads them). Top-level nullability is compared only for user_sequences, the
    contract with training: elsewhere Spark marks outer-join and aggregate columns nullable whatever the
    data, and Delta enforces the declared NOT NULL on write."""
    events = spark.createDataFrame(EVENTS_ROWS, EVENTS.schema)
    items = spark.createDataFrame(ITEM_ROWS, ITEMS.schema)
    user_daily, item_daily = daily.user_daily(events, items, 12), daily.item_daily(events, 12)
    user_state = state.user_state(spark.createDataFrame([], USER_STATE.schema), user_daily, None, D, None)
    item_state = state.item_state(spark.createDataFrame([], ITEM_STATE.schema), item_daily, None, D, None)
    sequences = sequences_full(events, D, 3)
    outputs = [(USER_DAILY, user_daily), (ITEM_DAILY, item_daily), (USER_STATE, user_state), (ITEM_STATE, item_state),
               (USER_FEATURES, user_features(user_state, user_daily, D, 5)),
               (ITEM_FEATURES, item_features(item_state, item_daily, items, D, 1.0, 49.0)),
               (USER_SEQUENCES, sequences), (USER_SEQUENCES, sequences_incremental(sequences, events, D, 3))]
    for table, df in outputs:
        assert [(f.name, f.dataType) for f in df.schema] == [(f.name, f.dataType) for f in table.schema], table.name
    assert sequences.schema == USER_SEQUENCES.schema and outputs[-1][1].schema == USER_SEQUENCES.schema


def test_first_run_is_full_and_summary_counts_rows(spark, built):
    lake, summary = built
    assert summary["mode"] == "full"
    assert summary["rows_user_features"] == 3 and summary["rows_item_features"] == 5
    assert summary["rows_user_sequences"] == 3
    record = json.loads(open(summary["lineage"]).read())
    assert record["inputs"][EVENTS.name] == lake_io.version(spark, lake, EVENTS)
    assert record["outputs"][USER_FEATURES.name] == lake_io.version(spark, lake, USER_FEATURES)
    assert record["summary"]["rows_user_features"] == 3


def test_basket_ties_are_cut_deterministically_in_full_and_incremental_builds(spark):
    """An Online Retail basket: five lines on one timestamp; the last-N cut keeps the largest item ids,
    and extending an earlier sequence with the basket gives the same rows as building from scratch."""
    basket = [event("u9", f"p{i}", "purchase", "2024-01-15 12:00:00", quantity=1, price=1.0) for i in (3, 1, 5, 2, 4)]
    earlier = [event("u9", "z", "view", "2024-01-14 11:00:00"), event("u9", "y", "view", "2024-01-14 11:00:00")]
    events = spark.createDataFrame(earlier + basket, EVENTS.schema)
    full = sequences_full(events, D, 3)
    expected = spark.createDataFrame([{
        "user_id": "u9", "as_of_date": D, "item_ids": ["p3", "p4", "p5"], "event_types": ["purchase"] * 3,
        "event_ts": [ts("2024-01-15 12:00:00")] * 3, "sequence_length": 3}], USER_SEQUENCES.schema)
    assertDataFrameEqual(full, expected)
    previous = sequences_full(spark.createDataFrame(earlier, EVENTS.schema), D - dt.timedelta(days=17), 3)
    assert previous.first()["item_ids"] == ["y", "z"]
    incremental = sequences_incremental(previous, spark.createDataFrame(basket, EVENTS.schema), D, 3)
    assertDataFrameEqual(incremental, expected)


def test_carried_sequences_are_cut_when_the_length_shrinks(spark):
    """Users without new events keep their earlier row, cut to the new N when it is smaller."""
    earlier = [event("u1", f"a{i}", "view", f"2024-01-1{i} 10:00:00") for i in range(4)]
    previous = sequences_full(spark.createDataFrame(earlier, EVENTS.schema), D - dt.timedelta(days=1), 4)
    new = spark.createDataFrame([event("u2", "b", "click", "2024-01-31 09:00:00")], EVENTS.schema)
    rows = {r["user_id"]: r for r in sequences_incremental(previous, new, D, 2).collect()}
    assert rows["u1"]["item_ids"] == ["a2", "a3"] and rows["u1"]["sequence_length"] == 2
    assert rows["u1"]["as_of_date"] == D and rows["u2"]["item_ids"] == ["b"]


def test_a_base_without_rolling_state_makes_a_full_build(spark, tmp_path, config):
    """A previous build with no state partition (built before the state tables existed): the next run
    is a full one and its rows are the hand-computed ones."""
    lake = str(tmp_path / "lake")
    write_bronze(spark, lake, EVENTS_ROWS)
    run_job(spark, lake, config, run_date=D - dt.timedelta(days=1))
    DeltaTable.forPath(spark, lake_io.path_of(lake, ITEM_STATE)).delete(F.col("as_of_date") == F.lit(D - dt.timedelta(days=1)))
    summary = run_job(spark, lake, config)
    assert summary["mode"] == "full" and summary["base_as_of_date"] is None
    assertDataFrameEqual(partition(spark, lake, USER_FEATURES),
                         spark.createDataFrame(EXPECTED_USERS, USER_FEATURES.schema), rtol=1e-9)


def test_a_state_written_before_its_newest_column_makes_a_full_build(spark, tmp_path, config):
    """A previous build whose user_state predates ``category_last_dates`` (the table rewritten without it):
    the next run adds the column to the table, builds in full (that state cannot be rolled forward) and
    its rows are the hand-computed ones; the run after it is incremental again."""
    lake = str(tmp_path / "lake")
    write_bronze(spark, lake, EVENTS_ROWS)
    run_job(spark, lake, config, run_date=D - dt.timedelta(days=1))
    path = lake_io.path_of(lake, USER_STATE)
    old = lake_io.read(spark, lake, USER_STATE).drop(*USER_STATE.added_later).localCheckpoint()
    old.write.format("delta").mode("overwrite").option("overwriteSchema", "true").partitionBy("as_of_date").save(path)
    assert "category_last_dates" not in lake_io.read(spark, lake, USER_STATE).columns
    summary = run_job(spark, lake, config)
    assert summary["mode"] == "full" and summary["base_as_of_date"] is None
    rows = lake_io.read(spark, lake, USER_STATE)
    assert rows.columns == USER_STATE.columns
    assert rows.where(F.col("as_of_date") == F.lit(D - dt.timedelta(days=1)))\
        .where(F.col("category_last_dates").isNull()).count() > 0      # the old partition reads it as null
    assertDataFrameEqual(partition(spark, lake, USER_FEATURES),
                         spark.createDataFrame(EXPECTED_USERS, USER_FEATURES.schema), rtol=1e-9)
    summary = run_job(spark, lake, config, run_date=D + dt.timedelta(days=1))
    assert summary["mode"] == "incremental" and summary["base_as_of_date"] == D.isoformat()


def test_future_events_do_not_leak(spark, built, tmp_path, config):
    """The built lake (hand rows + events after D) and a lake without the future events give the same
    D partitions, row for row."""
    with_future, _ = built
    without = str(tmp_path / "without")
    write_bronze(spark, without, EVENTS_ROWS)
    run_job(spark, without, config, overrides={"features.sequence_length": 3})
    for table in (USER_FEATURES, ITEM_FEATURES, USER_SEQUENCES):
        assertDataFrameEqual(partition(spark, with_future, table), partition(spark, without, table))
    assert lake_io.read(spark, with_future, EVENTS).where(F.col("event_date") > F.lit(D)).count() == len(FUTURE_ROWS)
    users = {r[0] for r in partition(spark, with_future, USER_FEATURES).select("user_id").collect()}
    assert "u3" not in users


def test_rerun_changes_nothing_and_late_events_are_picked_up(spark, lake, config):
    """Run D-1 then D; rerun D (same rows); then a late event for D-20 arrives and D's rerun counts it."""
    write_bronze(spark, lake, EVENTS_ROWS)
    run_job(spark, lake, config, run_date=D - dt.timedelta(days=1))
    first = run_job(spark, lake, config)
    assert first["mode"] == "incremental" and first["base_as_of_date"] == "2024-01-30"
    snapshot = {t.name: partition(spark, lake, t).localCheckpoint() for t in (USER_FEATURES, ITEM_FEATURES, USER_SEQUENCES)}
    again = run_job(spark, lake, config)
    assert again["late_dates"] == [] and again["rows_user_features"] == first["rows_user_features"]
    for t in (USER_FEATURES, ITEM_FEATURES, USER_SEQUENCES):
        assertDataFrameEqual(partition(spark, lake, t), snapshot[t.name])

    late = event("u2", "i2", "purchase", "2024-01-11 10:00:00", quantity=3, price=3.0,
                 ingested_at=dt.datetime(2024, 2, 2, 1, 0))
    lake_io.append(spark, lake, EVENTS, spark.createDataFrame([late], EVENTS.schema))
    after = run_job(spark, lake, config)
    assert after["late_dates"] == ["2024-01-11"]
    u2 = partition(spark, lake, USER_FEATURES).where("user_id = 'u2'").first()
    assert (u2["count_purchases_30d"], u2["spend_30d"], u2["days_since_last_purchase"]) == (1, 9.0, 20)
    seq = partition(spark, lake, USER_SEQUENCES).where("user_id = 'u2'").first()
    assert seq["item_ids"] == ["i2", "i3"]
    daily = lake_io.read(spark, lake, USER_DAILY).where("user_id = 'u2' AND event_date = '2024-01-11'").first()
    assert daily["count_purchases"] == 1
    builds = lake_io.read(spark, lake, FEATURE_BUILDS).orderBy("built_at").collect()
    assert [b["mode"] for b in builds] == ["full", "incremental", "incremental", "incremental"]
    assert builds[-1]["ingested_through"] == dt.datetime(2024, 2, 2, 1, 0)


def test_usage_errors_exit_2_with_one_line(spark, tmp_path, capsys):
    lake = str(tmp_path / "empty")
    assert build_features.main(["--lake", lake, "--from", "2024-01-05", "--to", "2024-01-01"]) == 2
    assert "is after --to" in capsys.readouterr().err
    assert build_features.main(["--lake", lake, "--run-date", "2024-13-01"]) == 2
    assert build_features.main(["--lake", lake, "--run-date", "2024-01-01"]) == 2
    assert "run `warmstart ingest` first" in capsys.readouterr().err
